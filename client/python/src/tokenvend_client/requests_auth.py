"""``requests`` integration.

Two ways to put tokens on a session's requests:

- ``TokenvendAdapter``, a transport adapter mounted on the URL prefix of the API. It sees
  the ``timeout=`` of each call, so that timeout also bounds the token fetch, and it only
  ever sends the token to URLs under that prefix. Prefer it.
- ``TokenvendAuth``, a ``requests`` auth object. requests calls it before the timeout is
  known, so the first token fetch is bounded by the ``TokenClient``'s own timeout (10 s
  by default) or the ``timeout`` given to ``TokenvendAuth``.

Both raise ``TokenvendRequestsError`` (a ``requests.RequestException`` and a
``TokenvendError``) when tokenvend cannot supply a token.
"""

from __future__ import annotations

import numbers
from typing import Any

import grpc
import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar

from tokenvend_client._client import Seconds, TokenClient
from tokenvend_client._token import TokenvendError

__all__ = [
    "TokenvendAdapter",
    "TokenvendAuth",
    "TokenvendConnectionError",
    "TokenvendRequestsError",
    "TokenvendTimeout",
]

# Attributes stashed on the PreparedRequest: which token it carries, where a seekable body
# started, and whether it is already the retry.
_TOKEN_ATTR = "_tokenvend_token"
_BODY_POS_ATTR = "_tokenvend_body_pos"
_RETRY_ATTR = "_tokenvend_retried"


class TokenvendRequestsError(TokenvendError, requests.RequestException):
    """tokenvend could not supply a token for a request. A ``requests.RequestException``,
    so existing handlers catch it, and a ``TokenvendError`` with ``code()`` and
    ``retryable``."""

    def __init__(self, code: grpc.StatusCode, details: str, profile: str | None = None, request: Any = None):
        super().__init__(code, details, profile)
        self.request = request


class TokenvendConnectionError(TokenvendRequestsError, requests.ConnectionError):
    """tokenvend unreachable (UNAVAILABLE)."""


class TokenvendTimeout(TokenvendRequestsError, requests.Timeout):
    """No token within the caller's timeout (DEADLINE_EXCEEDED)."""


def _requests_error(err: TokenvendError, request: Any) -> TokenvendRequestsError:
    code = err.code()
    cls = {
        grpc.StatusCode.UNAVAILABLE: TokenvendConnectionError,
        grpc.StatusCode.DEADLINE_EXCEEDED: TokenvendTimeout,
    }.get(code, TokenvendRequestsError)
    return cls(code, err.details(), err.profile, request)


def fetch_timeout(timeout: Any) -> float | None:
    """The part of a requests ``timeout`` that bounds the token fetch: the connect timeout
    (a fetch is part of setting the request up, before a byte goes to the API), else the
    read timeout. None: the client's default."""
    if timeout is None:
        return None
    if isinstance(timeout, tuple):
        connect, read = timeout
        chosen = connect if connect is not None else read
    elif isinstance(timeout, numbers.Real):
        chosen = timeout
    else:  # a urllib3 Timeout
        chosen = getattr(timeout, "connect_timeout", None)
        if not isinstance(chosen, numbers.Real):
            chosen = getattr(timeout, "read_timeout", None)
    return float(chosen) if isinstance(chosen, numbers.Real) and chosen > 0 else None


