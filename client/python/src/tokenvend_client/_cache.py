"""The rules of the local copy, shared by the threaded and the asyncio client."""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
from typing import Union

from tokenvend_client._token import Token

Seconds = Union[float, int, _dt.timedelta]

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_REFRESH_MARGIN = 60.0
# tokenvend replaces a token at about 80 % of its lifetime, so a client that comes back
# at 90 % finds the replacement in tokenvend's cache.
MARGIN_FRACTION = 0.1
# When the answer is itself inside its margin (tokenvend could not refresh) or tokenvend
# could not be reached, the copy is served and the profile asked again at most this often.
ASK_INTERVAL = 1.0


def seconds(value: Seconds | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


def timeout_or_default(value: Seconds | None, default: float) -> float:
    if value is None:
        return default
    t = seconds(value)
    if t <= 0:
        raise ValueError("timeout must be positive")
    return t


class Entry:
    """A profile's local copy, its margin, and when tokenvend was last asked for it."""

    __slots__ = ("token", "margin", "asked_at")

    def __init__(self, token: Token, max_margin: float, asked_at: float, previous: Entry | None = None):
        self.token = token
        self.asked_at = asked_at
        if previous is not None and previous.token.access_token == token.access_token:
            # The same token again (tokenvend could not refresh it, or a watch reconnected):
            # it keeps the margin it got when first received, so that it is still seen as
            # inside it.
            self.margin = previous.margin
            return
        # The lifetime counts from when this client received the token, not from when the
        # provider issued it: a token taken from tokenvend's cache late in its life gets a
        # margin sized to what is left of it.
        lifetime = token.remaining()
        self.margin = max(0.0, min(MARGIN_FRACTION * lifetime, max_margin))


def lookup(entry: Entry | None, min_ttl: float, now: float) -> tuple[Token | None, bool]:
    """What a get does with the copy it has: ``(token, ask)``.

    ``token`` is a copy the caller may be given (still valid for ``min_ttl``), ``ask``
    whether tokenvend should be asked. ``(token, True)`` means: ask, but ``token`` may be
    served if tokenvend cannot answer.
    """
    if entry is None:
        return None, True
    left = entry.token.remaining()
    if left <= 0 or left < min_ttl:
        return None, True
    if left > entry.margin:
        return entry.token, False
    if now - entry.asked_at < ASK_INTERVAL:
        return entry.token, False
    return entry.token, True


class ServiceAccountToken:
    """The caller's own identity, read from a file such as a Kubernetes projected
    ServiceAccount token.

    The kubelet rotates that file in place (an atomic symlink swap), so the content is
    re-read as soon as the file's mtime/size/inode changes, and at least every
    ``max_age`` seconds in case a change went unseen (e.g. a coarse mtime).
    """

    def __init__(self, path: str | os.PathLike, max_age: float = 60.0):
        self._path = os.fspath(path)
        self._max_age = max_age
        self._lock = threading.Lock()
        self._value: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._read_at = 0.0

    def header(self) -> tuple[str, str]:
        with self._lock:
            st = os.stat(self._path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            now = time.monotonic()
            if self._value is None or stamp != self._stamp or now - self._read_at >= self._max_age:
                with open(self._path, encoding="utf-8") as f:
                    # A projected token is about 1 KiB; a bound keeps a wrong path (a
                    # device, a huge file) from being read whole into every call.
                    self._value = f.read(64 * 1024).strip()
                self._stamp = stamp
                self._read_at = now
            return ("authorization", f"Bearer {self._value}")

    def __repr__(self) -> str:
        return f"ServiceAccountToken(path={self._path!r})"


def backoff_delays(initial: float = 0.5, cap: float = 30.0):
    """Reconnect delays for a watch: doubling from ``initial`` up to ``cap``; the caller
    applies jitter and restarts the sequence after a stream delivered a token."""
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, cap)
