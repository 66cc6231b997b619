"""The conformance scenarios every tokenvend client runs (client/README.md), against the
real server binary. Each test's name holds the scenario id."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import grpc.aio
import httpx
import pytest
import requests
from conftest import AsyncCountingInterceptor, CountingInterceptor

from tokenvend_client import (
    AsyncTokenClient,
    TokenClient,
    TokenvendAdapter,
    TokenvendAuth,
    TokenvendError,
    TokenvendHttpxAuth,
)

PROFILE = "demo"


def counted_client(target: str, **kwargs) -> tuple[TokenClient, CountingInterceptor]:
    rpcs = CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(target), rpcs)
    return TokenClient(channel=channel, **kwargs), rpcs


def counted_async_client(target: str, **kwargs) -> tuple[AsyncTokenClient, AsyncCountingInterceptor]:
    rpcs = AsyncCountingInterceptor()
    return AsyncTokenClient(target, interceptors=[rpcs], **kwargs), rpcs


def in_threads(n: int, fn) -> list:
    """Runs ``fn()`` in ``n`` threads released at once; returns results (or exceptions)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except BaseException as err:  # handed to the test to assert on
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


# The HTTP adapters, each sending one GET through a TokenClient (or an AsyncTokenClient for
# "httpx-aio") and returning the status code.
ADAPTERS = ["requests-adapter", "requests-auth", "httpx", "httpx-async-thread", "httpx-aio"]


def send(kind: str, client, url: str, timeout: float = 10) -> int:
    if kind == "requests-adapter":
        with requests.Session() as s:
            s.mount(url.rsplit("/", 1)[0] + "/", TokenvendAdapter(client, PROFILE))
            return s.get(url, timeout=timeout).status_code
    if kind == "requests-auth":
        with requests.Session() as s:
            s.auth = TokenvendAuth(client, PROFILE)
            return s.get(url, timeout=timeout).status_code
    if kind == "httpx":
        with httpx.Client(auth=TokenvendHttpxAuth(client, PROFILE), timeout=timeout) as c:
            return c.get(url).status_code
    raise AssertionError(kind)


async def asend(client, url: str, timeout: float = 10) -> int:
    async with httpx.AsyncClient(auth=TokenvendHttpxAuth(client, PROFILE), timeout=timeout) as c:
        return (await c.get(url)).status_code


# -- 1 ------------------------------------------------------------------------------------


def test_conformance_cache_hit_no_rpc(tokenvend_target: str) -> None:
    client, rpcs = counted_client(tokenvend_target)
    with client:
        first = client.get_token(PROFILE)
        for _ in range(20):
            assert client.get_token(PROFILE) is first
    assert rpcs.count() == 1


def test_conformance_cache_hit_no_rpc_asyncio(tokenvend_target: str) -> None:
    async def go() -> None:
        client, rpcs = counted_async_client(tokenvend_target)
        async with client:
            first = await client.get_token(PROFILE)
            for _ in range(20):
                assert await client.get_token(PROFILE) is first
        assert rpcs.count() == 1

    asyncio.run(go())


# -- 2 ------------------------------------------------------------------------------------


def test_conformance_single_flight(tokenvend_target: str) -> None:
    client, rpcs = counted_client(tokenvend_target)
    with client:
        results = in_threads(25, lambda: client.get_token(PROFILE))
    assert rpcs.count() == 1
    assert all(r is results[0] for r in results), results


def test_conformance_single_flight_asyncio(tokenvend_target: str) -> None:
    async def go() -> None:
        client, rpcs = counted_async_client(tokenvend_target)
        async with client:
            results = await asyncio.gather(*(client.get_token(PROFILE) for _ in range(25)))
        assert rpcs.count() == 1
        assert all(r is results[0] for r in results)

    asyncio.run(go())


# -- 3 ------------------------------------------------------------------------------------


def test_conformance_reject_coalesced(tokenvend_target: str) -> None:
    client, rpcs = counted_client(tokenvend_target)
    with client:
        old = client.get_token(PROFILE)
        results = in_threads(60, lambda: client.reject(PROFILE, old))
        assert rpcs.count() - 1 <= 2
        assert all(not isinstance(r, BaseException) for r in results), results
        assert {r.access_token for r in results} == {results[0].access_token}
        assert results[0].access_token != old.access_token
        # A late report of the old token makes no RPC at all.
        before = rpcs.count()
        assert client.reject(PROFILE, old) is results[0]
        assert rpcs.count() == before


