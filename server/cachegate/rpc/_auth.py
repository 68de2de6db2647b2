"""Bearer-token authentication, roles and tenants.

The tokens file has one `TOKEN TENANT ROLE` line per caller (`#` starts a
comment). ROLE is `client` (the cache API) or `admin` (also AdminService).
Every key a caller touches lives in its tenant's namespace, `TENANT:key`,
chosen by the server from the token and never from the request, so one tenant
cannot name another's keys.

Health and reflection stay open: Kubernetes' gRPC probes cannot send a token.
Tokens are compared by their SHA-256 digests with `hmac.compare_digest` against
every entry, so the time taken says nothing about how close a guess was.

The identity is resolved once per call, here, and handed on with the call (as
go-grpc-middleware's auth does): the interceptor sets it in a context variable that
the servicer reads (`caller_identity`). grpc runs a call's interceptors and its
handler in one `contextvars.Context` of the call's own (grpc/grpc#34291), so the
value reaches the handler on its executor thread and goes with the call: no other
call sees it, and nothing has to unset it. Without tokens there is no interceptor
and no identity.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import grpc

from cachegate.rpc._decode import handler_factory
from cachegate.rpc._services import ADMIN, HEALTH

__all__ = [
    "ADMIN_PREFIX",
    "AuthInterceptor",
    "Identity",
    "TokenTable",
    "TokenTableError",
    "caller_identity",
    "tenant_of_key",
]

if TYPE_CHECKING:  # grpc-stubs make these generic; grpc itself does not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.ServerInterceptor

Role = Literal["client", "admin"]
# Method paths are "/<service full name>/<method>"; the names come from the descriptors.
ADMIN_PREFIX = f"/{ADMIN.full_name}/"
# Reflection by package: both of its versions (v1 and v1alpha) stay open.
OPEN_PREFIXES = (
    f"/{HEALTH.full_name}/",
    "/grpc.reflection.",
)
MIN_TOKEN_LENGTH = 16
# No ':' in tenant names: "a" + ":" + "b:x" must never equal "a:b" + ":" + "x".
TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class TokenTableError(ValueError):
    """The tokens file is unusable; the message names the line, never the token."""


@dataclass(frozen=True, slots=True)
class Identity:
    tenant: str
    role: Role

    @property
    def prefix(self) -> str:
        return f"{self.tenant}:"


def tenant_of_key(key: bytes) -> bytes:
    """The tenant whose namespace holds `key` (a full Redis key, `Identity.prefix` first)."""
    return key.partition(b":")[0]


# The calling identity, set by AuthInterceptor in the call's own context.
_CALLER: ContextVar[Identity | None] = ContextVar("cachegate_caller", default=None)


def caller_identity() -> Identity | None:
    """The identity AuthInterceptor resolved for the running call (None: none was)."""
    return _CALLER.get()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Tokens (kept only as digests) and who they belong to."""

    def __init__(self, entries: Iterable[tuple[str, Identity]]) -> None:
        self._entries = [(_digest(token), identity) for token, identity in entries]
        if not self._entries:
            raise TokenTableError("the tokens file has no tokens")

    @classmethod
    def from_file(cls, path: str | Path) -> TokenTable:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenTableError(f"cannot read the tokens file {path}: {exc.strerror}") from None
        entries: list[tuple[str, Identity]] = []
        seen: set[bytes] = set()
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"{path}, line {number}"
            if len(fields) != 3:
                raise TokenTableError(f"{where}: expected 'TOKEN TENANT ROLE'")
            token, tenant, role = fields
            if len(token) < MIN_TOKEN_LENGTH:
                raise TokenTableError(f"{where}: token shorter than {MIN_TOKEN_LENGTH} characters")
            if not TENANT_NAME.fullmatch(tenant):
                raise TokenTableError(f"{where}: tenant must match {TENANT_NAME.pattern}")
            if role not in ("client", "admin"):
                raise TokenTableError(f"{where}: role must be client or admin")
            if _digest(token) in seen:
                raise TokenTableError(f"{where}: the same token appears twice")
            seen.add(_digest(token))
            entries.append((token, Identity(tenant, "admin" if role == "admin" else "client")))
        return cls(entries)

    def lookup(self, token: str | None) -> Identity | None:
        if not token:
            return None
        presented = _digest(token)
        found = None
        for digest, identity in self._entries:  # no early exit: same work for every guess
            if hmac.compare_digest(digest, presented):
                found = identity
        return found

    def identity(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Identity | None:
        return self.lookup(bearer_token(metadata))

    def __len__(self) -> int:
        return len(self._entries)

    def tenants(self) -> frozenset[str]:
        """Every tenant a token names (the namespaces invalidations are tracked under)."""
        return frozenset(identity.tenant for _, identity in self._entries)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip() or None
    return None


def _denied(handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
    """A handler of the same kind as `handler` that only refuses."""

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    make = handler_factory(handler.request_streaming, handler.response_streaming)
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthInterceptor(_Interceptor):
    """UNAUTHENTICATED without a known token; PERMISSION_DENIED for a client on admin RPCs.

    An admitted call gets its identity (`caller_identity`) and the handler grpc gave,
    unchanged; a refused one a handler that only refuses, made once per method and code.
    """

    def __init__(self, table: TokenTable) -> None:
        self._table = table
        self._refusals: dict[tuple[str, grpc.StatusCode], tuple[Handler, Handler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED
        metadata = handler_call_details.invocation_metadata
        identity = self._table.identity(metadata)
        if identity is None:
            return self._refusal(
                method,
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown bearer token (send 'authorization: Bearer <token>')",
            )
        if method.startswith(ADMIN_PREFIX) and identity.role != "admin":
            return self._refusal(
                method, handler, grpc.StatusCode.PERMISSION_DENIED, "this RPC needs an admin token"
            )
        _CALLER.set(identity)  # the call's own context: see the module docstring
        return handler

    def _refusal(
        self, method: str, handler: Handler, code: grpc.StatusCode, message: str
    ) -> Handler:
        """The refusing twin of `handler` (kept, so a refusal makes no new handler)."""
        known = self._refusals.get((method, code))
        if known is not None and known[0] is handler:
            return known[1]
        refusal = _denied(handler, code, message)
        self._refusals[(method, code)] = (handler, refusal)
        return refusal
