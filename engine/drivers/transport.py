"""How the network's failures become input records (shared by every driver).

Contract v2, never raise: any exception from the HTTP client while sending the request or reading
the body is a transport fault. `observation_of` sorts what a driver's reader caught:

* opening the request (anything before the response headers): a non-2xx status
  (`APIStatusError`, with the response already read) is an `HttpError`; every other exception is
  `TransportFault(Fault.CONNECT_ERROR)`, whatever its class (refused, reset, timed out, a proxy or
  TLS failure, a transport that raised something of its own), because nothing of the response
  arrived: the engine may send the request again;
* reading the body: a timeout is `TransportFault(Fault.READ_TIMEOUT)`, every other exception
  `TransportFault(Fault.DROP)` (the HTTP library's protocol, read and decoding errors, the SDK's
  wrappers around them, anything else the client raised mid-body);
* not the network's doing, so handed back to be raised: `KeyboardInterrupt`, `SystemExit`,
  cancellation (anything that is not an `Exception`), and a wrong call: a `TypeError` or
  `ValueError` raised while the SDK was still building the request (an unknown argument, a value
  it cannot serialise), before the HTTP client was asked to send anything.

Only the exception's class name is kept as detail (never its text, which may quote a URL or
header).

And how a driver ends a connection whose body another thread is still reading: closing a socket
from another thread does not wake a read blocked on it, so the connection would stay open (and
the reader with it) until the server sent something more. `shut_down` ends both directions first:
the blocked read returns, the server sees the connection closed. `socket_of` finds the socket an
HTTP library names through its documented `network_stream` extension, `socket_of_response` the
one under a response.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import TYPE_CHECKING, Any, cast

import orjson

from machines.records import Fault, HttpError, TransportFault

if TYPE_CHECKING:
    import openai

__all__ = [
    "fault_of",
    "http_error_of",
    "is_transport_error",
    "is_wrong_call",
    "observation_of",
    "shut_down",
    "socket_of",
    "socket_of_response",
]

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


def _is_sdk(error: BaseException, *names: str) -> bool:
    """Whether `error` is one of the openai package's exception classes `names`. The package is
    not imported for this: an exception can only be of its classes once a client loaded it, and
    the commands and turns that never make one (replay, consume, an app-server turn) do not pay
    for importing it."""
    sdk = sys.modules.get("openai")
    return sdk is not None and isinstance(error, tuple(getattr(sdk, name) for name in names))


def _names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def is_transport_error(error: BaseException) -> bool:
    """True for an exception that means the network failed (not a bug, not a status)."""
    names = _names(error)
    return bool(names & (_TIMEOUT_NAMES | _CONNECT_NAMES | _TRANSPORT_NAMES)) or _is_sdk(
        error, "APIConnectionError"
    )


def fault_of(error: BaseException, *, opening: bool) -> TransportFault:
    """The fault an exception from opening the request or reading its body stands for."""
    names = _names(error)
    detail = type(error).__name__
    if _is_sdk(error, "APITimeoutError") or names & _TIMEOUT_NAMES and not names & _CONNECT_NAMES:
        return TransportFault(Fault.READ_TIMEOUT, detail)
    if opening and (_is_sdk(error, "APIConnectionError") or names & _CONNECT_NAMES):
        return TransportFault(Fault.CONNECT_ERROR, detail)
    return TransportFault(Fault.DROP, detail)


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


#: Modules of the HTTP stack below the SDK: an exception raised in one of them was raised while
#: the request was being sent or answered.
_NETWORK_MODULES = frozenset(
    {"httpcore", "httpcore2", "h11", "h2", "anyio", "ssl", "socket", "selectors", "asyncio"}
)
#: Functions through which the SDK hands a request to the HTTP client, or takes its answer.
_SENDING_FUNCTIONS = frozenset(
    {"send", "_send_request", "handle_request", "handle_async_request", "_process_response"}
)


def _went_out(error: BaseException) -> bool:
    """Whether `error` (or an exception it was raised from) passed through the HTTP client's
    sending of a request, or through the SDK's handling of the answer."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            module = str(tb.tb_frame.f_globals.get("__name__", ""))
            if code.co_name in _SENDING_FUNCTIONS or module.split(".", 1)[0] in _NETWORK_MODULES:
                return True
            tb = tb.tb_next
        current = current.__cause__ or current.__context__
    return False


def is_wrong_call(error: BaseException) -> bool:
    """A `TypeError`/`ValueError` raised while the request was still being built from the
    caller's arguments: the caller's mistake, raised to the caller."""
    return isinstance(error, (TypeError, ValueError)) and not _went_out(error)


def _is_timeout(error: BaseException) -> bool:
    return (
        isinstance(error, TimeoutError)
        or _is_sdk(error, "APITimeoutError")
        or bool(_names(error) & _TIMEOUT_NAMES)
    )


def observation_of(error: BaseException, *, opening: bool) -> HttpError | TransportFault | None:
    """The input record an exception from sending the request (`opening`: before the response
    headers) or reading its body stands for, or None when it is not the network's doing (the
    caller re-raises it): see the module docstring."""
    if not isinstance(error, Exception):
        return None
    detail = type(error).__name__
    if opening:
        if _is_sdk(error, "APIStatusError"):
            return http_error_of(cast("openai.APIStatusError", error))
        if is_wrong_call(error):
            return None
        return TransportFault(Fault.CONNECT_ERROR, detail)
    return TransportFault(Fault.READ_TIMEOUT if _is_timeout(error) else Fault.DROP, detail)


# -- ending a connection another thread reads -------------------------------------------------


def socket_of(stream: Any) -> socket.socket | None:
    """The socket a network stream (httpcore's, named by `get_extra_info`) reads, if any."""
    try:
        sock = stream.get_extra_info("socket") if stream is not None else None
    except Exception:  # not a network stream after all
        return None
    return sock if isinstance(sock, socket.socket) else None


def socket_of_response(response: Any) -> socket.socket | None:
    """The socket under an HTTP response (an httpx response, or the SDK's wrapper of one), if
    its HTTP library names it (`network_stream`)."""
    response = getattr(response, "http_response", response)
    extensions = getattr(response, "extensions", None)
    if not isinstance(extensions, dict):
        return None
    return socket_of(extensions.get("network_stream"))


def shut_down(sock: socket.socket) -> None:
    """End both directions of `sock`: a read blocked on it returns, the server sees a FIN."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed or never connected
        pass
