"""Reads of many keys whose reply never passes a byte bound.

A batch of gets names keys, not sizes: 1,000 gets of a 1 MiB value are a 9 KB
request and a 1 GB reply. A bounded read asks Redis only for a reply it can send:

- when the batch's worst case (keys x the value limit) fits the bound, one MGET,
  as before (nothing to check);
- otherwise one Lua script (EVALSHA) that reads like MGET but stops taking values
  once the bound is reached: MGET in chunks whose worst case fits what is left, then
  STRLEN before each GET, so Redis itself never holds more than the bound either.
  A value that does not fit comes back as its size (`TooLarge`);
- where Lua is not there (the embedded fakeredis, a Redis user without EVALSHA,
  Cluster, whose keys span slots), the same walk from the client side
  (`read_chunked`): one round trip per chunk, slower, still bounded.

Like MGET, a key holding another type reads as a miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOUNDED_READ_LUA",
    "PartialRead",
    "TooLarge",
    "from_script_reply",
    "read_chunked",
    "worst_case_fits",
]

Key = str | bytes


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A value left out of a bounded read: adding it would have passed the bound."""

    size: int


class PartialRead(list[Any]):
    """The values of a bounded read some of which were left out (TooLarge entries).

    Its type says so, so a caller needs no look at every value to know.
    """


BOUNDED_READ_LUA = """
-- Read KEYS like MGET, but never build a reply of more than ARGV[1] value bytes.
-- ARGV[2] is the largest value a key can hold (CACHEGATE_MAX_VALUE_BYTES).
--
-- The reply is MGET's (a value, or nil for a miss or a key of another type) when
-- every value fits. When some do not, each of those is replaced by its size (an
-- integer) and one more element (0) ends the reply, so the caller tells the two
-- shapes apart by length alone.
--
-- While the room left holds the largest possible value, keys are read with MGET in
-- chunks whose worst case fits that room (Redis never copies more than the bound at
-- once); after that each key's STRLEN comes first and only a value that fits is read.
-- unpack() takes at most a few thousand values, so a chunk is capped below that.
local budget = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
local n = #KEYS
local out, total, dropped = {}, 0, false
local i = 1
while i <= n do
  local room = budget - total
  if room >= most then
    local last = math.min(n, i + math.min(math.floor(room / most), 4000) - 1)
    local values = redis.call('MGET', unpack(KEYS, i, last))
    for j = 1, last - i + 1 do
      local value = values[j]
      if value then
        local size = #value
        if size <= budget - total then
          total = total + size
          out[i + j - 1] = value
        else
          out[i + j - 1] = size
          dropped = true
        end
      else
        out[i + j - 1] = false
      end
    end
    i = last + 1
  else
    local size = redis.pcall('STRLEN', KEYS[i])
    if type(size) ~= 'number' then
      out[i] = false -- another type: a miss, as MGET says
    elseif size > room then
      out[i] = size
      dropped = true
    else
      local value = redis.call('GET', KEYS[i])
      if value then
        total = total + #value
      end
      out[i] = value
    end
    i = i + 1
  end
end
if dropped then
  out[n + 1] = 0
end
return out
"""

# unpack() in Redis's Lua takes a few thousand values at most (LUAI_MAXCSTACK).
MAX_CHUNK = 4000


def worst_case_fits(count: int, value_limit: int, max_bytes: int | None) -> bool:
    """Whether `count` values of at most `value_limit` bytes fit `max_bytes` (None: no bound)."""
    return max_bytes is None or count * value_limit <= max_bytes


def from_script_reply(reply: list[Any], count: int) -> list[Any]:
    """The script's reply as values, None for misses and TooLarge for values left out."""
    if len(reply) == count:  # everything fitted: MGET's shape, nothing to look at
        return reply
    return PartialRead(TooLarge(v) if isinstance(v, int) else v for v in reply[:count])


def read_chunked(
    keys: Sequence[Key],
    max_bytes: int,
    value_limit: int,
    mget: Callable[[Sequence[Key]], list[Any]],
    strlen: Callable[[Key], int | None],
    get: Callable[[Key], Any],
) -> list[Any]:
    """The script's walk, one command at a time (for backends without Lua).

    `strlen` gives None for a key of another type. Each MGET asks for at most what
    is left of the bound in the worst case; once less than one value's worth is left,
    each key's size is asked first and only a value that fits is read.
    """
    out: list[Any] = []
    dropped = False
    total = 0
    index = 0
    count = len(keys)
    while index < count:
        room = max_bytes - total
        if room >= value_limit:
            chunk = keys[index : index + min(room // max(value_limit, 1), MAX_CHUNK)]
            for value in mget(chunk):
                if value is None:
                    out.append(None)
                elif len(value) <= max_bytes - total:
                    total += len(value)
                    out.append(value)
                else:
                    out.append(TooLarge(len(value)))
                    dropped = True
            index += len(chunk)
            continue
        key = keys[index]
        index += 1
        size = strlen(key)
        if size is None:
            out.append(None)
        elif size > room:
            out.append(TooLarge(size))
            dropped = True
        else:
            value = get(key)
            if value is not None and len(value) > room:  # grew since STRLEN
                out.append(TooLarge(len(value)))
                dropped = True
                continue
            total += len(value) if value is not None else 0
            out.append(value)
    return PartialRead(out) if dropped else out
