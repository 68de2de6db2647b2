"""The server side's one exception root, and the breaker's refusal.

Every error the server side raises on purpose is a `CacheError`, so a caller
catches one root, as redis-py's users catch ``RedisError``. The ones that mean
"the cache is unavailable right now" are also the builtin `ConnectionError`, so
the migration guide's ``except ConnectionError:`` keeps catching them::

    Exception
     └── CacheError                    cachegate.core: the root
          ├── CircuitOpenError         breaker open, Redis not touched     [ConnectionError]
          ├── RedisUnavailableError    refused, reset, no reply, after retries
          │    │                       [ConnectionError, redis.ConnectionError]
          │    └── RedisTimeoutError   no reply in time  [TimeoutError, redis.TimeoutError]
          ├── PoolExhaustedError       no connection free in the wait time [ConnectionError]
          ├── CommandError             Redis answered with an error (WRONGTYPE, bad argument)
          │    └── RedisOutOfMemoryError   Redis is at maxmemory and refuses writes (OOM)
          ├── InvalidArgumentError     a request field breaks a rule       [ValueError]
          ├── TooBusyError             the server's own limit is reached
          └── ShuttingDownError        the server is stopping (SIGTERM)

    [...]: the other bases a class has, so that code written against them keeps
    catching it: the guide's ``except ConnectionError``, redis-py's own types.

Only the root and the breaker's refusal are defined here (and `ConfigError`, the
settings' error, which stops start-up and is no CacheError): the core knows neither
redis nor gRPC. The Redis ones (RedisUnavailableError to RedisOutOfMemoryError)
live beside the redis-py translation in `cachegate.pool._errors`, the last three
beside the status mapping in `cachegate.rpc._status`. A unit test walks this
tree (tests/unit/test_errors.py) and checks that every class in it is drawn here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cachegate.core._breaker_states import CircuitState

__all__ = ["CacheError", "CircuitOpenError", "ConfigError"]


class CacheError(Exception):
    """The root of every error the server side raises on purpose (see the tree above)."""


class CircuitOpenError(CacheError, ConnectionError):
    """
    Raised by `CircuitBreaker.acquire` when the breaker rejects a call.

    It subclasses the builtin `ConnectionError` so that legacy
    ``except ConnectionError:`` code keeps treating a rejected call like the
    outage that caused it.

    Attributes:
        name: The name of the breaker that rejected the call.
        state: `CircuitState.OPEN`, or `CircuitState.HALF_OPEN` when all
            probe slots are taken.
        retry_after: Seconds until the breaker lets a probe through. While
            OPEN that is the time left of the recovery timeout; while an
            operator forces it open, the configured ``recovery_timeout`` (we
            cannot know when the operator will release it, so we hint at the
            normal back-off). While HALF_OPEN it is ``0.0``: a slot frees up
            as soon as the in-flight probe finishes, which we cannot predict.
        forced: True when an operator forced the breaker open: no wait ends
            it, only the operator's reset, so ``retry_after`` is no promise
            and callers should not be told to retry after it.
    """

    name: str
    state: CircuitState
    retry_after: float
    forced: bool

    def __init__(
        self, name: str, state: CircuitState, retry_after: float, forced: bool = False
    ) -> None:
        # OSError interprets 2+ constructor args as (errno, strerror, ...), so
        # we pass exactly one: the message.
        if forced:
            message = (
                f"circuit breaker {name!r} was forced open by an operator; "
                "calls are refused until an operator resets it"
            )
        else:
            message = f"circuit breaker {name!r} is {state.value}; retry after {retry_after:.3f}s"
        super().__init__(message)
        self.name = name
        self.state = state
        self.retry_after = retry_after
        self.forced = forced

    def __reduce__(
        self,
    ) -> tuple[type[CircuitOpenError], tuple[str, CircuitState, float, bool]]:
        # The default reduction would call cls(message), which does not match
        # our signature; without this the error can't cross process borders.
        return type(self), (self.name, self.state, self.retry_after, self.forced)


class ConfigError(ValueError):
    """A setting has a value we cannot use. The message is one line naming the variable.

    Outside the CacheError tree: it stops start-up (or get_redis_pool()) and is never
    raised by a call.
    """
