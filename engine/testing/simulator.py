"""A Responses-API endpoint on loopback that plays a scenario, for real clients and real sockets.

Theory of operation
===================

The simulator is a genuine HTTP/1.1 server (``http.server.ThreadingHTTPServer``) bound to
``127.0.0.1``. It does not imitate a model; it plays a *scenario*
(:class:`engine.testing.scenarios.Scenario`): an ordered list of rules, each pairing conditions
(the request holds a tool output, it is the Nth request, the rule was used fewer than N times)
with a :class:`Reply`. Each POST to ``/v1/responses`` (or ``/responses``) gets the reply of the
first rule whose conditions hold; a request no rule matches gets an HTTP 500 with an
OpenAI-shaped error body saying so. Background responses are kept for ``GET`` and ``cancel``
(below). Scenario files (``streamfsm serve FILE.toml``) and their
keys are described in ``engine/testing/scenarios.py`` and ``docs/scenarios.md``.

A :class:`Script` (an ordered tuple of replies) is the simplest scenario: each request takes the
next unused reply, so a script of three replies describes three consecutive attempts of one turn
(for example: drop, drop, success); a request after the script is used up gets the 500
(``code: "script_exhausted"``), unless the simulator was built with ``repeat=True``, in which
case the script starts over.

A streaming reply (any reply without a fixed ``body``) is sent with
``content-type: text/event-stream`` and ``transfer-encoding: chunked``, and its ``steps`` are
played in order:

``Chunk(data)``
    ``data`` becomes exactly one HTTP chunk, written with one ``sendall`` on a socket with
    Nagle's algorithm disabled. The client's HTTP parser (h11, under httpx2) emits at most one
    body piece per chunk, so ``iter_bytes()`` on the client yields these same boundaries as long
    as a chunk fits in one read (all realistic SSE frames do).
``Stall(seconds)``
    Nothing is written for ``seconds``; the socket stays open. The wait runs in short slices and
    ends early when the simulator is closing (the reply is then abandoned) or when the client has
    closed its end (detected as end-of-file on the socket).
``TransportFault("drop")``
    The connection is closed at once, in the middle of the chunked body, without the
    terminating zero-length chunk. ``Reply.drop`` says how: ``"fin"`` (an orderly shutdown; the
    client's HTTP parser reports an incomplete body) or ``"rst"`` (``SO_LINGER`` 0, so the
    kernel sends a reset; the client reads "connection reset by peer").

Unless a drop ended it, a streaming reply ends with the terminating zero-length chunk and the
connection stays open for keep-alive reuse, exactly like a real server.

A reply with ``body`` set is sent whole with a ``content-length``, as ``application/json``; a
non-200 reply without a body gets a generic OpenAI-shaped error body for its status.

Background responses
--------------------

A reply with ``background_drop_after_events = N`` given to a ``POST`` whose JSON body holds
``"background": true`` (and streamed with status 200) starts a :class:`BackgroundResponse`, kept
under a fresh id (:func:`background_response_id`: ``resp_sim_background_NNNN``, NNNN the request
number). Its events are the reply's frames whose data is a JSON object (comments and
``[DONE]`` are left out), up to a cut the reply may hold; each keeps its ``sequence_number`` when
it has a whole number there, else gets its position (0, 1, 2, ...). Every response object they
carry gets the stored ``id`` and ``"background": true``; in ``response.created`` and
``response.queued`` its status becomes ``"queued"``, in ``response.in_progress``
``"in_progress"``. The POST is answered with the first N events, one chunk each (the reply's
stalls stay where they were, counted in events), then the connection is closed with a FIN in the
middle of the chunked body, without a terminal event. A reply with N or fewer events is sent
whole and then cut the same way. Other requests given that reply get it unchanged.

``GET /v1/responses/{id}?stream=true&starting_after=K`` (or ``/responses/{id}``) streams the
stored events whose ``sequence_number`` is above K (all without ``starting_after``), one chunk
each, without pauses, with the headers of a POST stream, and ends the body as usual. Without
``stream`` (or ``stream=false``) it answers the final response object as JSON: that of the last
event carrying one. ``POST /v1/responses/{id}/cancel`` marks the response cancelled and answers
its response object as of the events sent so far, with ``"status": "cancelled"`` (again for each
repeated cancel); afterwards a GET answers that object, and a GET with ``stream=true`` answers
HTTP 400 ("Cannot stream a cancelled response."). An unknown id gets HTTP 404 ("Response with id
'...' not found."); a ``stream`` other than true/false or a ``starting_after`` that is not an
integer gets HTTP 400 naming the parameter. All errors have OpenAI-shaped bodies. These GETs and
cancels are recorded and logged like any request, with ``reply_index`` None; they do not count
towards the scenario's ``nth`` and ``times``.

What the openai client raises (openai 3.x over httpx2; checked by tests/test_simulator.py)
-----------------------------------------------------------------------------------------

* A drop while iterating ``response.iter_bytes()`` of ``with_streaming_response.create(...)``:
  ``httpx2.RemoteProtocolError`` ("peer closed connection without sending complete message
  body (incomplete chunked read)"); an RST drop raises ``httpx2.ReadError`` instead.
  ``iter_bytes()`` passes transport errors through untouched.
  Iterating the SDK's own ``Stream`` (``create(stream=True)``) wraps the same fault as
  ``openai.APIConnectionError`` with the httpx2 error as ``__cause__``.
* ``Stall`` longer than the client's read timeout: ``httpx2.ReadTimeout`` from ``iter_bytes()``
  (``openai.APITimeoutError`` when iterating the SDK ``Stream``). A stall before the response
  headers is ``Reply.headers_after_s``.
* Non-2xx status: ``openai.APIStatusError`` (the subclass for the status, e.g.
  ``InternalServerError`` for 500, ``RateLimitError`` for 429, ``AuthenticationError`` for 401)
  raised by ``create(...)`` itself, with ``.status_code`` and ``.body`` (the ``error`` object of the
  JSON body). The openai client retries 408/409/429/5xx on its own unless ``max_retries=0``; each
  retry is a new request that the scenario answers like any other.

Every request is recorded as a :class:`RecordedRequest` (number, time, method, path, parsed JSON
body, headers, which reply it got, status) before its reply is played, with secrets redacted: the
values of ``authorization``, ``cookie`` and any header whose name contains ``key`` or ``token``
become ``"[redacted]"``. With ``log=PATH`` each one is also appended to that file as one JSON line
(``n``, ``t``, ``method``, ``path``, ``headers``, ``body``, ``reply``, ``status``), flushed at once.

The simulator is quiet: it writes nothing to stdout or stderr. Exceptions raised while serving a
request (other than the client hanging up) are kept in :attr:`ResponsesSimulator.server_errors`.

Usage::

    with ResponsesSimulator(scenario_or_script) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="test", max_retries=0)
        ...
        sim.requests  # what the client sent

or, for a command-line server, ``ResponsesSimulator(scenario, port=8787).serve_forever()``, which
blocks until :meth:`ResponsesSimulator.close` is called from another thread or the process is
interrupted.
"""

