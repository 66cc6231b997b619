"""The HTTP integrations against the real tokenvend and a stdlib upstream that says 401."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
import requests

from tokenvend_client import (
    AsyncTokenClient,
    TokenClient,
    TokenvendAdapter,
    TokenvendAuth,
    TokenvendHttpxAuth,
)


def send(kind: str, client: TokenClient, url: str, **kwargs) -> int:
    if kind in ("requests", "requests-adapter"):
        with requests.Session() as s:
            if kind == "requests":
                s.auth = TokenvendAuth(client, "demo")
            else:
                s.mount(url, TokenvendAdapter(client, "demo"))
            kwargs = {("data" if k == "content" else k): v for k, v in kwargs.items()}
            return s.request(kwargs.pop("method", "GET"), url, timeout=10, **kwargs).status_code
    if kind == "httpx":
        with httpx.Client(auth=TokenvendHttpxAuth(client, "demo"), timeout=10) as c:
            return c.request(kwargs.pop("method", "GET"), url, **kwargs).status_code
    if kind == "httpx-async":

        async def go() -> int:
            async with httpx.AsyncClient(auth=TokenvendHttpxAuth(client, "demo"), timeout=10) as c:
                return (await c.request(kwargs.pop("method", "GET"), url, **kwargs)).status_code

        return asyncio.run(go())
    if kind == "httpx-aio":

        async def go_aio() -> int:
            async with AsyncTokenClient(client._target) as aclient:
                async with httpx.AsyncClient(auth=TokenvendHttpxAuth(aclient, "demo"), timeout=10) as c:
                    return (await c.request(kwargs.pop("method", "GET"), url, **kwargs)).status_code

        return asyncio.run(go_aio())
    raise AssertionError(kind)


KINDS = ["requests", "requests-adapter", "httpx", "httpx-async", "httpx-aio"]


def server_token(target: str) -> str:
    """What tokenvend hands out now, bypassing any local cache."""
    with TokenClient(target) as fresh:
        return fresh.get_token("demo").access_token


@pytest.mark.parametrize("kind", KINDS)
def test_401_reports_the_token_and_retries_once_with_the_new_one(
    kind, client, upstream, tokenvend_target
) -> None:
    first = client.get_token("demo")
    upstream.fail_first = 1

    assert send(kind, client, upstream.url) == 200

    auths = [r["authorization"] for r in upstream.seen]
    assert len(auths) == 2
    assert auths[0] == "Bearer " + first.access_token
    assert auths[1] != auths[0]
    assert auths[1] == "Bearer " + server_token(tokenvend_target)


@pytest.mark.parametrize("kind", KINDS)
def test_persistent_401_is_returned_after_exactly_one_retry(kind, client, upstream) -> None:
    upstream.fail_first = None

    assert send(kind, client, upstream.url) == 401
    assert len(upstream.seen) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_the_retry_replays_an_in_memory_body(kind, client, upstream) -> None:
    upstream.fail_first = 1

    assert send(kind, client, upstream.url, method="POST", content=b'{"order": 1}') == 200
    assert [r["body"] for r in upstream.seen] == [b'{"order": 1}'] * 2


@pytest.mark.parametrize("kind", ["requests", "requests-adapter"])
def test_requests_replays_a_seekable_file_body(kind, client, upstream) -> None:
    upstream.fail_first = 1
    with requests.Session() as s:
        if kind == "requests":
            s.auth = TokenvendAuth(client, "demo")
        else:
            s.mount(upstream.url, TokenvendAdapter(client, "demo"))
        resp = s.post(upstream.url, data=io.BytesIO(b"file body"), timeout=10)
    assert resp.status_code == 200
    assert [r["body"] for r in upstream.seen] == [b"file body"] * 2
    assert [h.status_code for h in resp.history] == [401]


@pytest.mark.parametrize("kind", ["requests", "requests-adapter", "httpx"])
def test_a_one_shot_body_is_not_retried(kind, client, upstream) -> None:
    upstream.fail_first = 1

    def chunks():
        yield b"streamed "
        yield b"once"

    assert send(kind, client, upstream.url, method="POST", content=chunks()) == 401
    assert len(upstream.seen) == 1
    assert upstream.seen[0]["body"] == b"streamed once"


def test_no_401_means_no_extra_request(client, upstream) -> None:
    upstream.fail_first = 0
    assert send("requests", client, upstream.url) == 200
    assert send("httpx", client, upstream.url) == 200
    assert len(upstream.seen) == 2
    assert upstream.seen[0]["authorization"] == upstream.seen[1]["authorization"]


def test_the_adapter_sends_the_token_only_under_its_prefix(client, upstream) -> None:
    upstream.fail_first = 0
    other = upstream.url.replace("/api/order/response", "/elsewhere")
    with requests.Session() as s:
        s.mount(upstream.url, TokenvendAdapter(client, "demo"))
        assert s.get(upstream.url, timeout=10).status_code == 200
        assert s.get(other, timeout=10).status_code == 200
    assert upstream.seen[0]["authorization"] == client.get_token("demo").headers["authorization"]
    assert upstream.seen[1]["authorization"] is None


def test_tokenvend_auth_bounds_its_fetch_by_its_own_timeout(unresponsive, upstream) -> None:
    import time

    with TokenClient(unresponsive) as down, requests.Session() as s:
        s.auth = TokenvendAuth(down, "demo", timeout=0.5)
        start = time.monotonic()
        with pytest.raises(requests.Timeout):
            s.get(upstream.url, timeout=10)
        assert time.monotonic() - start < 1.0


def test_httpx_sync_client_refuses_an_async_token_client(tokenvend_target, upstream) -> None:
    async def make() -> AsyncTokenClient:
        return AsyncTokenClient(tokenvend_target)

    aclient = asyncio.run(make())
    with httpx.Client(auth=TokenvendHttpxAuth(aclient, "demo")) as c:
        with pytest.raises(TypeError, match="TokenClient"):
            c.get(upstream.url)
