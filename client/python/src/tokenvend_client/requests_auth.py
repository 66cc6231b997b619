"""``requests`` integration: ``session.auth = TokenvendAuth(client, "profile")``."""

from __future__ import annotations

from typing import Any

import requests
from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar

from tokenvend_client._client import Seconds, TokenClient

# Attributes stashed on the PreparedRequest: which token it carries, where a seekable body
# started, and whether it is already the retry.
_TOKEN_ATTR = "_tokenvend_token"
_BODY_POS_ATTR = "_tokenvend_body_pos"
_RETRY_ATTR = "_tokenvend_retried"


class TokenvendAuth(AuthBase):
    """Puts a tokenvend profile's headers on each request; on a 401 reports the token as
    rejected, takes the new one and re-sends the request once.

    The retry only happens when the body can be sent again: none, ``bytes``/``str``, or a
    seekable file. A second 401, or a 401 for a one-shot body (a generator), is returned as
    is. Works with a ``requests.Session`` or a single ``requests.get(..., auth=...)``.
    """

    def __init__(self, client: TokenClient, profile: str, *, min_ttl: Seconds | None = None):
        self._client = client
        self._profile = profile
        self._min_ttl = min_ttl

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self._client.get_token(self._profile, min_ttl=self._min_ttl)
        _apply(r, token.headers)
        setattr(r, _TOKEN_ATTR, token.access_token)
        if r.body is not None and hasattr(r.body, "seek") and hasattr(r.body, "tell"):
            try:
                setattr(r, _BODY_POS_ATTR, r.body.tell())
            except OSError:
                pass  # e.g. a pipe: not replayable
        r.register_hook("response", self._handle_401)
        return r

    def _handle_401(self, resp: requests.Response, **send_kwargs: Any) -> requests.Response:
        req = resp.request
        if resp.status_code != 401 or getattr(req, _RETRY_ATTR, False):
            return resp
        rejected = getattr(req, _TOKEN_ATTR, None)
        if rejected is None or not _rewind(req):
            return resp

        token = self._client.get_token(self._profile, min_ttl=self._min_ttl, rejected_token=rejected)

        # Drain and release the 401 so its connection can be reused for the retry.
        resp.content
        resp.close()
        retry = req.copy()
        extract_cookies_to_jar(retry._cookies, req, resp.raw)
        retry.prepare_cookies(retry._cookies)
        _apply(retry, token.headers)
        setattr(retry, _TOKEN_ATTR, token.access_token)
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


def _rewind(req: requests.PreparedRequest) -> bool:
    body = req.body
    if body is None or isinstance(body, (bytes, str)):
        return True
    pos = getattr(req, _BODY_POS_ATTR, None)
    if pos is None:
        return False  # a generator or other one-shot iterable
    try:
        body.seek(pos)
    except (OSError, ValueError):
        return False
    return True
