"""How the network's failures become input records (shared by every driver).

The openai client raises `APIStatusError` (with the response, already read) for a non-2xx status,
`APITimeoutError` / `APIConnectionError` when the request could not be sent or answered, and the
HTTP library's own transport errors (remote protocol error, read timeout, read error, ...) from
the body iterator once streaming has begun. Each becomes a `HttpError` or `TransportFault`; only
the exception's class name is kept as detail (never its text, which may quote a URL or header).
"""

from __future__ import annotations

import time
from typing import Any

import openai
import orjson

from machines.records import HttpError, TransportFault

__all__ = ["fault_of", "http_error_of", "is_transport_error", "observation_of"]

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
    """True for an exception that means the network failed (not a bug, not a status)."""
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


#: Response headers an `HttpError` keeps: when to try again, and what to quote to support.
KEPT_HEADERS = ("retry-after", "retry-after-ms", "x-request-id")


def kept_headers(headers: Any) -> dict[str, str]:
    """The headers of an error response worth keeping (never a credential): retry hints, rate
    limits and the request id."""
    kept: dict[str, str] = {}
    try:
        items = list(headers.items())
    except Exception:  # not a mapping: nothing to keep
        return kept
    for name, value in items:
        lowered = str(name).lower()
        if lowered in KEPT_HEADERS or lowered.startswith("x-ratelimit-"):
            kept[lowered] = str(value)
    return kept


def http_error_of(error: openai.APIStatusError) -> HttpError:
    """The status and the body exactly as the server sent it (parsed when it is JSON), the
    headers that say when to try again, and the wall-clock time it was received."""
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
    headers = kept_headers(getattr(error.response, "headers", None))
    return HttpError(error.status_code, body, headers, round(time.time(), 3))


def observation_of(error: BaseException, *, opening: bool) -> HttpError | TransportFault | None:
    """The input record an exception from sending the request (`opening`) or reading its body
    stands for, or None when it is not the network's doing (the caller re-raises it)."""
    if opening and isinstance(error, openai.APIStatusError):
        return http_error_of(error)
    if is_transport_error(error):
        return fault_of(error, opening=opening)
    return None
