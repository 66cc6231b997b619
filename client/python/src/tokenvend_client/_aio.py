"""The asyncio client (``grpc.aio``): the same cache and rules as ``TokenClient``."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Sequence

import grpc
import grpc.aio

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
from tokenvend_client._client import check_args, deadline_error, token_request
from tokenvend_client._pb.tokenvend.v1 import tokenvend_pb2, tokenvend_pb2_grpc
from tokenvend_client._token import Token, TokenvendError

__all__ = ["AsyncTokenClient", "AsyncWatchHandle"]


class AsyncTokenClient:
    """``TokenClient`` for asyncio: ``await client.get_token("profile")``.

    Same local cache, refresh margin, single flight per profile, coalesced rejects,
    deadlines and stale-copy rule as :class:`TokenClient`. A ``grpc.aio`` channel belongs
    to the event loop it was made in: create, use and close the client in one loop.

    Arguments are those of :class:`TokenClient`; ``channel`` must be a ``grpc.aio``
    channel, and ``interceptors`` are ``grpc.aio`` client interceptors.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        service_account_token_file: str | os.PathLike | None = None,
        max_refresh_margin: Seconds = DEFAULT_MAX_REFRESH_MARGIN,
        timeout: Seconds = DEFAULT_TIMEOUT,
        channel: grpc.aio.Channel | None = None,
        options: Sequence[tuple[str, object]] | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    ):
        if channel is None:
            if not target:
                raise ValueError("AsyncTokenClient needs a target or a channel")
            if credentials is None:
                channel = grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
            else:
                channel = grpc.aio.secure_channel(
                    target, credentials, options=options, interceptors=interceptors
                )
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
        # The RPC in flight per profile; every caller who needs it awaits the same one.
        self._flights: dict[str, asyncio.Future[Token]] = {}
        self._watches: dict[str, AsyncWatchHandle] = {}

    # -- public API -------------------------------------------------------------------

    async def get_token(
        self, profile: str, min_ttl: Seconds | None = None, *, timeout: Seconds | None = None
    ) -> Token:
        """See :meth:`TokenClient.get_token`. Cancelling the awaiting task, or
        ``timeout``, ends the wait; an RPC others are waiting on goes on for them."""
        want = check_args(profile, min_ttl)
        budget = timeout_or_default(timeout, self._timeout)
        deadline = time.monotonic() + budget
        while True:
            token, ask = lookup(self._cache.get(profile), want, time.monotonic())
            if not ask:
                return token
            flight = self._flights.get(profile)
            if flight is not None:
                if token is not None:
                    return token  # a valid copy inside its margin while one RPC asks
                await self._wait(flight, profile, deadline, budget)
                continue  # that RPC may have been for a shorter min_ttl: look again
            left = deadline - time.monotonic()
            flight = self._start(profile, self._fetch(profile, want, None, left, token))
            return await self._wait(flight, profile, deadline, budget)

    async def reject(self, profile: str, token: str | Token, *, timeout: Seconds | None = None) -> Token:
        """See :meth:`TokenClient.reject`: concurrent rejects of one token make one RPC,
        and a reject of a token that is no longer the local copy makes none."""
        check_args(profile, None)
        rejected = token.access_token if isinstance(token, Token) else token
        if not rejected:
            raise ValueError("token must be a non-empty string or a Token")
        budget = timeout_or_default(timeout, self._timeout)
        deadline = time.monotonic() + budget
        while True:
            flight = self._flights.get(profile)
            if flight is not None:
                await self._wait(flight, profile, deadline, budget)
            entry = self._cache.get(profile)
            if entry is not None and entry.token.access_token != rejected:
                return await self.get_token(profile, timeout=max(deadline - time.monotonic(), 1e-3))
            if self._flights.get(profile) is not None:
                continue
            if entry is not None and self._cache.get(profile) is entry:
                del self._cache[profile]
            left = deadline - time.monotonic()
            flight = self._start(profile, self._fetch(profile, 0.0, rejected, left, None))
            return await self._wait(flight, profile, deadline, budget)

    def watch(self, profile: str) -> AsyncWatchHandle:
        """See :meth:`TokenClient.watch`; the stream runs in an asyncio task of the
        running loop."""
        check_args(profile, None)
        handle = self._watches.get(profile)
        if handle is None or handle.stopped:
            handle = self._watches[profile] = AsyncWatchHandle(self, profile)
        return handle

    async def list_profiles(self, timeout: Seconds | None = None) -> list[tokenvend_pb2.ProfileInfo]:
        try:
            resp = await self._stub.ListProfiles(
                tokenvend_pb2.ListProfilesRequest(),
                timeout=timeout_or_default(timeout, self._timeout),
                metadata=self._metadata(),
            )
        except grpc.RpcError as err:
            raise TokenvendError.from_rpc_error(err) from None
        return list(resp.profiles)

    async def close(self) -> None:
        """Stops every watch and closes the channel if this client created it."""
        watches = list(self._watches.values())
        self._watches.clear()
        for handle in watches:
            await handle.stop()
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncTokenClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncTokenClient(target={self._target!r}, cached_profiles={sorted(self._cache)!r})"

    # -- internals --------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (self._sa_token.header(),) if self._sa_token else None

    def _start(self, profile: str, work: Awaitable[Token]) -> asyncio.Future[Token]:
        flight = asyncio.ensure_future(work)
        self._flights[profile] = flight

        def done(f: asyncio.Future[Token]) -> None:
            if self._flights.get(profile) is f:
                del self._flights[profile]
            if not f.cancelled():
                f.exception()  # retrieved: the waiters who left early do not see it

        flight.add_done_callback(done)
        return flight

    @staticmethod
    async def _wait(flight: asyncio.Future[Token], profile: str, deadline: float, budget: float) -> Token:
        left = deadline - time.monotonic()
        if left <= 0:
            raise deadline_error(profile, budget)
        try:
            # shield: a waiter's timeout or cancellation must not cancel the RPC that other
            # waiters share.
            return await asyncio.wait_for(asyncio.shield(flight), left)
        except asyncio.TimeoutError:
            raise deadline_error(profile, budget) from None

    async def _fetch(
        self, profile: str, min_ttl: float, rejected: str | None, timeout: float, fallback: Token | None
    ) -> Token:
        entry = self._cache.get(profile)
        if entry is not None:
            entry.asked_at = time.monotonic()
        try:
            msg = await self._stub.GetToken(
                token_request(profile, min_ttl, rejected),
                timeout=max(timeout, 1e-3),
                metadata=self._metadata(),
            )
        except grpc.RpcError as err:
            error = TokenvendError.from_rpc_error(err, profile)
            if fallback is not None and error.retryable and fallback.remaining() > 0:
                return fallback
            raise error from None
        return self._store(profile, Token.from_proto(msg))

    def _store(self, profile: str, token: Token) -> Token:
        self._cache[profile] = Entry(token, self._max_margin, time.monotonic(), self._cache.get(profile))
        return token


