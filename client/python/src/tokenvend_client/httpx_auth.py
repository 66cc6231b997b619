"""``httpx`` integration: ``httpx.Client(auth=TokenvendHttpxAuth(client, "profile"))``."""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Generator, Mapping
from typing import Any

import grpc
import httpx

from tokenvend_client._aio import AsyncTokenClient
from tokenvend_client._client import Seconds, TokenClient
from tokenvend_client._token import Token, TokenvendError

__all__ = ["TokenvendConnectError", "TokenvendHttpxAuth", "TokenvendHttpxError", "TokenvendTimeoutError"]


class TokenvendHttpxError(TokenvendError, httpx.TransportError):
    """tokenvend could not supply a token for a request. An ``httpx.TransportError``, so
    existing handlers catch it, and a ``TokenvendError`` with ``code()`` and
    ``retryable``."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        profile: str | None = None,
        request: httpx.Request | None = None,
    ):
        super().__init__(code, details, profile)
        self._request = request  # what httpx.RequestError.request reads


class TokenvendConnectError(TokenvendHttpxError, httpx.ConnectError):
    """tokenvend unreachable (UNAVAILABLE)."""


class TokenvendTimeoutError(TokenvendHttpxError, httpx.TimeoutException):
    """No token within the request's timeout (DEADLINE_EXCEEDED)."""


def _httpx_error(err: TokenvendError, request: httpx.Request) -> TokenvendHttpxError:
    code = err.code()
    cls = {
        grpc.StatusCode.UNAVAILABLE: TokenvendConnectError,
        grpc.StatusCode.DEADLINE_EXCEEDED: TokenvendTimeoutError,
    }.get(code, TokenvendHttpxError)
    return cls(code, err.details(), err.profile, request)


def fetch_timeout(request: httpx.Request) -> float | None:
    """The request's timeout that bounds the token fetch: its connect timeout (a fetch is
    part of setting the request up), else the pool timeout. None: the client's default."""
    timeouts: Mapping[str, Any] = request.extensions.get("timeout") or {}
    for key in ("connect", "pool"):
        value = timeouts.get(key)
        if value is not None and value > 0:
            return float(value)
    return None


class TokenvendHttpxAuth(httpx.Auth):
    """Puts a tokenvend profile's headers on each request; on a 401 reports the token as
    rejected, takes the new one and re-sends the request once.

    With a :class:`TokenClient` it serves ``httpx.Client`` (and ``httpx.AsyncClient``,
    running a fetch in a worker thread); with an :class:`AsyncTokenClient` it serves
    ``httpx.AsyncClient`` without threads. The request's timeout (its connect part)
    bounds the token fetch.

    The retry only happens when the body is held in memory (``content=bytes``, ``json=``,
    ``data=`` as a form, or no body); a streamed body (an iterator, a file, multipart) is
    not buffered just in case, so its 401 is returned as is, as is a second 401.

    Raises :class:`TokenvendHttpxError` (an ``httpx.TransportError``) when tokenvend cannot
    supply a token.
    """

    def __init__(
        self,
        client: TokenClient | AsyncTokenClient,
        profile: str,
        *,
        min_ttl: Seconds | None = None,
    ):
        self._client = client
        self._profile = profile
        self._min_ttl = min_ttl

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        client = self._client
        if not isinstance(client, TokenClient):
            raise TypeError(
                "httpx.Client needs TokenvendHttpxAuth(TokenClient(...)), not an AsyncTokenClient"
            )
        timeout = fetch_timeout(request)
        try:
            token = client.get_token(self._profile, min_ttl=self._min_ttl, timeout=timeout)
        except TokenvendError as err:
            raise _httpx_error(err, request) from None
        _apply(request, token.headers)
        response = yield request
        if response.status_code != 401 or not _replayable(request):
            return
        try:
            token = client._reject(self._profile, token, self._min_ttl, timeout)
        except TokenvendError as err:
            raise _httpx_error(err, request) from None
        _apply(request, token.headers)
        yield request

    auth_flow = sync_auth_flow

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        timeout = fetch_timeout(request)
        try:
            token = await self._aget(timeout)
        except TokenvendError as err:
            raise _httpx_error(err, request) from None
        _apply(request, token.headers)
        response = yield request
        if response.status_code != 401 or not _replayable(request):
            return
        try:
            token = await self._areject(token, timeout)
        except TokenvendError as err:
            raise _httpx_error(err, request) from None
        _apply(request, token.headers)
        yield request

    async def _aget(self, timeout: float | None) -> Token:
        client = self._client
        if isinstance(client, AsyncTokenClient):
            return await client.get_token(self._profile, min_ttl=self._min_ttl, timeout=timeout)
        return await _in_thread(client.get_token, self._profile, min_ttl=self._min_ttl, timeout=timeout)

    async def _areject(self, token: Token, timeout: float | None) -> Token:
        client = self._client
        if isinstance(client, AsyncTokenClient):
            return await client.reject(self._profile, token, timeout=timeout)
        return await _in_thread(client._reject, self._profile, token, self._min_ttl, timeout)

    def __repr__(self) -> str:
        return f"TokenvendHttpxAuth(profile={self._profile!r})"


async def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> Token:
    import anyio.to_thread  # an httpx dependency; works under asyncio and trio

    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def _apply(request: httpx.Request, headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        request.headers[name] = value


def _replayable(request: httpx.Request) -> bool:
    # httpx keeps in-memory bodies as a ByteStream (and turns a read body into one).
    return isinstance(request.stream, httpx.ByteStream)