def test_conformance_reject_coalesced_asyncio(tokenvend_target: str) -> None:
    async def go() -> None:
        client, rpcs = counted_async_client(tokenvend_target)
        async with client:
            old = await client.get_token(PROFILE)
            results = await asyncio.gather(*(client.reject(PROFILE, old) for _ in range(60)))
            assert rpcs.count() - 1 <= 2
            assert {r.access_token for r in results} == {results[0].access_token}
            assert results[0].access_token != old.access_token
            before = rpcs.count()
            assert (await client.reject(PROFILE, old)) is results[0]
            assert rpcs.count() == before

    asyncio.run(go())


# -- 4 ------------------------------------------------------------------------------------


def _send_any(kind: str, target: str, url: str) -> tuple[int, str]:
    """Sends one GET with adapter ``kind`` through a fresh client; returns the status and
    the token tokenvend hands out afterwards."""
    if kind in ("httpx-aio", "httpx-async-thread"):

        async def go() -> tuple[int, str]:
            if kind == "httpx-aio":
                async with AsyncTokenClient(target) as client:
                    status = await asend(client, url)
                    return status, (await client.get_token(PROFILE)).access_token
            with TokenClient(target) as client:
                status = await asend(client, url)
                return status, client.get_token(PROFILE).access_token

        return asyncio.run(go())
    with TokenClient(target) as client:
        return send(kind, client, url), client.get_token(PROFILE).access_token


@pytest.mark.parametrize("kind", ADAPTERS)
def test_conformance_http_401_retried_once(kind: str, tokenvend_target: str, upstream) -> None:
    upstream.fail_first = 1

    status, current = _send_any(kind, tokenvend_target, upstream.url)

    assert status == 200
    auths = [r["authorization"] for r in upstream.seen]
    assert len(auths) == 2
    assert auths[0] != auths[1]
    assert auths[1] == "Bearer " + current


# -- 5 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["requests-adapter", "requests-auth", "httpx"])
def test_conformance_always_401_bounded(kind: str, tokenvend_target: str, upstream) -> None:
    upstream.fail_first = None
    client, rpcs = counted_client(tokenvend_target)
    with client:
        # One after another: each call is retried once, and costs at most two RPCs.
        for _ in range(3):
            assert send(kind, client, upstream.url) == 401
        assert len(upstream.seen) == 6
        assert rpcs.count() <= 6
        # At once: still one retry per call, and the rejects of one token coalesce.
        upstream.seen.clear()
        before = rpcs.count()
        results = in_threads(12, lambda: send(kind, client, upstream.url))
        assert results == [401] * 12
        assert len(upstream.seen) == 24
        assert rpcs.count() - before <= 24


def test_conformance_always_401_bounded_asyncio(tokenvend_target: str, upstream) -> None:
    upstream.fail_first = None

    async def go() -> None:
        client, rpcs = counted_async_client(tokenvend_target)
        async with client:
            statuses = await asyncio.gather(*(asend(client, upstream.url) for _ in range(12)))
            assert statuses == [401] * 12
            assert len(upstream.seen) == 24
            # Twelve calls sent one token, reported it together, and got one replacement.
            assert rpcs.count() <= 3

    asyncio.run(go())


# -- 6 ------------------------------------------------------------------------------------


def _fails_fast(call, errors: tuple[type, ...]) -> BaseException:
    start = time.monotonic()
    with pytest.raises(errors) as info:
        call()
    elapsed = time.monotonic() - start
    assert elapsed < 1.5, f"took {elapsed:.2f} s with a 1 s timeout"
    err = info.value
    assert isinstance(err, TokenvendError)
    assert err.retryable
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    return err


def test_conformance_deadline_bounds_fetch(unresponsive: str, upstream) -> None:
    with TokenClient(unresponsive) as client:
        with requests.Session() as s:
            s.mount(upstream.url, TokenvendAdapter(client, PROFILE))
            err = _fails_fast(lambda: s.get(upstream.url, timeout=1), (requests.Timeout,))
            assert isinstance(err, requests.RequestException)
            # A (connect, read) pair: the connect part bounds the fetch.
            _fails_fast(lambda: s.get(upstream.url, timeout=(1, 30)), (requests.Timeout,))
    assert upstream.seen == []