class TokenvendAdapter(HTTPAdapter):
    """A transport adapter that sends each request with a tokenvend profile's headers:

        session.mount("https://api.example.com/", TokenvendAdapter(client, "jakamo"))
        session.get("https://api.example.com/orders", timeout=5)

    The call's ``timeout`` (its connect part, for a ``(connect, read)`` pair) bounds the
    token fetch. Tokens go only to URLs under the mounted prefix: a redirect elsewhere is
    sent by another adapter, without them. On a 401 the token is reported as rejected and
    the request sent once more with the new one, when its body can be sent again (none,
    ``bytes``/``str``, a seekable file); the first 401 is then in ``response.history``.

    Extra keyword arguments go to ``HTTPAdapter`` (``max_retries``, pool sizes).
    """

    def __init__(self, client: TokenClient, profile: str, *, min_ttl: Seconds | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._client = client
        self._profile = profile
        self._min_ttl = min_ttl

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        timeout = fetch_timeout(kwargs.get("timeout"))
        try:
            token = self._client.get_token(self._profile, min_ttl=self._min_ttl, timeout=timeout)
        except TokenvendError as err:
            raise _requests_error(err, request) from None
        _apply(request, token.headers)
        body_pos = _body_position(request)
        resp = super().send(request, **kwargs)
        if resp.status_code != 401 or not _rewind(request, body_pos):
            return resp
        resp.content  # drain the 401 so that its connection can carry the retry
        resp.close()
        try:
            token = self._client._reject(self._profile, token, self._min_ttl, timeout)
        except TokenvendError as err:
            raise _requests_error(err, request) from None
        retry = request.copy()
        _apply(retry, token.headers)
        new_resp = super().send(retry, **kwargs)
        new_resp.history.insert(0, resp)
        return new_resp

    def __repr__(self) -> str:
        return f"TokenvendAdapter(profile={self._profile!r})"


class TokenvendAuth(AuthBase):
    """Puts a tokenvend profile's headers on each request; on a 401 reports the token as
    rejected, takes the new one and re-sends the request once.

    requests calls an auth object before it knows the call's timeout, so the first fetch
    is bounded by ``timeout`` (or the ``TokenClient``'s, 10 s by default), the one after
    a 401 by the call's timeout. Use :class:`TokenvendAdapter` when each call's timeout
    should bound the fetch.

    The retry only happens when the body can be sent again: none, ``bytes``/``str``, or a
    seekable file. A second 401, or a 401 for a one-shot body (a generator), is returned as
    is. Works with a ``requests.Session`` or a single ``requests.get(..., auth=...)``.
    """

    def __init__(
        self,
        client: TokenClient,
        profile: str,
        *,
        min_ttl: Seconds | None = None,
        timeout: Seconds | None = None,
    ):
        self._client = client
        self._profile = profile
        self._min_ttl = min_ttl
        self._timeout = timeout

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        try:
            token = self._client.get_token(self._profile, min_ttl=self._min_ttl, timeout=self._timeout)
        except TokenvendError as err:
            raise _requests_error(err, r) from None
        _apply(r, token.headers)
        setattr(r, _TOKEN_ATTR, token)
        pos = _body_position(r)
        if pos is not None:
            setattr(r, _BODY_POS_ATTR, pos)
        r.register_hook("response", self._handle_401)
        return r

    def _handle_401(self, resp: requests.Response, **send_kwargs: Any) -> requests.Response:
        req = resp.request
        if resp.status_code != 401 or getattr(req, _RETRY_ATTR, False):
            return resp
        rejected = getattr(req, _TOKEN_ATTR, None)
        if rejected is None or not _rewind(req, getattr(req, _BODY_POS_ATTR, None)):
            return resp

        # Drain and release the 401 so its connection can be reused for the retry.
        resp.content
        resp.close()
        timeout = fetch_timeout(send_kwargs.get("timeout"))
        try:
            token = self._client._reject(self._profile, rejected, self._min_ttl, timeout)
        except TokenvendError as err:
            raise _requests_error(err, req) from None
        retry = req.copy()
        extract_cookies_to_jar(retry._cookies, req, resp.raw)
        retry.prepare_cookies(retry._cookies)
        _apply(retry, token.headers)
        setattr(retry, _TOKEN_ATTR, token)
        setattr(retry, _RETRY_ATTR, True)

        new_resp = resp.connection.send(retry, **send_kwargs)
        new_resp.history.append(resp)
        new_resp.request = retry
        return new_resp

    def __repr__(self) -> str:
        return f"TokenvendAuth(profile={self._profile!r})"


def _apply(r: requests.PreparedRequest, headers: Any) -> None:
    for name, value in headers.items():
        r.headers[name] = value


def _body_position(r: requests.PreparedRequest) -> int | None:
    if r.body is not None and hasattr(r.body, "seek") and hasattr(r.body, "tell"):
        try:
            return r.body.tell()
        except OSError:
            pass  # e.g. a pipe: not replayable
    return None


def _rewind(req: requests.PreparedRequest, pos: int | None) -> bool:
    body = req.body
    if body is None or isinstance(body, (bytes, str)):
        return True
    if pos is None:
        return False  # a generator or other one-shot iterable
    try:
        body.seek(pos)
    except (OSError, ValueError):
        return False
    return True
