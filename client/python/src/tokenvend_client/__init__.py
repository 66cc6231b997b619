"""Python client for tokenvend: OAuth 2.0 access tokens by profile name, no client secret.

    from tokenvend_client import TokenClient

    with TokenClient("127.0.0.1:50051") as tv:
        token = tv.get_token("jakamo")
        headers = dict(token.headers)

``AsyncTokenClient`` is the same for asyncio (``grpc.aio``).

HTTP integrations (optional extras): ``TokenvendAdapter`` and ``TokenvendAuth`` for
requests, ``TokenvendHttpxAuth`` for httpx, imported on first use so that neither library
is needed unless used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenvend_client._aio import AsyncTokenClient, AsyncWatchHandle
from tokenvend_client._client import TokenClient, WatchHandle
from tokenvend_client._token import Token, TokenvendError

if TYPE_CHECKING:
    from tokenvend_client.httpx_auth import (
        TokenvendConnectError,
        TokenvendHttpxAuth,
        TokenvendHttpxError,
        TokenvendTimeoutError,
    )
    from tokenvend_client.requests_auth import (
        TokenvendAdapter,
        TokenvendAuth,
        TokenvendConnectionError,
        TokenvendRequestsError,
        TokenvendTimeout,
    )

__all__ = [
    "AsyncTokenClient",
    "AsyncWatchHandle",
    "Token",
    "TokenClient",
    "TokenvendAdapter",
    "TokenvendAuth",
    "TokenvendConnectError",
    "TokenvendConnectionError",
    "TokenvendError",
    "TokenvendHttpxAuth",
    "TokenvendHttpxError",
    "TokenvendRequestsError",
    "TokenvendTimeout",
    "TokenvendTimeoutError",
    "WatchHandle",
]
__version__ = "0.1.0"

_LAZY = {
    "TokenvendAdapter": "tokenvend_client.requests_auth",
    "TokenvendAuth": "tokenvend_client.requests_auth",
    "TokenvendRequestsError": "tokenvend_client.requests_auth",
    "TokenvendConnectionError": "tokenvend_client.requests_auth",
    "TokenvendTimeout": "tokenvend_client.requests_auth",
    "TokenvendHttpxAuth": "tokenvend_client.httpx_auth",
    "TokenvendHttpxError": "tokenvend_client.httpx_auth",
    "TokenvendConnectError": "tokenvend_client.httpx_auth",
    "TokenvendTimeoutError": "tokenvend_client.httpx_auth",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:
        extra = "httpx" if module.endswith("httpx_auth") else "requests"
        raise ImportError(f"{name} needs {err.name!r}: pip install 'tokenvend-client[{extra}]'") from err
    globals()[name] = value
    return value