class AsyncWatchHandle:
    """A running ``AsyncTokenClient.watch(profile)``: an asyncio task holding a
    ``WatchToken`` stream open."""

    def __init__(self, client: AsyncTokenClient, profile: str):
        self._client = client
        self.profile = profile
        self._first = asyncio.Event()
        self._stopped = False
        self.last_error: BaseException | None = None
        """Why the stream last broke (it is being opened again), or None."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"tokenvend-watch-{profile}")

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Waits until the stream has delivered a first token; False on timeout."""
        try:
            await asyncio.wait_for(self._first.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self) -> None:
        self._stopped = True
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def __repr__(self) -> str:
        return f"AsyncWatchHandle(profile={self.profile!r}, stopped={self.stopped})"

    async def _run(self) -> None:
        delays = backoff_delays()
        req = tokenvend_pb2.WatchTokenRequest(profile=self.profile)
        while not self._stopped:
            try:
                call = self._client._stub.WatchToken(req, metadata=self._client._metadata())
                try:
                    async for msg in call:
                        self._client._store(self.profile, Token.from_proto(msg))
                        self._first.set()
                        self.last_error = None
                        delays = backoff_delays()
                finally:
                    call.cancel()
                self.last_error = TokenvendError(
                    grpc.StatusCode.UNAVAILABLE, "watch stream ended", self.profile
                )
            except grpc.RpcError as err:
                self.last_error = TokenvendError.from_rpc_error(err, self.profile)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # e.g. the ServiceAccount token file is missing
                self.last_error = err
            await asyncio.sleep(next(delays) * random.uniform(0.5, 1.0))