from __future__ import annotations

import http.server
import os
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import IO, TYPE_CHECKING, Any, Final, Literal

import attrs
import orjson

from machines.records import Chunk, Stall, TransportFault

if TYPE_CHECKING:
    from engine.testing.scenarios import Scenario

__all__ = [
    "BackgroundResponse",
    "RecordedRequest",
    "Reply",
    "ResponsesSimulator",
    "Script",
    "Step",
    "TRACE_STALL_S",
    "background_response_id",
    "error_body",
    "redact_headers",
    "script_from_trace",
    "start_background",
]

RESPONSES_PATHS: Final = frozenset({"/v1/responses", "/responses"})
REDACTED: Final = "[redacted]"
STALL_SLICE_S: Final = 0.02
"""Longest uninterrupted sleep inside a Stall; bounds how late a close or hang-up is noticed."""
SERVE_POLL_S: Final = 0.05
"""Poll interval of the accept loop, a fallback: ``close()`` wakes the loop with a connection."""
TRACE_STALL_S: Final = 60.0
"""How long a trace's timeout or interrupt is served as silence: the client under test decides
when to give up (the stall ends as soon as it hangs up)."""
RECORDED_GAP_MIN_S: Final = 0.001
"""With recorded timing, pauses shorter than this between two inputs are not reproduced."""

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


