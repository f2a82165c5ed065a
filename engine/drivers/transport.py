"""How the network's failures become input records (shared by the sync and async drivers).

The openai client raises `APIStatusError` (with the response, already read) for a non-2xx status,
`APITimeoutError` / `APIConnectionError` when the request could not be sent or answered, and the
HTTP library's own transport errors (remote protocol error, read timeout, read error, ...) from
the body iterator once streaming has begun. Each becomes a `HttpError` or `TransportFault`; only
the exception's class name is kept as detail (never its text, which may quote a URL or header).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import openai
import orjson

from machines.records import HttpError, IdleTimeout, Interrupt, TransportFault

__all__ = ["Watchdog", "fault_of", "http_error_of", "is_transport_error"]

_TIMEOUT_NAMES = {"TimeoutException", "ReadTimeout", "WriteTimeout", "PoolTimeout", "TimeoutError"}
_CONNECT_NAMES = {"ConnectError", "ConnectTimeout", "ConnectionRefusedError"}
_TRANSPORT_NAMES = {
    "TransportError",
    "NetworkError",
    "ProtocolError",
    "RemoteProtocolError",
    "ReadError",
    "StreamError",
    "ConnectionError",
    "OSError",
    "IncompleteRead",
    "ClientPayloadError",
}


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def is_transport_error(error: BaseException) -> bool:
    names = _names(error)
    return bool(names & (_TIMEOUT_NAMES | _CONNECT_NAMES | _TRANSPORT_NAMES)) or isinstance(
        error, openai.APIConnectionError
    )


def fault_of(error: BaseException, *, opening: bool) -> TransportFault:
    """The fault an exception from opening the request or reading its body stands for."""
    names = _names(error)
    detail = type(error).__name__
    if isinstance(error, openai.APITimeoutError) or names & _TIMEOUT_NAMES and not names & _CONNECT_NAMES:
        return TransportFault("read_timeout", detail)
    if opening and (isinstance(error, openai.APIConnectionError) or names & _CONNECT_NAMES):
        return TransportFault("connect_error", detail)
    return TransportFault("drop", detail)


def http_error_of(error: openai.APIStatusError) -> HttpError:
    """The status and the body exactly as the server sent it (parsed when it is JSON)."""
    body: Any
    try:
        content = error.response.content
    except Exception:  # the body could not be read: keep what the SDK parsed
        content = None
    if content:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = content.decode("utf-8", "replace")
    else:
        body = error.body
    return HttpError(error.status_code, body)


class Watchdog:
    """Decides, for a driver waiting on a body, when silence or the caller ends the attempt.

    The driver waits at most `wait_s()` for the next item; after a silent wait it asks
    `after_silence()`, before using an item `before_item()`: either returns the input record that
    ends the attempt (an `Interrupt` or an `IdleTimeout`) or None to go on."""

    __slots__ = ("_now", "_interrupted", "_idle_s", "_last_byte", "_poll_s")

    def __init__(
        self,
        now: Callable[[], float],
        interrupted: Callable[[], bool],
        idle_timeout_s: float | None,
        poll_s: float,
    ) -> None:
        self._now = now
        self._interrupted = interrupted
        self._idle_s = idle_timeout_s
        self._poll_s = poll_s
        self._last_byte = now()

    def wait_s(self) -> float:
        if self._idle_s is None:
            return self._poll_s
        return max(0.0, min(self._poll_s, self._idle_s - (self._now() - self._last_byte)))

    def after_silence(self) -> Interrupt | IdleTimeout | None:
        if self._interrupted():
            return Interrupt()
        if self._idle_s is not None and self._now() - self._last_byte >= self._idle_s:
            return IdleTimeout(self._idle_s)
        return None

    def before_item(self, is_bytes: bool) -> Interrupt | None:
        if self._interrupted():
            return Interrupt()
        if is_bytes:
            self._last_byte = self._now()
        return None


def turn_clock() -> Callable[[], float]:
    """Monotonic seconds since the turn began, rounded to microseconds (the trace's `t`)."""
    start = time.monotonic()

    def now() -> float:
        return round(time.monotonic() - start, 6)

    return now


#: What a reader hands the driver: a chunk, the clean end, the exception from reading the body
#: or from opening the request.
CHUNK, END, ERROR, OPEN_ERROR = 0, 1, 2, 3


def feed_opening_error(feed: Any, error: Exception, now: Callable[[], float]) -> None:
    """Record why the request could not be opened (re-raises what is not the network's doing)."""
    if isinstance(error, openai.APIStatusError):
        feed.fail(http_error_of(error), now())
    elif is_transport_error(error):
        feed.fail(fault_of(error, opening=True), now())
    else:
        raise error


def feed_body_item(
    feed: Any, watchdog: Watchdog, kind: int, value: Any, now: Callable[[], float]
) -> bool:
    """Feed one item from the body reader to the attempt; True once the attempt is over."""
    stop = watchdog.before_item(kind == CHUNK)
    t = now()
    if stop is not None:
        feed.fail(stop, t)
        return True
    if kind == CHUNK:
        return feed.chunk(value, t)
    if kind == OPEN_ERROR:
        feed_opening_error(feed, value, lambda: t)
        return True
    if kind == END:
        feed.end(t)
        return True
    if not is_transport_error(value):
        raise value
    feed.fail(fault_of(value, opening=False), t)
    return True


def feed_silence(feed: Any, watchdog: Watchdog, now: Callable[[], float]) -> bool:
    """After a silent wait: True (and the input recorded) if silence or the caller ends it."""
    stop = watchdog.after_silence()
    if stop is None:
        return False
    feed.fail(stop, now())
    return True
