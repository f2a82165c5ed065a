"""What the simulator sends: replies, scripts, error bodies and event-stream frames.

The data the built-in Responses simulator plays, shared by the shapes (`engine.simulator.shapes`),
the scenarios (`engine.simulator.scenarios`), background responses
(`engine.simulator.background`) and the HTTP server (`engine.simulator.server`), which import it
and nothing of each other's in the other direction. A streaming reply's steps are records of the
shared vocabulary (`machines.records`): a `Chunk` is sent as one HTTP chunk, a `Stall` is
silence, a `TransportFault` cuts the connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import attrs
import orjson

from machines.records import Chunk, Stall, TransportFault

__all__ = [
    "RESPONSES_PATHS",
    "RecordedRequest",
    "Reply",
    "Script",
    "Step",
    "error_body",
    "default_error_body",
    "frame_ends",
    "redact_headers",
    "sse_frame",
]

RESPONSES_PATHS: Final = frozenset({"/v1/responses", "/responses"})
REDACTED: Final = "[redacted]"

_STATUS_ERROR_TYPES: Final[Mapping[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided: test. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again in 20s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_body(
    message: str,
    *,
    type: str = "server_error",
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """An OpenAI-shaped JSON error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def default_error_body(status: int) -> bytes:
    fallback_type = "server_error" if status >= 500 else "invalid_request_error"
    type_, code, message = _STATUS_ERROR_TYPES.get(status, (fallback_type, None, f"HTTP {status}."))
    return error_body(message, type=type_, code=code)


# --------------------------------------------------------------------------------------------
# Script model


def _non_empty_bytes(instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes):
        raise TypeError(f"{attribute.name} must be bytes, not {type(value).__name__}")
    if not value:
        # A zero-length chunk is the chunked-encoding terminator; it cannot be sent as data.
        raise ValueError(f"{attribute.name} must not be empty (a zero-length chunk ends the body)")


_CHUNK_DATA = attrs.fields(Chunk).data


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _whole_number_or_none(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(f"{attribute.name} must be a whole number >= 0, not {value!r}")


#: What a streaming reply does, in the shared vocabulary of `machines.records`: send a chunk,
#: stay silent, or cut the connection (`TransportFault(Fault.DROP)`).
Step = Chunk | Stall | TransportFault


def _steps(value: Any) -> tuple[Step, ...]:
    steps = tuple(value)
    for step in steps:
        if isinstance(step, Chunk):
            _non_empty_bytes(step, _CHUNK_DATA, step.data)
        elif not isinstance(step, (Stall, TransportFault)):
            raise TypeError(f"not a reply step: {step!r}")
    return steps


def _headers_tuple(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(name), str(val)) for name, val in value)


@attrs.frozen
class Reply:
    """One HTTP response.

    ``body is None``: an ``text/event-stream`` response whose ``steps`` are played in order (for a
    non-200 status with no steps, a generic OpenAI-shaped error body is sent instead).
    ``body`` set: that body, sent whole as ``application/json`` with a ``content-length``.
    ``headers`` are added to the response and override the defaults of the same name.
    ``headers_after_s`` keeps the client waiting that long before the status line is sent (a
    server slow to answer at all). ``drop`` says how a ``TransportFault`` step closes the
    connection: ``"fin"`` (orderly shutdown) or ``"rst"`` (reset, ``SO_LINGER`` 0).
    ``background_drop_after_events`` (N >= 0): a request whose body holds ``"background": true``
    gets a background response made of this reply's events; its stream is cut (FIN) after N
    events and the rest is served by ``GET /v1/responses/{id}`` (see *Background responses* in
    the module docstring). Other requests, and replies that are not streamed with status 200,
    are unaffected.
    """

    status: int = 200
    steps: tuple[Step, ...] = attrs.field(default=(), converter=_steps)
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_headers_tuple)
    headers_after_s: float = attrs.field(default=0.0, validator=_non_negative)
    drop: Literal["fin", "rst"] = attrs.field(
        default="fin", validator=attrs.validators.in_(("fin", "rst"))
    )
    background_drop_after_events: int | None = attrs.field(
        default=None, validator=_whole_number_or_none
    )

    @property
    def is_stream(self) -> bool:
        """Whether this reply is sent as an event stream (else as a whole JSON body)."""
        return self.body is None and (self.status == 200 or bool(self.steps))

    @property
    def serves_background(self) -> bool:
        """Whether a ``background: true`` request given this reply gets a background response
        (a streamed 200 reply with ``background_drop_after_events`` set)."""
        return (
            self.background_drop_after_events is not None and self.is_stream and self.status == 200
        )


def _replies_tuple(value: Iterable[Reply]) -> tuple[Reply, ...]:
    return tuple(value)


@attrs.frozen
class Script:
    """The replies for consecutive requests, in order, with a name and a one-line description."""

    replies: tuple[Reply, ...] = attrs.field(converter=_replies_tuple)
    name: str = ""
    description: str = ""


@attrs.frozen
class RecordedRequest:
    """A request as the simulator received it, secrets redacted.

    ``body`` is the parsed JSON body (``None`` if it was empty or not JSON); ``headers`` maps
    lower-cased header names to values; ``reply_index`` is the position in the scenario (or
    script) of the reply it got (``None`` for requests it did not answer: wrong path, or no reply
    matched). ``n`` numbers the simulator's requests from 1, ``t`` is when it arrived (seconds
    since the simulator started), ``status`` the HTTP status it was answered with, ``query`` the
    query string of the request target (without ``?``).
    """

    method: str
    path: str
    body: Any
    headers: dict[str, str]
    reply_index: int | None
    n: int = 0
    t: float = 0.0
    status: int | None = None
    query: str = ""

    def to_log_json(self) -> dict[str, Any]:
        """The request as one line of ``streamfsm serve --log``."""
        return {
            "n": self.n,
            "t": round(self.t, 6),
            "method": self.method,
            "path": f"{self.path}?{self.query}" if self.query else self.path,
            "headers": self.headers,
            "body": self.body,
            "reply": self.reply_index,
            "status": self.status,
        }


def _is_secret_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in ("authorization", "cookie", "proxy-authorization", "set-cookie") or (
        "key" in lowered or "token" in lowered
    )


def redact_headers(headers: Any) -> dict[str, str]:
    """Header pairs as a dict with lower-cased names, secret values replaced by ``[redacted]``."""
    redacted: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        redacted[lowered] = REDACTED if _is_secret_header(lowered) else value
    return redacted


# --------------------------------------------------------------------------------------------
# Event-stream frames


def sse_frame(event: Mapping[str, Any], *, crlf: bool = False) -> bytes:
    """``event: <type>`` / ``data: <compact JSON>`` / blank line, UTF-8, LF or CRLF endings."""
    eol = b"\r\n" if crlf else b"\n"
    payload = orjson.dumps(event)
    event_type = event.get("type")
    head = b"event: " + str(event_type).encode() + eol if event_type is not None else b""
    return head + b"data: " + payload + eol + eol


def frame_ends(body: bytes) -> list[int]:
    """Offsets just past each blank line of an event-stream body: where each SSE frame ends.

    Line endings are CRLF, LF or CR, as the WHATWG event-stream rules allow.
    """
    ends: list[int] = []
    size = len(body)
    line_start = 0
    position = 0
    while position < size:
        byte = body[position]
        if byte != 0x0A and byte != 0x0D:
            position += 1
            continue
        end = position + 1
        if byte == 0x0D and end < size and body[end] == 0x0A:
            end += 1
        if position == line_start and position > 0:
            ends.append(end)
        line_start = end
        position = end
    return ends
