from __future__ import annotations

import datetime as dt
import re
import time

import grpc
import pytest

from tokenvend_client import Token, TokenClient, TokenvendError

JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


def test_get_token_returns_a_bearer_jwt_with_its_headers(client: TokenClient) -> None:
    token = client.get_token("demo")

    assert JWT.match(token.access_token)
    assert token.token_type == "Bearer"
    assert token.profile == "demo"
    assert token.headers["authorization"] == "Bearer " + token.access_token
    ahead = (token.expires_at - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 240 < ahead <= 301, ahead


def test_min_ttl_beyond_the_cached_lifetime_asks_the_server(counted) -> None:
    client, rpcs = counted
    first = client.get_token("demo")
    time.sleep(1.1)

    want = first.remaining() + 0.5  # more than the local copy (and tokenvend's) has left
    again = client.get_token("demo", min_ttl=want)
    assert rpcs.count() == 2
    assert again.remaining() >= want - 0.5


def test_min_ttl_longer_than_any_token_is_out_of_range(client: TokenClient) -> None:
    with pytest.raises(TokenvendError) as info:
        client.get_token("demo", min_ttl=dt.timedelta(hours=2))
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_unknown_profile_raises_not_found(client: TokenClient) -> None:
    with pytest.raises(TokenvendError) as info:
        client.get_token("no-such-profile")

    err = info.value
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert not err.retryable
    assert "no-such-profile" in str(err)


def test_deprecated_reject_spellings_still_work_and_warn(counted, tokenvend_target: str) -> None:
    client, rpcs = counted
    old = client.get_token("demo")

    with pytest.warns(DeprecationWarning, match="reject"):
        new = client.get_token("demo", rejected_token=old.access_token)
    assert new.access_token != old.access_token
    assert rpcs.count() == 2

    # Reporting the same old token again (another thread's late 401) changes nothing.
    with pytest.warns(DeprecationWarning, match="reject"):
        assert client.invalidate("demo", old) is new
    assert rpcs.count() == 2
    with TokenClient(tokenvend_target) as fresh:
        assert fresh.get_token("demo").access_token == new.access_token


def test_no_token_in_repr_or_str(client: TokenClient) -> None:
    token = client.get_token("demo")
    for text in (repr(token), str(token), repr(client), repr([token])):
        assert token.access_token not in text
    assert "redacted" in repr(token)


def test_token_from_proto_without_headers_gets_an_authorization_header() -> None:
    from tokenvend_client._pb.tokenvend.v1 import tokenvend_pb2

    msg = tokenvend_pb2.Token(access_token="abc", token_type="Bearer", profile="p")
    msg.expires_at.FromSeconds(int(time.time()) + 100)
    token = Token.from_proto(msg)
    assert token.headers == {"authorization": "Bearer abc"}
    with pytest.raises(TypeError):
        token.headers["x"] = "y"  # type: ignore[index]


def test_importing_the_package_imports_neither_http_library() -> None:
    import subprocess
    import sys

    code = "import sys, tokenvend_client; print('requests' in sys.modules, 'httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["False", "False"]


def test_the_clients_own_timeout_bounds_each_rpc_when_the_caller_gives_none(unresponsive) -> None:
    with TokenClient(unresponsive, timeout=0.5) as client:
        start = time.monotonic()
        with pytest.raises(TokenvendError) as info:
            client.get_token("demo")
        assert time.monotonic() - start < 1.0
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_rejected_token_never_appears_in_the_error(closed_port) -> None:
    secret = "eyJ-not-to-be-logged.payload.signature"
    with TokenClient(closed_port) as client:
        with pytest.raises(TokenvendError) as info:
            client.reject("demo", secret)
    err = info.value
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    for text in (str(err), repr(err), err.details()):
        assert secret not in text