def test_conformance_deadline_bounds_fetch_httpx(unresponsive: str, upstream) -> None:
    with TokenClient(unresponsive) as client:
        with httpx.Client(auth=TokenvendHttpxAuth(client, PROFILE), timeout=1) as c:
            err = _fails_fast(lambda: c.get(upstream.url), (httpx.TimeoutException,))
            assert isinstance(err, httpx.TransportError)
            assert err.request.url == upstream.url
    assert upstream.seen == []


def test_conformance_deadline_bounds_fetch_httpx_asyncio(unresponsive: str, upstream) -> None:
    async def go() -> None:
        async with AsyncTokenClient(unresponsive) as client:
            auth = TokenvendHttpxAuth(client, PROFILE)
            async with httpx.AsyncClient(auth=auth, timeout=1) as c:
                start = time.monotonic()
                with pytest.raises(httpx.TransportError) as info:
                    await c.get(upstream.url)
                assert time.monotonic() - start < 1.5
                assert isinstance(info.value, TokenvendError)
                assert info.value.retryable

    asyncio.run(go())
    assert upstream.seen == []


def test_conformance_deadline_bounds_fetch_waiters_too(unresponsive: str) -> None:
    # A caller who joins a fetch already waiting on tokenvend is bounded by its own
    # timeout, not by the first caller's.
    with TokenClient(unresponsive) as client:
        outcome: list = []

        def slow_caller() -> None:
            try:
                client.get_token(PROFILE, timeout=3)
            except TokenvendError as err:
                outcome.append(err.code())

        first = threading.Thread(target=slow_caller)
        first.start()
        time.sleep(0.2)
        _fails_fast(lambda: client.get_token(PROFILE, timeout=1), (TokenvendError,))
        first.join()
        assert outcome == [grpc.StatusCode.DEADLINE_EXCEEDED]


def test_conformance_deadline_bounds_fetch_waiters_too_asyncio(unresponsive: str) -> None:
    async def go() -> None:
        async with AsyncTokenClient(unresponsive) as client:
            slow = asyncio.ensure_future(client.get_token(PROFILE, timeout=3))
            await asyncio.sleep(0.2)
            start = time.monotonic()
            with pytest.raises(TokenvendError) as info:
                await client.get_token(PROFILE, timeout=1)
            assert time.monotonic() - start < 1.5
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and info.value.retryable
            with pytest.raises(TokenvendError):
                await slow

    asyncio.run(go())


# -- 7 ------------------------------------------------------------------------------------


