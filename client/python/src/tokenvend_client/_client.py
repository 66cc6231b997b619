"""The threaded gRPC client with its local per-profile cache."""

from __future__ import annotations

import os
import random
import threading
import time
import warnings
from collections.abc import Sequence

import grpc
from google.protobuf import duration_pb2

from tokenvend_client._cache import (
    DEFAULT_MAX_REFRESH_MARGIN,
    DEFAULT_TIMEOUT,
    Entry,
    Seconds,
    ServiceAccountToken,
    backoff_delays,
    lookup,
    seconds,
    timeout_or_default,
)
from tokenvend_client._pb.tokenvend.v1 import tokenvend_pb2, tokenvend_pb2_grpc
from tokenvend_client._token import Token, TokenvendError

__all__ = ["Seconds", "TokenClient", "WatchHandle"]


def token_request(profile: str, min_ttl: float, rejected: str | None) -> tokenvend_pb2.GetTokenRequest:
    req = tokenvend_pb2.GetTokenRequest(profile=profile, rejected_token=rejected or "")
    if min_ttl > 0:
        req.min_ttl.CopyFrom(duration_pb2.Duration(seconds=int(min_ttl), nanos=int(min_ttl % 1 * 1e9)))
    return req


def deadline_error(profile: str, timeout: float) -> TokenvendError:
    return TokenvendError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"no token within {timeout:g} s (another call for this profile is still waiting on tokenvend)",
        profile,
    )


def check_args(profile: str, min_ttl: Seconds | None) -> float:
    if not profile:
        raise ValueError("profile must be a non-empty string")
    want = seconds(min_ttl)
    if want < 0:
        raise ValueError("min_ttl must not be negative")
    return want


