"""The token type handed to callers, and the error type."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
import types
from collections.abc import Mapping

import grpc

from tokenvend_client._pb.tokenvend.v1 import tokenvend_pb2


@dataclasses.dataclass(frozen=True)
class Token:
    """An access token vended by tokenvend.

    Immutable and safe to share between threads. Its ``repr`` never shows the token nor
    any header value, so a token that ends up in a log line or a traceback leaks nothing.
    """

    access_token: str = dataclasses.field(repr=False)
    token_type: str
    expires_at: _dt.datetime
    """When the token stops being valid (timezone-aware, UTC)."""
    scopes: tuple[str, ...]
    headers: Mapping[str, str] = dataclasses.field(repr=False)
    """Every header to put on the upstream request (lower-case names), ``authorization``
    included. Read-only."""
    profile: str

    @classmethod
    def from_proto(cls, msg: tokenvend_pb2.Token) -> Token:
        expires_at = _dt.datetime.fromtimestamp(
            msg.expires_at.seconds + msg.expires_at.nanos / 1e9, tz=_dt.timezone.utc
        )
        headers = {k.lower(): v for k, v in msg.headers.items()}
        if "authorization" not in headers:
            # The server always sends it; this keeps the adapters correct against one
            # that does not.
            headers["authorization"] = f"{msg.token_type or 'Bearer'} {msg.access_token}"
        return cls(
            access_token=msg.access_token,
            token_type=msg.token_type,
            expires_at=expires_at,
            scopes=tuple(msg.scopes),
            headers=types.MappingProxyType(headers),
            profile=msg.profile,
        )

    def remaining(self, now: float | None = None) -> float:
        """Seconds until the token expires (negative once it has)."""
        return self.expires_at.timestamp() - (time.time() if now is None else now)

    def __repr__(self) -> str:
        return (
            f"Token(profile={self.profile!r}, token_type={self.token_type!r}, "
            f"expires_at={self.expires_at.isoformat()}, scopes={list(self.scopes)!r}, "
            f"headers=[{', '.join(sorted(self.headers))}], access_token=<redacted>)"
        )

    __str__ = __repr__


_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


class TokenvendError(grpc.RpcError):
    """tokenvend refused or failed a call.

    Subclasses :class:`grpc.RpcError` and, like a gRPC call object, offers ``code()`` and
    ``details()``, so code that already handles ``grpc.RpcError`` keeps working.
    """

    def __init__(self, code: grpc.StatusCode, details: str, profile: str | None = None):
        self._code = code
        self._details = details or ""
        self.profile = profile
        where = f" (profile {profile!r})" if profile else ""
        super().__init__(f"tokenvend: {code.name}{where}: {self._details}")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later: tokenvend or the provider was down or
        slow, the caller was over its rate, or the call was cut short. Errors such as
        NOT_FOUND or FAILED_PRECONDITION need a configuration change first."""
        return self._code in _RETRYABLE

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError, profile: str | None = None) -> TokenvendError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", profile)