def _default_error_body(status: int) -> bytes:
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
#: stay silent, or cut the connection (`TransportFault("drop")`).
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
# Background responses

#: What a JSON event of an event stream is here: a parsed ``data:`` object.
Event = dict[str, Any]

#: The status the response object of an early lifecycle event has in a background response.
_BACKGROUND_EARLY_STATUS: Final[Mapping[str, str]] = {
    "response.created": "queued",
    "response.queued": "queued",
    "response.in_progress": "in_progress",
}


def background_response_id(request_number: int) -> str:
    """The id the simulator gives the background response started by its request number N."""
    return f"resp_sim_background_{request_number:04d}"


@attrs.frozen
class BackgroundResponse:
    """A background response the simulator keeps, to be resumed or cancelled.

    ``events``: every event of the response in order, each with a ``sequence_number``, the
    response objects they carry already holding ``response_id`` and ``"background": true``.
    ``headers``: the headers of a reply that streams them. ``sent``: how many events, from the
    first, some stream has sent (or started to send). ``cancelled``: ``POST .../cancel`` was
    received.
    """

    response_id: str
    events: tuple[Event, ...]
    headers: tuple[tuple[str, str], ...] = ()
    sent: int = 0
    cancelled: bool = False

    def events_after(self, sequence_number: int | None) -> tuple[Event, ...]:
        """The events whose ``sequence_number`` is above ``sequence_number`` (all for None)."""
        if sequence_number is None:
            return self.events
        return tuple(event for event in self.events if event["sequence_number"] > sequence_number)

    def response_as_of(self, count: int) -> Event:
        """The response object carried by the last of the first ``count`` events that carries
        one; a bare in-progress response object when none does."""
        for event in reversed(self.events[:count]):
            response = event.get("response")
            if isinstance(response, dict):
                return dict(response)
        return {
            "id": self.response_id,
            "object": "response",
            "status": "in_progress",
            "background": True,
            "output": [],
        }

    def final_response(self) -> Event:
        """What ``GET /v1/responses/{id}`` answers: the response of its last event carrying one
        (the terminal event, when it has one); once cancelled, the response as cancel answered
        it."""
        if self.cancelled:
            return self.cancelled_response()
        return self.response_as_of(len(self.events))

    def cancelled_response(self) -> Event:
        """What ``POST /v1/responses/{id}/cancel`` answers: the response as of the events sent
        so far, with ``"status": "cancelled"``."""
        return {**self.response_as_of(self.sent), "status": "cancelled"}