def test_conformance_error_categories(tokenvend_target: str, closed_port: str, upstream) -> None:
    with TokenClient(tokenvend_target) as client:
        with pytest.raises(TokenvendError) as info:
            client.get_token("no-such-profile")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert not info.value.retryable
        assert "no-such-profile" in str(info.value)

        with requests.Session() as s:
            s.mount(upstream.url, TokenvendAdapter(client, "no-such-profile"))
            with pytest.raises(requests.RequestException) as rinfo:
                s.get(upstream.url, timeout=5)
        assert not isinstance(rinfo.value, requests.ConnectionError)
        assert rinfo.value.code() == grpc.StatusCode.NOT_FOUND and not rinfo.value.retryable

        with httpx.Client(auth=TokenvendHttpxAuth(client, "no-such-profile")) as c:
            with pytest.raises(httpx.TransportError) as hinfo:
                c.get(upstream.url)
        assert hinfo.value.code() == grpc.StatusCode.NOT_FOUND and not hinfo.value.retryable

    with TokenClient(closed_port) as down:
        with pytest.raises(TokenvendError) as info:
            down.get_token(PROFILE, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.retryable

        with requests.Session() as s:
            s.mount(upstream.url, TokenvendAdapter(down, PROFILE))
            with pytest.raises(requests.ConnectionError) as rinfo:
                s.get(upstream.url, timeout=5)
        assert rinfo.value.retryable

        with httpx.Client(auth=TokenvendHttpxAuth(down, PROFILE), timeout=5) as c:
            with pytest.raises(httpx.ConnectError) as hinfo:
                c.get(upstream.url)
        assert hinfo.value.code() == grpc.StatusCode.UNAVAILABLE and hinfo.value.retryable
    assert upstream.seen == []


def test_conformance_error_categories_asyncio(tokenvend_target: str, closed_port: str) -> None:
    async def go() -> None:
        async with AsyncTokenClient(tokenvend_target) as client:
            with pytest.raises(TokenvendError) as info:
                await client.get_token("no-such-profile")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND and not info.value.retryable
        async with AsyncTokenClient(closed_port) as down:
            with pytest.raises(TokenvendError) as info:
                await down.get_token(PROFILE, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and info.value.retryable

    asyncio.run(go())


# -- 8 ------------------------------------------------------------------------------------

LIFETIME = 10  # seconds: long enough to see the margin, short enough for CI


def test_conformance_refresh_margin_fraction(short_lived, idp) -> None:
    server = short_lived({"short": LIFETIME})
    client, rpcs = counted_client(server.target)
    calls = 0
    with client:
        first = client.get_token("short")
        received = time.monotonic()
        lifetime = first.remaining()
        assert LIFETIME - 1 < lifetime <= LIFETIME
        # A tight loop across the margin (at 90 %) and past the first token's expiry.
        while time.monotonic() - received < lifetime + 1:
            token = client.get_token("short")
            assert token.remaining() > 0
            calls += 1
            time.sleep(0.005)

    times = rpcs.get_token_times()
    # The second RPC comes at about 90 % of the lifetime, not before.
    assert len(times) >= 2
    assert times[1] - received >= 0.85 * lifetime, [t - received for t in times]
    # Across the margin: the RPC finds tokenvend's replacement (refreshed at about 80 %),
    # so a thousand calls make a handful of RPCs, not one each.
    assert calls > 300
    assert len(times) <= 3, [t - received for t in times]
    # The client never sends a min_ttl of its own.
    assert all(not r.HasField("min_ttl") for r in rpcs.get_token_requests())
    # And tokenvend asked the provider once per token, not once per RPC.
    assert idp.count(LIFETIME) <= 3


def test_refresh_margin_is_capped_by_max_refresh_margin(short_lived) -> None:
    server = short_lived({"short": 4})
    client, rpcs = counted_client(server.target, max_refresh_margin=0.1)
    with client:
        first = client.get_token("short")
        # 10 % would be 0.4 s; the cap makes the copy good until 0.1 s before expiry.
        time.sleep(max(0.0, first.remaining() - 0.25))
        assert client.get_token("short") is first
    assert rpcs.count() == 1


def test_an_answer_inside_its_margin_is_served_and_asked_again_at_most_each_second(short_lived, idp) -> None:
    # The provider fails after the first token: tokenvend cannot refresh and hands back
    # its old copy, which is already inside the client's margin.
    server = short_lived({"short": 4})
    client, rpcs = counted_client(server.target)
    with client:
        first = client.get_token("short")
        idp.failing = True
        time.sleep(first.remaining() - 0.35)  # inside the 0.4 s margin
        served = [client.get_token("short") for _ in range(200)]
    assert all(t.access_token == first.access_token for t in served)
    assert rpcs.count() <= 2


# -- 9 ------------------------------------------------------------------------------------


def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_conformance_watch_live_copy(tokenvend_target: str) -> None:
    client, rpcs = counted_client(tokenvend_target)
    with client, TokenClient(tokenvend_target) as other:
        handle = client.watch(PROFILE)
        assert client.watch(PROFILE) is handle
        assert handle.wait_ready(10), handle.last_error
        first = client.get_token(PROFILE)
        for _ in range(50):
            assert client.get_token(PROFILE) is first
        # Another service reports the token: tokenvend replaces it and the stream brings
        # the replacement here.
        replacement = other.reject(PROFILE, first)
        assert _until(lambda: client.get_token(PROFILE).access_token == replacement.access_token)
        assert rpcs.count() == 0
        handle.stop()
        assert handle.stopped


def test_conformance_watch_live_copy_asyncio(tokenvend_target: str) -> None:
    async def go() -> None:
        client, rpcs = counted_async_client(tokenvend_target)
        async with client, AsyncTokenClient(tokenvend_target) as other:
            handle = client.watch(PROFILE)
            assert await handle.wait_ready(10), handle.last_error
            first = await client.get_token(PROFILE)
            replacement = await other.reject(PROFILE, first)
            for _ in range(500):
                if (await client.get_token(PROFILE)).access_token == replacement.access_token:
                    break
                await asyncio.sleep(0.02)
            assert (await client.get_token(PROFILE)).access_token == replacement.access_token
            assert rpcs.count() == 0

    asyncio.run(go())


def test_watch_reconnects_after_tokenvend_restarts(short_lived) -> None:
    server = short_lived({"short": 60})
    client, rpcs = counted_client(server.target)
    with client:
        handle = client.watch("short")
        assert handle.wait_ready(10)
        first = client.get_token("short")
        port = server.target
        server.stop()
        assert _until(lambda: handle.last_error is not None)
        # A new tokenvend on the same address: its first token comes down the new stream.
        restarted = short_lived({"short": 60}, target=port)
        assert restarted.target == port
        assert _until(lambda: client.get_token("short").access_token != first.access_token, timeout=15)
        assert rpcs.count() == 0


def test_watch_reconnects_after_tokenvend_restarts_asyncio(short_lived) -> None:
    server = short_lived({"short": 60})

    async def go() -> None:
        client, rpcs = counted_async_client(server.target)
        async with client:
            handle = client.watch("short")
            assert await handle.wait_ready(10)
            first = await client.get_token("short")
            await asyncio.to_thread(server.stop)
            for _ in range(500):
                if handle.last_error is not None:
                    break
                await asyncio.sleep(0.02)
            assert handle.last_error is not None
            await asyncio.to_thread(short_lived, {"short": 60}, server.target)
            for _ in range(750):
                if (await client.get_token("short")).access_token != first.access_token:
                    break
                await asyncio.sleep(0.02)
            assert (await client.get_token("short")).access_token != first.access_token
            assert rpcs.count() == 0

    asyncio.run(go())


# -- 10 -----------------------------------------------------------------------------------


def test_conformance_stale_copy_while_unreachable(short_lived) -> None:
    server = short_lived({"short": 4})
    with TokenClient(server.target) as client:
        first = client.get_token("short")
        server.stop()
        # Inside its margin (0.4 s) but not expired: served rather than failing.
        time.sleep(max(0.0, first.remaining() - 0.3))
        assert client.get_token("short") is first
        # Expired: nothing left to serve.
        time.sleep(max(0.0, first.remaining() + 0.05))
        with pytest.raises(TokenvendError) as info:
            client.get_token("short")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_conformance_stale_copy_while_unreachable_asyncio(short_lived) -> None:
    server = short_lived({"short": 4})

    async def go() -> None:
        async with AsyncTokenClient(server.target) as client:
            first = await client.get_token("short")
            server.stop()
            await asyncio.sleep(max(0.0, first.remaining() - 0.3))
            assert (await client.get_token("short")) is first

    asyncio.run(go())


# -- 11 -----------------------------------------------------------------------------------


def test_conformance_service_account_token(tokenvend_target: str, tmp_path) -> None:
    sa = tmp_path / "token"
    sa.write_text("first-identity\n")
    client, rpcs = counted_client(tokenvend_target, service_account_token_file=sa)
    with client:
        client.get_token(PROFILE)
        # The kubelet swaps the file atomically; mimic that with a rename.
        rotated = tmp_path / "token.new"
        rotated.write_text("second-identity")
        rotated.replace(sa)
        client.reject(PROFILE, client.get_token(PROFILE))

    sent = [dict(md).get("authorization") for _, md in rpcs.calls]
    assert sent == ["Bearer first-identity", "Bearer second-identity"]


def test_conformance_service_account_token_asyncio(tokenvend_target: str, tmp_path) -> None:
    sa = tmp_path / "token"
    sa.write_text("async-identity\n")

    async def go() -> list:
        client, rpcs = counted_async_client(tokenvend_target, service_account_token_file=sa)
        async with client:
            await client.get_token(PROFILE)
        return [dict(md).get("authorization") for _, md in rpcs.calls]

    assert asyncio.run(go()) == ["Bearer async-identity"]
