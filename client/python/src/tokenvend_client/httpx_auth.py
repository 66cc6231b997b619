"""``httpx`` integration: ``httpx.Client(auth=TokenvendHttpxAuth(client, "profile"))``."""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Generator, Mapping

import httpx

from tokenvend_client._client import Seconds, TokenClient


class TokenvendHttpxAuth(httpx.Auth):
    """Puts a tokenvend profile's headers on each request; on a 401 reports the token as
    rejected, takes the new one and re-sends the request once.

    The retry only happens when the body is held in memory (``content=bytes``, ``json=``,
    ``data=`` as a form, or no body); a streamed body (an iterator, a file, multipart) is
    not buffered just in case, so its 401 is returned as is, as is a second 401.

    Works with ``httpx.Client`` and ``httpx.AsyncClient``; with the latter, a call that
    has to reach tokenvend runs in a worker thread instead of blocking the event loop.
    """

    def __init__(self, client: TokenClient, profile: str, *, min_ttl: Seconds | None = None):
        self._client = client
        self._profile = profile
        self._min_ttl = min_ttl

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._client.get_token(self._profile, min_ttl=self._min_ttl)
        _apply(request, token.headers)
        response = yield request
        if response.status_code != 401 or not _replayable(request):
            return
        token = self._client.get_token(
            self._profile, min_ttl=self._min_ttl, rejected_token=token.access_token
        )
        _apply(request, token.headers)
        yield request

    auth_flow = sync_auth_flow

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        import anyio.to_thread  # an httpx dependency; works under asyncio and trio

        get = functools.partial(self._client.get_token, self._profile, min_ttl=self._min_ttl)
        token = await anyio.to_thread.run_sync(get)
        _apply(request, token.headers)
        response = yield request
        if response.status_code != 401 or not _replayable(request):
            return
        get = functools.partial(get, rejected_token=token.access_token)
        token = await anyio.to_thread.run_sync(get)
        _apply(request, token.headers)
        yield request

    def __repr__(self) -> str:
        return f"TokenvendHttpxAuth(profile={self._profile!r})"


def _apply(request: httpx.Request, headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        request.headers[name] = value


def _replayable(request: httpx.Request) -> bool:
    # httpx keeps in-memory bodies as a ByteStream (and turns a read body into one).
    return isinstance(request.stream, httpx.ByteStream)