class TokenClient:
    """A client of tokenvend's ``TokenService`` with a local cache.

    ``get_token`` serves the local copy of a profile's token while it has more than its
    *refresh margin* left: 10 % of the lifetime it had when this client received it, at
    most ``max_refresh_margin``. tokenvend replaces its own copy at about 80 % of the
    lifetime, so the next RPC finds the replacement in tokenvend's cache. The client is
    thread-safe: concurrent callers for one profile wait for a single RPC.

    Args:
        target: tokenvend's address, e.g. ``"127.0.0.1:50051"`` or ``"dns:///tokenvend:50051"``.
            Ignored when ``channel`` is given.
        credentials: ``grpc.ChannelCredentials`` for TLS (e.g. ``grpc.ssl_channel_credentials()``).
            Plaintext when omitted, which suits a sidecar on localhost or a mesh that does mTLS.
        service_account_token_file: a file whose content is sent as
            ``authorization: Bearer <content>`` on every call, e.g.
            ``/var/run/secrets/tokens/tokenvend``.
        max_refresh_margin: cap on the refresh margin, seconds or a ``timedelta`` (60 s).
        timeout: deadline of each RPC when the caller gives none, seconds (10 s).
        channel: a ready ``grpc.Channel`` to use instead of ``target``/``credentials`` (for
            interceptors or custom options). The client does not close a channel it was given.
        options: extra gRPC channel options when the client creates the channel.
        refresh_margin: deprecated, ignored beyond setting ``max_refresh_margin``: a fixed
            margin made short-lived tokens be fetched again on almost every call.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        service_account_token_file: str | os.PathLike | None = None,
        max_refresh_margin: Seconds = DEFAULT_MAX_REFRESH_MARGIN,
        timeout: Seconds = DEFAULT_TIMEOUT,
        channel: grpc.Channel | None = None,
        options: Sequence[tuple[str, object]] | None = None,
        refresh_margin: Seconds | None = None,
    ):
        if refresh_margin is not None:
            warnings.warn(
                "refresh_margin is deprecated: the margin is 10 % of a token's lifetime, "
                "capped by max_refresh_margin",
                DeprecationWarning,
                stacklevel=2,
            )
            max_refresh_margin = refresh_margin
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
            ServiceAccountToken(service_account_token_file) if service_account_token_file else None
        )
        self._max_margin = seconds(max_refresh_margin)
        if self._max_margin < 0:
            raise ValueError("max_refresh_margin must not be negative")
        self._timeout = timeout_or_default(timeout, DEFAULT_TIMEOUT)
        self._cache: dict[str, Entry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._watches: dict[str, WatchHandle] = {}

    # -- public API -------------------------------------------------------------------

    def get_token(
        self,
        profile: str,
        min_ttl: Seconds | None = None,
        *,
        timeout: Seconds | None = None,
        rejected_token: str | Token | None = None,
    ) -> Token:
        """Returns a token for ``profile`` valid for at least ``min_ttl`` more seconds.

        ``timeout`` bounds the whole call, including waiting for another thread's RPC for
        the same profile; without it each RPC gets the client's ``timeout`` (10 s).
        ``rejected_token`` is the deprecated spelling of :meth:`reject`.

        While tokenvend cannot be reached (or cannot refresh), a local copy that has not
        expired is served even inside its margin, and tokenvend is asked again for that
        profile at most once a second.

        Raises:
            TokenvendError: no usable token; ``.code()`` is the gRPC status (NOT_FOUND for
                an unknown profile, UNAVAILABLE when tokenvend or the provider is down,
                DEADLINE_EXCEEDED when ``timeout`` passed, OUT_OF_RANGE when ``min_ttl``
                exceeds the token lifetime...) and ``.retryable`` says whether to retry.
        """
        if rejected_token is not None:
            warnings.warn(
                "get_token(rejected_token=...) is deprecated, use reject()", DeprecationWarning, stacklevel=2
            )
            return self._reject(profile, rejected_token, min_ttl, timeout)
        want = check_args(profile, min_ttl)
        budget = timeout_or_default(timeout, self._timeout)
        start = time.monotonic()

        token, ask = lookup(self._cache.get(profile), want, start)
        if not ask:
            return token
        lock = self._lock_for(profile)
        if token is not None:
            # A valid copy inside its margin: one thread asks, the others keep using it.
            if not lock.acquire(blocking=False):
                return token
        elif not lock.acquire(timeout=budget):
            raise deadline_error(profile, budget)
        try:
            token, ask = lookup(self._cache.get(profile), want, time.monotonic())
            if not ask:
                return token
            left = budget - (time.monotonic() - start)
            if left <= 0:
                raise deadline_error(profile, budget)
            return self._fetch(profile, want, None, left, fallback=token)
        finally:
            lock.release()

    def reject(self, profile: str, token: str | Token, *, timeout: Seconds | None = None) -> Token:
        """Reports ``token`` as refused by the upstream API (HTTP 401) and returns its
        replacement.

        Coalesced: if the local copy is no longer ``token`` (another thread already
        replaced it) that copy is returned with no RPC, so concurrent rejects of one token
        make one RPC, and tokenvend itself replaces a token once however many clients
        report it.
        """
        return self._reject(profile, token, None, timeout)

    def invalidate(self, profile: str, token: str | Token) -> Token:
        """Deprecated name of :meth:`reject`."""
        warnings.warn("invalidate() is deprecated, use reject()", DeprecationWarning, stacklevel=2)
        return self._reject(profile, token, None, None)

    def watch(self, profile: str) -> WatchHandle:
        """Keeps the local copy of ``profile`` current through tokenvend's ``WatchToken``
        stream, in a daemon thread, so that ``get_token`` finds a fresh copy and makes no
        RPC. The stream is opened again with backoff whenever it breaks. Idempotent per
        profile; ``close()`` stops every watch."""
        check_args(profile, None)
        with self._guard:
            handle = self._watches.get(profile)
            if handle is None or handle.stopped:
                handle = self._watches[profile] = WatchHandle(self, profile)
                handle._start()
            return handle

    def list_profiles(self, timeout: Seconds | None = None) -> list[tokenvend_pb2.ProfileInfo]:
        """The profiles this caller may use, with their cache state (never a secret)."""
        try:
            resp = self._stub.ListProfiles(
                tokenvend_pb2.ListProfilesRequest(),
                timeout=timeout_or_default(timeout, self._timeout),
                metadata=self._metadata(),
            )
        except grpc.RpcError as err:
            raise TokenvendError.from_rpc_error(err) from None
        return list(resp.profiles)

    @property
    def stub(self) -> tokenvend_pb2_grpc.TokenServiceStub:
        """The raw generated stub. Calls made through it bypass the local cache and do not
        carry the ServiceAccount token automatically."""
        return self._stub

    def close(self) -> None:
        """Stops every watch and closes the channel if this client created it. Idempotent."""
        with self._guard:
            watches = list(self._watches.values())
            self._watches.clear()
        for handle in watches:
            handle.stop()
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
        with self._guard:
            lock = self._locks.get(profile)
            if lock is None:
                lock = self._locks[profile] = threading.Lock()
            return lock

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        # Per-call metadata rather than grpc call credentials: gRPC only attaches call
        # credentials on TLS channels, and tokenvend is often reached in plaintext over
        # localhost or a mesh.
        return (self._sa_token.header(),) if self._sa_token else None

    def _reject(
        self, profile: str, token: str | Token, min_ttl: Seconds | None, timeout: Seconds | None
    ) -> Token:
        want = check_args(profile, min_ttl)
        rejected = token.access_token if isinstance(token, Token) else token
        if not rejected:
            raise ValueError("token must be a non-empty string or a Token")
        budget = timeout_or_default(timeout, self._timeout)
        start = time.monotonic()
        lock = self._lock_for(profile)
        if not lock.acquire(timeout=budget):
            raise deadline_error(profile, budget)
        try:
            entry = self._cache.get(profile)
            left = budget - (time.monotonic() - start)
            if entry is not None and entry.token.access_token != rejected:
                current, ask = lookup(entry, want, time.monotonic())
                if not ask:
                    return current
                return self._fetch(profile, want, None, left, fallback=current)
            if entry is not None and self._cache.get(profile) is entry:
                # Unless a watch stored a newer token meanwhile.
                self._cache.pop(profile, None)
            return self._fetch(profile, want, rejected, left, fallback=None)
        finally:
            lock.release()

    def _fetch(
        self, profile: str, min_ttl: float, rejected: str | None, timeout: float, fallback: Token | None
    ) -> Token:
        """One RPC; the caller holds the profile's lock."""
        entry = self._cache.get(profile)
        if entry is not None:
            entry.asked_at = time.monotonic()
        try:
            msg = self._stub.GetToken(
                token_request(profile, min_ttl, rejected), timeout=timeout, metadata=self._metadata()
            )
        except grpc.RpcError as err:
            error = TokenvendError.from_rpc_error(err, profile)
            if fallback is not None and error.retryable and fallback.remaining() > 0:
                return fallback
            # `from None`: the original error's repr is noisy and adds nothing beyond code
            # and details, which TokenvendError carries.
            raise error from None
        return self._store(profile, Token.from_proto(msg))

    def _store(self, profile: str, token: Token) -> Token:
        self._cache[profile] = Entry(token, self._max_margin, time.monotonic(), self._cache.get(profile))
        return token


