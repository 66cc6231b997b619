"""The gRPC client with its local per-profile cache."""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
from collections.abc import Sequence
from typing import Union

import grpc
from google.protobuf import duration_pb2

from tokenvend_client._pb.tokenvend.v1 import tokenvend_pb2, tokenvend_pb2_grpc
from tokenvend_client._token import Token, TokenvendError

Seconds = Union[float, int, _dt.timedelta]


def _seconds(value: Seconds | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


class _ServiceAccountToken:
    """The caller's own identity, read from a file such as a Kubernetes projected
    ServiceAccount token.

    The kubelet rotates that file in place (an atomic symlink swap), so the content is
    re-read as soon as the file's mtime/size/inode changes, and at least every
    ``max_age`` seconds in case a change went unseen (e.g. a coarse mtime).
    """

    def __init__(self, path: str | os.PathLike, max_age: float = 60.0):
        self._path = os.fspath(path)
        self._max_age = max_age
        self._lock = threading.Lock()
        self._value: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._read_at = 0.0

    def header(self) -> tuple[str, str]:
        with self._lock:
            st = os.stat(self._path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            now = time.monotonic()
            if self._value is None or stamp != self._stamp or now - self._read_at >= self._max_age:
                with open(self._path, encoding="utf-8") as f:
                    self._value = f.read().strip()
                self._stamp = stamp
                self._read_at = now
            return ("authorization", f"Bearer {self._value}")

    def __repr__(self) -> str:
        return f"_ServiceAccountToken(path={self._path!r})"


class TokenClient:
    """A client of tokenvend's ``TokenService`` with a local cache.

    ``get_token`` returns the locally cached token while it is valid for more than
    ``refresh_margin`` seconds plus the caller's ``min_ttl``, and otherwise asks tokenvend
    (which has its own, shared cache). The client is thread-safe: concurrent callers for the
    same profile wait for a single RPC and share its result.

    Args:
        target: tokenvend's address, e.g. ``"127.0.0.1:50051"`` or ``"dns:///tokenvend:50051"``.
            Ignored when ``channel`` is given.
        credentials: ``grpc.ChannelCredentials`` for TLS (e.g. ``grpc.ssl_channel_credentials()``).
            Plaintext when omitted, which suits a sidecar on localhost or a mesh that does mTLS.
        service_account_token_file: a file whose content is sent as
            ``authorization: Bearer <content>`` on every call, e.g.
            ``/var/run/secrets/tokens/tokenvend``.
        refresh_margin: seconds before expiry at which a cached token is no longer handed out.
        timeout: deadline in seconds of each RPC.
        channel: a ready ``grpc.Channel`` to use instead of ``target``/``credentials`` (for
            interceptors or custom options). The client does not close a channel it was given.
        options: extra gRPC channel options when the client creates the channel.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        service_account_token_file: str | os.PathLike | None = None,
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        channel: grpc.Channel | None = None,
        options: Sequence[tuple[str, object]] | None = None,
    ):
        if channel is None:
            if not target:
                raise ValueError("TokenClient needs a target or a channel")
            if credentials is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                channel = grpc.secure_channel(target, credentials, options=options)
            self._owns_channel = True
        else:
            self._owns_channel = False
        self._target = target
        self._channel = channel
        self._stub = tokenvend_pb2_grpc.TokenServiceStub(channel)
        self._sa_token = (
            _ServiceAccountToken(service_account_token_file) if service_account_token_file else None
        )
        self._refresh_margin = float(refresh_margin)
        self._timeout = timeout
        self._cache: dict[str, Token] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- public API -------------------------------------------------------------------

    def get_token(
        self,
        profile: str,
        min_ttl: Seconds | None = None,
        rejected_token: str | Token | None = None,
    ) -> Token:
        """Returns a token for ``profile`` valid for at least ``min_ttl`` more seconds.

        ``rejected_token`` reports a token that the upstream API just refused (HTTP 401):
        if the local cache holds exactly that token it is dropped and tokenvend is asked to
        replace it; if the cache already holds a newer one (another thread got there
        first), that one is returned without an RPC.

        Raises:
            TokenvendError: tokenvend answered with an error; ``.code()`` is the gRPC
                status (NOT_FOUND for an unknown profile, UNAVAILABLE when the identity
                provider is down, OUT_OF_RANGE when ``min_ttl`` exceeds the token lifetime...).
        """
        if not profile:
            raise ValueError("profile must be a non-empty string")
        want = _seconds(min_ttl)
        if want < 0:
            raise ValueError("min_ttl must not be negative")
        rejected = rejected_token.access_token if isinstance(rejected_token, Token) else rejected_token

        with self._lock_for(profile):
            cached = self._cache.get(profile)
            if cached is not None and rejected and cached.access_token == rejected:
                del self._cache[profile]
                cached = None
            if cached is not None and cached.remaining() > self._refresh_margin + want:
                return cached
            token = self._fetch(profile, want, rejected)
            self._cache[profile] = token
            return token

    def invalidate(self, profile: str, token: str | Token) -> Token:
        """Reports ``token`` as rejected by the upstream API and returns its replacement.
        Same as ``get_token(profile, rejected_token=token)``."""
        return self.get_token(profile, rejected_token=token)

    def list_profiles(self) -> list[tokenvend_pb2.ProfileInfo]:
        """The profiles this caller may use, with their cache state (never a secret)."""
        try:
            resp = self._stub.ListProfiles(
                tokenvend_pb2.ListProfilesRequest(), timeout=self._timeout, metadata=self._metadata()
            )
        except grpc.RpcError as err:
            raise TokenvendError.from_rpc_error(err) from None
        return list(resp.profiles)

    @property
    def stub(self) -> tokenvend_pb2_grpc.TokenServiceStub:
        """The raw generated stub, e.g. for ``WatchToken``. Calls made through it bypass the
        local cache and do not carry the ServiceAccount token automatically."""
        return self._stub

    def close(self) -> None:
        """Closes the channel if this client created it. Idempotent."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> TokenClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TokenClient(target={self._target!r}, cached_profiles={sorted(self._cache)!r})"

    # -- internals --------------------------------------------------------------------

    def _lock_for(self, profile: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(profile)
            if lock is None:
                lock = self._locks[profile] = threading.Lock()
            return lock

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        # Per-call metadata rather than grpc call credentials: gRPC only attaches call
        # credentials on TLS channels, and tokenvend is often reached in plaintext over
        # localhost or a mesh.
        return (self._sa_token.header(),) if self._sa_token else None

    def _fetch(self, profile: str, min_ttl: float, rejected: str | None) -> Token:
        req = tokenvend_pb2.GetTokenRequest(profile=profile, rejected_token=rejected or "")
        if min_ttl > 0:
            req.min_ttl.CopyFrom(duration_pb2.Duration(seconds=int(min_ttl), nanos=int(min_ttl % 1 * 1e9)))
        try:
            msg = self._stub.GetToken(req, timeout=self._timeout, metadata=self._metadata())
        except grpc.RpcError as err:
            # `from None`: the original error's repr is noisy and adds nothing beyond code
            # and details, which TokenvendError carries.
            raise TokenvendError.from_rpc_error(err, profile) from None
        return Token.from_proto(msg)
