from __future__ import annotations

import datetime as dt
import re
import threading
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


def test_second_call_is_served_from_the_local_cache(counted) -> None:
    client, rpcs = counted

    first = client.get_token("demo")
    second = client.get_token("demo")

    assert rpcs.count() == 1
    assert second is first


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


def test_rejected_token_is_replaced_once(counted, tokenvend_target: str) -> None:
    client, rpcs = counted
    old = client.get_token("demo")

    new = client.get_token("demo", rejected_token=old.access_token)
    assert new.access_token != old.access_token
    assert rpcs.count() == 2

    # Reporting the same old token again (another thread's late 401) changes nothing.
    assert client.reject("demo", old) is new
    assert rpcs.count() == 2
    with TokenClient(tokenvend_target) as fresh:
        assert fresh.get_token("demo").access_token == new.access_token


def test_concurrent_callers_share_one_rpc(counted) -> None:
    client, rpcs = counted
    barrier = threading.Barrier(8)
    results: list = []

    def worker() -> None:
        barrier.wait()
        results.append(client.get_token("demo"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert rpcs.count() == 1
    assert len({id(t) for t in results}) == 1


def test_no_token_in_repr_or_str(client: TokenClient) -> None:
    token = client.get_token("demo")
    for text in (repr(token), str(token), repr(client), repr([token])):
        assert token.access_token not in text
    assert "redacted" in repr(token)


def test_service_account_token_is_sent_and_reread_on_rotation(tokenvend_target, tmp_path) -> None:
    from conftest import CountingInterceptor

    sa = tmp_path / "token"
    sa.write_text("first-identity\n")
    rpcs = CountingInterceptor()
    channel = grpc.intercept_channel(grpc.insecure_channel(tokenvend_target), rpcs)
    client = TokenClient(channel=channel, service_account_token_file=sa)
    try:
        assert any(p.name == "demo" for p in client.list_profiles())
        # The kubelet swaps the file atomically; mimic that with a rename.
        rotated = tmp_path / "token.new"
        rotated.write_text("second-identity")
        rotated.replace(sa)
        client.get_token("demo")
    finally:
        channel.close()

    sent = [dict(md).get("authorization") for _, md in rpcs.calls]
    assert sent == ["Bearer first-identity", "Bearer second-identity"]


def test_token_from_proto_without_headers_gets_an_authorization_header() -> None:
    from tokenvend_client._pb.tokenvend.v1 import tokenvend_pb2

    msg = tokenvend_pb2.Token(access_token="abc", token_type="Bearer", profile="p")
    msg.expires_at.FromSeconds(int(time.time()) + 100)
    token = Token.from_proto(msg)
    assert token.headers == {"authorization": "Bearer abc"}
    with pytest.raises(TypeError):
        token.headers["x"] = "y"  # type: ignore[index]