class WatchHandle:
    """A running ``watch(profile)``: a daemon thread holding a ``WatchToken`` stream open
    and storing each token it delivers as the profile's local copy."""

    def __init__(self, client: TokenClient, profile: str):
        self._client = client
        self.profile = profile
        self._stop = threading.Event()
        self._first = threading.Event()
        self._call_lock = threading.Lock()
        self._call: grpc.Call | None = None
        self.last_error: BaseException | None = None
        """Why the stream last broke (it is being opened again), or None."""
        self._thread = threading.Thread(target=self._run, name=f"tokenvend-watch-{profile}", daemon=True)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Waits until the stream has delivered a first token; False on timeout."""
        return self._first.wait(timeout)

    def stop(self) -> None:
        """Ends the stream and the thread. The local copy stays; gets go back to RPCs."""
        self._stop.set()
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> WatchHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"WatchHandle(profile={self.profile!r}, stopped={self.stopped})"

    def _start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        delays = backoff_delays()
        req = tokenvend_pb2.WatchTokenRequest(profile=self.profile)
        while not self._stop.is_set():
            try:
                with self._call_lock:
                    if self._stop.is_set():
                        return
                    self._call = self._client._stub.WatchToken(req, metadata=self._client._metadata())
                for msg in self._call:
                    self._client._store(self.profile, Token.from_proto(msg))
                    self._first.set()
                    self.last_error = None
                    delays = backoff_delays()
            except grpc.RpcError as err:
                self.last_error = TokenvendError.from_rpc_error(err, self.profile)
            except Exception as err:  # e.g. the ServiceAccount token file is missing
                self.last_error = err
            else:
                self.last_error = TokenvendError(
                    grpc.StatusCode.UNAVAILABLE, "watch stream ended", self.profile
                )
            with self._call_lock:
                self._call = None
            # Jitter so that many clients cut off by one restart do not reconnect in step.
            self._stop.wait(next(delays) * random.uniform(0.5, 1.0))