def _frame_data(frame: bytes) -> Any:
    """The parsed JSON of one SSE frame's ``data:`` lines, or None (no data, or not JSON)."""
    data = [
        line[5:].removeprefix(b" ")
        for line in frame.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    if not data:
        return None
    try:
        return orjson.loads(b"\n".join(data))
    except orjson.JSONDecodeError:
        return None


def _background_event(event: Event, response_id: str, position: int) -> Event:
    """``event`` as a background response streams it: with a ``sequence_number`` (its position
    when it has no whole number there) and its response object carrying ``response_id``,
    ``"background": true`` and, in early lifecycle events, ``queued``/``in_progress``."""
    rewritten = dict(event)
    number = event.get("sequence_number")
    if type(number) is not int:
        rewritten["sequence_number"] = position
    response = event.get("response")
    if isinstance(response, dict):
        response = {**response, "id": response_id, "background": True}
        early_status = _BACKGROUND_EARLY_STATUS.get(str(event.get("type")))
        if early_status is not None:
            response["status"] = early_status
        rewritten["response"] = response
    return rewritten


def _events_and_stalls(reply: Reply) -> tuple[list[Event], list[tuple[int, Stall]]]:
    """A streamed reply's JSON events (frames whose data is a JSON object, up to a cut) and its
    stalls, each placed by how many of those events were complete before it."""
    from engine.testing.scenarios import frame_ends

    body = b""
    stalls: list[tuple[int, Stall]] = []
    stall_offsets: list[tuple[int, Stall]] = []
    for step in reply.steps:
        if isinstance(step, Chunk):
            body += step.data
        elif isinstance(step, Stall):
            stall_offsets.append((len(body), step))
        else:
            break
    events: list[Event] = []
    event_ends: list[int] = []
    start = 0
    for end in frame_ends(body):
        data = _frame_data(body[start:end])
        if isinstance(data, dict):
            events.append(data)
            event_ends.append(end)
        start = end
    for offset, stall in stall_offsets:
        stalls.append((sum(1 for end in event_ends if end <= offset), stall))
    return events, stalls


def start_background(reply: Reply, response_id: str) -> tuple[BackgroundResponse, Reply]:
    """The background response a ``background: true`` request given ``reply`` starts, and the
    reply that request gets: its first ``background_drop_after_events`` events (one chunk each,
    with the reply's stalls where they were), then a cut with a FIN."""
    from engine.testing.shapes import sse_frame

    cut_after = reply.background_drop_after_events
    if cut_after is None:
        raise ValueError("the reply has no background_drop_after_events")
    events, stalls = _events_and_stalls(reply)
    stored = tuple(
        _background_event(event, response_id, position) for position, event in enumerate(events)
    )
    sent = min(cut_after, len(stored))
    steps: list[Step] = []
    for position in range(sent + 1):
        steps.extend(stall for at, stall in stalls if at == position)
        if position < sent:
            steps.append(Chunk(sse_frame(stored[position])))
    steps.append(TransportFault("drop"))
    background = BackgroundResponse(response_id, stored, headers=reply.headers, sent=sent)
    first_stream = attrs.evolve(
        reply, steps=tuple(steps), drop="fin", background_drop_after_events=None
    )
    return background, first_stream


def _stream_events(events: Iterable[Event], headers: tuple[tuple[str, str], ...]) -> Reply:
    """A streamed 200 reply sending ``events``, one chunk each, and ending as usual."""
    from engine.testing.shapes import sse_frame

    return Reply(steps=tuple(Chunk(sse_frame(event)) for event in events), headers=headers)


def _json_reply(value: Any) -> Reply:
    return Reply(status=200, body=orjson.dumps(value))


def _invalid_request(status: int, message: str, *, param: str | None = None) -> Reply:
    return Reply(status=status, body=error_body(message, type="invalid_request_error", param=param))


def _background_target(path: str) -> tuple[str, bool] | None:
    """``(response id, is a cancel)`` for ``/v1/responses/{id}`` or ``/v1/responses/{id}/cancel``
    (also without ``/v1``); None for any other path."""
    for prefix in RESPONSES_PATHS:
        if not path.startswith(prefix + "/"):
            continue
        segments = path[len(prefix) + 1 :].split("/")
        if len(segments) == 1 and segments[0]:
            return urllib.parse.unquote(segments[0]), False
        if len(segments) == 2 and segments[0] and segments[1] == "cancel":
            return urllib.parse.unquote(segments[0]), True
    return None


def _query_flag(values: list[str] | None) -> bool | None:
    """A boolean query parameter: absent is False; ``true``/``false`` (any case); else None."""
    if not values:
        return False
    lowered = values[-1].lower()
    return True if lowered == "true" else False if lowered == "false" else None


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _ConnectionGone(Exception):
    """The reply cannot go on: the client hung up or the simulator is closing."""


class _SimulatorHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    simulator: ResponsesSimulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if error is None or self.simulator._closing.is_set():
            return  # sockets cut by close() fail in whatever way they fail
        if not isinstance(error, (ConnectionError, TimeoutError)):
            self.simulator._record_server_error(error)


class _ResponsesRequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _SimulatorHTTPServer
    request_id: str = "req_sim_0000"

    # -- quiet -----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        return

    def version_string(self) -> str:
        return "streamfsm-simulator"

    # -- connection bookkeeping ------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.simulator._register_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.simulator._forget_connection(self.connection)

    # -- methods ---------------------------------------------------------------------------
    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            pieces: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(pieces)
                pieces.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        simulator = self.server.simulator
        raw = self._read_body()
        path, _, query = self.path.partition("?")
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        request, reply = simulator._admit(self.command, path, body, self.headers, query)
        self.request_id = f"req_sim_{request.n:04d}"
        if reply.headers_after_s:
            try:
                self._stall(reply.headers_after_s)
            except (_ConnectionGone, ConnectionError):
                self.close_connection = True
                return
        if reply.is_stream:
            self._send_stream(reply)
        else:
            self._send_fixed(reply)

    def _send_headers(self, reply: Reply, defaults: dict[str, str]) -> None:
        self.send_response(reply.status)
        merged = dict(defaults)
        for name, value in reply.headers:
            merged = {k: v for k, v in merged.items() if k.lower() != name.lower()}
            merged[name] = value
        for name, value in merged.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def _send_fixed(self, reply: Reply) -> None:
        body = reply.body if reply.body is not None else _default_error_body(reply.status)
        self._send_headers(
            reply,
            {
                "content-type": "application/json",
                "content-length": str(len(body)),
                "x-request-id": self.request_id,
            },
        )
        self.wfile.write(body)
        self.wfile.flush()

    def _send_stream(self, reply: Reply) -> None:
        self._send_headers(
            reply,
            {
                "content-type": "text/event-stream; charset=utf-8",
                "transfer-encoding": "chunked",
                "cache-control": "no-cache",
                "x-request-id": self.request_id,
            },
        )
        try:
            for step in reply.steps:
                if isinstance(step, Chunk):
                    self._write_chunk(step.data)
                elif isinstance(step, Stall):
                    self._stall(step.seconds)
                elif isinstance(step, TransportFault):
                    self._drop(reply.drop)
                    return
                else:  # pragma: no cover - guarded by the type of Reply.steps
                    raise TypeError(f"unknown step {step!r}")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (_ConnectionGone, ConnectionError):
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        if self.server.simulator._closing.is_set():
            raise _ConnectionGone
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stall(self, seconds: float) -> None:
        closing = self.server.simulator._closing
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if closing.is_set():
                raise _ConnectionGone
            if self._client_hung_up(min(STALL_SLICE_S, remaining)):
                raise _ConnectionGone

    def _client_hung_up(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for the socket to turn readable; True if the client closed it."""
        try:
            readable, _, _ = select.select([self.connection], [], [], wait_s)
            if not readable:
                return False
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except (OSError, ValueError):
            return True

    def _drop(self, mode: str = "fin") -> None:
        """Close the connection mid-body: an orderly shutdown (FIN), or a reset (RST)."""
        self.close_connection = True
        self.wfile.flush()
        if mode == "rst":
            try:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                # Close the descriptor now: with a zero linger time the kernel answers with a
                # reset. (rfile holds a reference to the socket; close it first so the close is
                # real, and so that no orderly shutdown follows.)
                self.rfile.close()
                self.connection.close()
            except OSError:
                pass
            return
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# The simulator


class ResponsesSimulator:
    """Serves a scenario (or a :class:`Script`) as a Responses-API endpoint on ``127.0.0.1``.

    ``scenario``: an :class:`engine.testing.scenarios.Scenario`, or a :class:`Script` (each reply
    used once, in order). ``port=0`` picks a free port. ``repeat=True`` starts a script over once
    it is used up instead of answering 500 (useful for a long-running ``serve``). ``log``: a path
    (appended to) or an open text file that gets one JSON line per request. The server starts on
    ``__enter__``/:meth:`start` in a daemon thread; :meth:`close` stops it promptly, cutting any
    reply in progress (a stalled one included).
    """

    def __init__(
        self,
        scenario: Scenario | Script,
        port: int = 0,
        *,
        repeat: bool = False,
        log: str | os.PathLike[str] | IO[str] | None = None,
    ) -> None:
        from engine.testing.scenarios import Scenario, ScenarioState

        if isinstance(scenario, Script):
            scenario = Scenario.from_script(scenario, repeat=repeat)
        elif isinstance(scenario, Scenario):
            if repeat and not scenario.repeat:
                scenario = attrs.evolve(scenario, repeat=True)
        else:
            raise TypeError(
                f"scenario must be a Scenario or a Script, not {type(scenario).__name__}"
            )
        self.scenario: Final = scenario
        self.repeat: Final = scenario.repeat
        self._state = ScenarioState(scenario)
        self._requested_port = port
        self._log_target = log
        self._log: IO[str] | None = None
        self._owns_log = False
        self._lock = threading.Lock()
        self._replies_used = 0
        self._request_count = 0
        self._started_at = time.monotonic()
        self._requests: list[RecordedRequest] = []
        self._background: dict[str, BackgroundResponse] = {}
        self._server_errors: list[BaseException] = []
        self._connections: set[socket.socket] = set()
        self._closing = threading.Event()
        self._httpd: _SimulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> ResponsesSimulator:
        """Bind and start serving in a daemon thread. Idempotent while running."""
        if self._httpd is not None:
            return self
        if self._closing.is_set():
            raise RuntimeError("a closed ResponsesSimulator cannot be restarted")
        httpd = _SimulatorHTTPServer(("127.0.0.1", self._requested_port), _ResponsesRequestHandler)
        httpd.simulator = self
        if self._log_target is not None and self._log is None:
            if isinstance(self._log_target, (str, os.PathLike)):
                try:
                    self._log = open(self._log_target, "a", encoding="utf-8")
                except OSError:
                    httpd.server_close()
                    raise
                self._owns_log = True
            else:
                self._log = self._log_target
        self._httpd = httpd
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._accept_loop,
            args=(httpd,),
            name=f"responses-simulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, cut every open connection, and wait briefly for the threads."""
        self._closing.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._wake_accept_loop(httpd)
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        with self._lock:
            log, self._log = self._log, None
            if log is not None and self._owns_log:
                log.close()

    def _accept_loop(self, httpd: _SimulatorHTTPServer) -> None:
        """Accept connections (each served on its own thread) until the simulator is closing."""
        httpd.timeout = SERVE_POLL_S
        while not self._closing.is_set():
            httpd.handle_request()

    @staticmethod
    def _wake_accept_loop(httpd: _SimulatorHTTPServer) -> None:
        """Connect and hang up at once, so the accept loop sees the shutdown flag without waiting
        out its poll interval. The handler for this connection reads end-of-file and ends."""
        try:
            host, port = httpd.server_address[:2]
            address = (host.decode() if isinstance(host, (bytes, bytearray)) else host, port)
            with socket.create_connection(address, timeout=0.2):
                pass
        except OSError:
            pass

    def serve_forever(self) -> None:
        """Start (if needed); block until :meth:`close` is called or the process is interrupted."""
        self.start()
        try:
            while not self._closing.wait(0.25):
                pass
        finally:
            self.close()

    def __enter__(self) -> ResponsesSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what callers read -----------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port the simulator listens on (raises ``RuntimeError`` when not running)."""
        if self._httpd is None:
            raise RuntimeError("the simulator is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The ``base_url`` for ``openai.OpenAI``: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def server_errors(self) -> list[BaseException]:
        """Unexpected exceptions raised while serving (a copy); empty when all went well."""
        with self._lock:
            return list(self._server_errors)

    @property
    def background_responses(self) -> dict[str, BackgroundResponse]:
        """The background responses started so far, by response id (a copy)."""
        with self._lock:
            return dict(self._background)

    @property
    def replies_used(self) -> int:
        """How many replies have been handed out (counting repeats)."""
        with self._lock:
            return self._replies_used

    # -- called by the request handler -----------------------------------------------------
    def _admit(
        self, method: str, path: str, body: Any, headers: Any, query: str = ""
    ) -> tuple[RecordedRequest, Reply]:
        """Pick the reply for one request, record the request and log it, atomically.

        Only ``POST`` to a Responses path is answered from the scenario; a ``GET`` of a
        background response or a ``POST`` cancelling one is answered from the background
        responses kept so far; anything else gets a 404/405 error body. Neither of the last two
        touches the scenario's counts.
        """
        redacted = redact_headers(headers)
        with self._lock:
            self._request_count += 1
            index, reply = self._choose_reply(
                self._request_count, method, path, query, body, redacted
            )
            request = RecordedRequest(
                method=method,
                path=path,
                body=body,
                headers=redacted,
                reply_index=index,
                n=self._request_count,
                t=time.monotonic() - self._started_at,
                status=reply.status,
                query=query,
            )
            self._requests.append(request)
            if self._log is not None:
                try:
                    self._log.write(orjson.dumps(request.to_log_json()).decode() + "\n")
                    self._log.flush()
                except (OSError, ValueError) as error:
                    self._server_errors.append(error)
        return request, reply

    def _choose_reply(
        self,
        number: int,
        method: str,
        path: str,
        query: str,
        body: Any,
        headers: Mapping[str, str],
    ) -> tuple[int | None, Reply]:
        if path not in RESPONSES_PATHS:
            target = _background_target(path)
            if target is None:
                return None, _invalid_request(404, f"Invalid URL ({method} {path})")
            response_id, is_cancel = target
            expected_method = "POST" if is_cancel else "GET"
            if method != expected_method:
                return None, _invalid_request(405, f"Method {method} not allowed on {path}")
            if is_cancel:
                return None, self._cancel_background(response_id)
            return None, self._retrieve_background(response_id, query)
        if method != "POST":
            return None, _invalid_request(405, f"Method {method} not allowed on {path}")
        index, reply = self._state.choose(body, headers)
        if index is not None:
            self._replies_used += 1
        if reply.serves_background and isinstance(body, dict) and body.get("background") is True:
            background, reply = start_background(reply, background_response_id(number))
            self._background[background.response_id] = background
        return index, reply

    @staticmethod
    def _unknown_response(response_id: str) -> Reply:
        return _invalid_request(404, f"Response with id '{response_id}' not found.")

    def _retrieve_background(self, response_id: str, query: str) -> Reply:
        """``GET /v1/responses/{id}``: the stored events after ``starting_after`` as a stream
        (``stream=true``), or the final response object as JSON."""
        background = self._background.get(response_id)
        if background is None:
            return self._unknown_response(response_id)
        parameters = urllib.parse.parse_qs(query, keep_blank_values=True)
        stream = _query_flag(parameters.get("stream"))
        if stream is None:
            return _invalid_request(400, "stream must be true or false.", param="stream")
        if not stream:
            return _json_reply(background.final_response())
        if background.cancelled:
            return _invalid_request(400, "Cannot stream a cancelled response.")
        starting_after: int | None = None
        if parameters.get("starting_after"):
            try:
                starting_after = int(parameters["starting_after"][-1])
            except ValueError:
                return _invalid_request(
                    400, "starting_after must be an integer.", param="starting_after"
                )
        self._background[response_id] = attrs.evolve(background, sent=len(background.events))
        return _stream_events(background.events_after(starting_after), background.headers)

    def _cancel_background(self, response_id: str) -> Reply:
        """``POST /v1/responses/{id}/cancel``: mark it cancelled, answer its response object."""
        background = self._background.get(response_id)
        if background is None:
            return self._unknown_response(response_id)
        background = attrs.evolve(background, cancelled=True)
        self._background[response_id] = background
        return _json_reply(background.cancelled_response())

    def _record_server_error(self, error: BaseException) -> None:
        with self._lock:
            self._server_errors.append(error)

    def _register_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _forget_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


def _headers_of(value: Any) -> tuple[tuple[str, str], ...]:
    """Response headers a trace kept for an HTTP error, if it kept any (a JSON object)."""
    if not isinstance(value, dict):
        return ()
    return tuple((str(name), str(val)) for name, val in value.items() if isinstance(name, str))


def script_from_trace(trace: Any, *, timing: Literal["none", "recorded"] = "none") -> Script:
    """A recorded turn as a script: each attempt's chunks, faults and HTTP errors, in order.

    Chunks keep their recorded boundaries; a drop or connect error becomes a
    `TransportFault("drop")`; a read or idle timeout, and an interrupt, become a long `Stall`
    (:data:`TRACE_STALL_S`): the server went silent and the client gave up, which is all the
    server can know. A clean end of stream ends the body. An HTTP error keeps its status, body and,
    when the trace recorded them, its response headers.

    ``timing="recorded"`` reproduces the pauses between consecutive inputs of each attempt (from
    the trace's clock readings ``t``); the first attempt also waits its recorded time to first
    input (later attempts start at once: the client's own wait before them is not the server's).
    """
    from engine.log.trace import input_from_json
    from machines.records import EndOfStream, HttpError, IdleTimeout, Interrupt

    if timing not in ("none", "recorded"):
        raise ValueError(f"timing must be 'none' or 'recorded', not {timing!r}")
    replies: list[Reply] = []
    by_attempt: dict[int, list[dict[str, Any]]] = {}
    for record in trace.inputs():
        by_attempt.setdefault(record["attempt"], []).append(record)
    for position, number in enumerate(sorted(by_attempt)):
        steps: list[Step] = []
        reply: Reply | None = None
        last_t: float | None = 0.0 if position == 0 else None
        for record in by_attempt[number]:
            item = input_from_json(record)
            t = record.get("t")
            gap = 0.0
            if timing == "recorded" and isinstance(t, (int, float)) and not isinstance(t, bool):
                if last_t is not None and t - last_t >= RECORDED_GAP_MIN_S:
                    gap = float(t - last_t)
                last_t = float(t)
            if isinstance(item, HttpError):
                body = item.body if isinstance(item.body, (dict, list)) else {
                    "error": {"message": str(item.body)}
                }
                reply = Reply(
                    status=item.status,
                    body=orjson.dumps(body),
                    headers=_headers_of(record.get("headers")),
                    headers_after_s=gap,
                )
                break
            if gap and not isinstance(item, (IdleTimeout, Interrupt)):
                steps.append(Stall(gap))
            if isinstance(item, Chunk):
                if item.data:
                    steps.append(Chunk(item.data))
            elif isinstance(item, TransportFault) and item.kind != "read_timeout":
                steps.append(TransportFault("drop"))
                break
            elif isinstance(item, (TransportFault, IdleTimeout, Interrupt)):
                steps.append(Stall(TRACE_STALL_S))
                break
            elif isinstance(item, EndOfStream):
                break
        replies.append(reply or Reply(steps=tuple(steps)))
    return Script(
        replies=tuple(replies), name=trace.path, description=f"replies recorded in {trace.path}"
    )
