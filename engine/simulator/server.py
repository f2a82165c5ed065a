"""A Responses-API endpoint on loopback that plays a scenario, for real clients and real sockets.

Theory of operation
===================

The simulator is a genuine HTTP/1.1 server (``http.server.ThreadingHTTPServer``) bound to
``127.0.0.1``. It does not imitate a model; it plays a *scenario*
(:class:`engine.simulator.scenarios.Scenario`): an ordered list of rules, each pairing conditions
(the request holds a tool output, it is the Nth request, the rule was used fewer than N times)
with a :class:`Reply`. Each POST to ``/v1/responses`` (or ``/responses``) gets the reply of the
first rule whose conditions hold; a request no rule matches gets an HTTP 500 with an
OpenAI-shaped error body saying so. Background responses are kept for ``GET`` and ``cancel``
(below). Scenario files (``streamfsm serve FILE.toml``) and their
keys are described in ``engine/simulator/scenarios.py`` and ``docs/scenarios.md``.

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
``TransportFault(Fault.DROP)``
    The connection is closed at once, in the middle of the chunked body, without the
    terminating zero-length chunk. ``Reply.drop`` says how: ``"fin"`` (an orderly shutdown; the
    client's HTTP parser reports an incomplete body) or ``"rst"`` (``SO_LINGER`` 0, so the
    kernel sends a reset; the client reads "connection reset by peer").

Unless a drop ended it, a streaming reply ends with the terminating zero-length chunk and the
connection stays open for keep-alive reuse, exactly like a real server.

A reply with ``body`` set is sent whole with a ``content-length``, as ``application/json``; an
HTTP error (status 400 or above) is always sent that way, with a generic OpenAI-shaped error body
for its status when it has none (steps it may hold are not played).

Requests that do not ask for a stream
-------------------------------------

A ``POST`` to a Responses path whose JSON body does not hold ``"stream": true`` (the SDK's
``client.responses.create(...)`` without ``stream``) is answered as the real API answers it: not
with an event stream but with one ``application/json`` body, the final Response object
(:func:`whole_answer`). The reply's steps are played without sending anything: the pauses before
the answer add up to a wait before the status line (a slow server; the wait ends early when the
client hangs up), and a drop before the answer closes the connection without any response. The
answer is the ``response`` of the last ``response.completed``, ``response.incomplete`` or
``response.failed`` event, its ``output`` rebuilt from the ``response.output_item.done`` items
when the event left it empty or null (as streaming servers do). An ``error`` event before it
becomes an HTTP error carrying the event's error object (429 for a rate limit, 400 for an invalid
request, else 500), and a stream that ends with neither gets a 500 saying so. Such a request
never starts a background response.

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

The lifecycle (binding, the accept loop, one thread per connection, cutting every connection on
close, the request log) is :class:`LoopbackServer`'s, and reading requests, writing chunks,
stalls and drops are :class:`LoopbackHandler`'s: the recording proxy
(``engine.simulator.recording_proxy``) is the other server built on them.
"""
from __future__ import annotations

import http.server
import io
import os
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import IO, Any, Final, Self

import attrs
import orjson

from engine.drivers.sse import SseDecoder
from engine.simulator.background import (
    BackgroundResponse,
    background_response_id,
    start_background,
    stream_events,
)
from engine.simulator.replies import (
    RESPONSES_PATHS,
    RecordedRequest,
    Reply,
    Script,
    default_error_body,
    error_body,
    redact_headers,
)
from engine.simulator.scenarios import Scenario, ScenarioState
from machines.records import Chunk, Stall, TransportFault

__all__ = [
    "ConnectionGone",
    "IncomingRequest",
    "LoopbackHandler",
    "LoopbackServer",
    "ResponsesSimulator",
    "WholeAnswer",
    "asks_to_stream",
    "read_request_body",
    "whole_answer",
]

STALL_SLICE_S: Final = 0.02
"""Longest uninterrupted sleep inside a Stall; bounds how late a close or hang-up is noticed."""

SERVE_POLL_S: Final = 0.05
"""Poll interval of the accept loop, a fallback: ``close()`` wakes the loop with a connection."""

def asks_to_stream(method: str, path: str, body: Any) -> bool:
    """Whether a request is answered with an event stream: every request but a ``POST`` to a
    Responses path whose JSON body lacks ``"stream": true`` (a background ``GET`` asks in its
    query, and is answered as it asks)."""
    if method != "POST" or path not in RESPONSES_PATHS:
        return True
    return isinstance(body, dict) and body.get("stream") is True


#: The events that end a response, and carry it whole.
TERMINAL_EVENTS: Final = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)


@attrs.frozen(slots=True)
class WholeAnswer:
    """What a streamed reply comes to for a request that did not ask for a stream: a wait
    before the status line, then either the connection closed without a response (``dropped``)
    or one JSON body with its status."""

    wait_s: float
    dropped: bool
    status: int = 200
    body: bytes = b""


def _error_status(error: Mapping[str, Any]) -> int:
    """The HTTP status an ``error`` event's error object stands for, answered without a stream."""
    code, kind = str(error.get("code") or ""), str(error.get("type") or "")
    if "rate_limit" in code or "rate_limit" in kind or kind == "requests":
        return 429
    if kind == "invalid_request_error":
        return 400
    return 500


def _backfilled(response: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """``response`` with its ``output`` rebuilt from the done items when it came empty or null."""
    if isinstance(response.get("output"), list) and response["output"]:
        return response
    done: list[tuple[int, int, Any]] = []
    for event in events:
        index = event.get("output_index")
        if event.get("type") == "response.output_item.done" and type(index) is int:
            done.append((index, len(done), event.get("item")))
    return {**response, "output": [item for _, _, item in sorted(done, key=lambda d: d[:2])]}


def whole_answer(reply: Reply) -> WholeAnswer:
    """A streamed reply as the answer to a request that did not ask for a stream (see *Requests
    that do not ask for a stream* in the module docstring)."""
    wait_s = 0.0
    decoder = SseDecoder()
    events: list[dict[str, Any]] = []
    for step in reply.steps:
        if isinstance(step, Stall):
            wait_s += step.seconds
            continue
        if isinstance(step, TransportFault):
            break
        for event in decoder.feed(step.data):
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(payload, dict):
                events.append(payload)
                if payload.get("type") in TERMINAL_EVENTS or payload.get("type") == "error":
                    return _answer_of(events, wait_s)
    else:
        return _answer_of(events, wait_s)
    return WholeAnswer(wait_s, dropped=True)


def _answer_of(events: list[dict[str, Any]], wait_s: float) -> WholeAnswer:
    last = events[-1] if events else {}
    if last.get("type") in TERMINAL_EVENTS and isinstance(last.get("response"), dict):
        return WholeAnswer(wait_s, False, 200, orjson.dumps(_backfilled(last["response"], events)))
    if last.get("type") == "error":
        nested = last.get("error")
        error: dict[str, Any] = nested if isinstance(nested, dict) else last
        fields = {key: error.get(key) for key in ("message", "type", "param", "code")}
        return WholeAnswer(wait_s, False, _error_status(error), orjson.dumps({"error": fields}))
    return WholeAnswer(
        wait_s, False, 500,
        error_body("The response ended before it was complete.", type="server_error"),
    )


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
# HTTP plumbing, shared with the recording proxy (engine.simulator.recording_proxy)


class ConnectionGone(Exception):
    """A reply cannot go on: the client hung up or the server is closing."""


class _LoopbackHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: LoopbackServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if error is None or self.owner.closing.is_set():
            return  # sockets cut by close() fail in whatever way they fail
        if not isinstance(error, (ConnectionError, TimeoutError)):
            self.owner.record_server_error(error)


def read_request_body(rfile: io.BufferedIOBase, headers: Any) -> bytes:
    """A request's body as the client sent it: ``content-length`` bytes, or the chunks of a
    ``transfer-encoding: chunked`` body joined."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        pieces: list[bytes] = []
        while True:
            size_line = rfile.readline(65537)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(pieces)
            pieces.append(rfile.read(size))
            rfile.readline(65537)
    length = int(headers.get("content-length") or 0)
    return rfile.read(length) if length > 0 else b""


@attrs.frozen(slots=True)
class IncomingRequest:
    """A request as a loopback server read it: the path split from its query, the body as sent
    (``raw``) and parsed as JSON (``body``: None when empty or not JSON)."""

    method: str
    path: str
    query: str
    raw: bytes
    body: Any


class LoopbackHandler(http.server.BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 request handler on a loopback server: it writes no log lines, disables
    Nagle's algorithm (each chunk leaves at once), registers its connection with the server so
    that ``close()`` can cut it, reads each request (`IncomingRequest`) and hands it to
    :meth:`answer`, and knows how to write one chunk, wait while noticing a hang-up, and cut the
    connection with a FIN or an RST."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _LoopbackHTTPServer
    server_name = "streamfsm"

    # -- methods ---------------------------------------------------------------------------
    def do_POST(self) -> None:
        self.answer(self.read_request())

    def do_GET(self) -> None:
        self.answer(self.read_request())

    def do_PUT(self) -> None:
        self.answer(self.read_request())

    def do_DELETE(self) -> None:
        self.answer(self.read_request())

    def do_PATCH(self) -> None:
        self.answer(self.read_request())

    def read_request(self) -> IncomingRequest:
        """The request line's target and the body, read whole."""
        raw = read_request_body(self.rfile, self.headers)
        path, _, query = self.path.partition("?")
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return IncomingRequest(self.command, path, query, raw, body)

    def answer(self, request: IncomingRequest) -> None:
        """Answer one request (each server's own)."""
        raise NotImplementedError

    # -- quiet -----------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:
        return

    def version_string(self) -> str:
        return self.server_name

    # -- connection bookkeeping ------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.server.owner.register_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner.forget_connection(self.connection)

    # -- writing ---------------------------------------------------------------------------
    def write_chunk(self, data: bytes) -> None:
        """``data`` as one HTTP chunk, flushed at once (raises `ConnectionGone` when closing)."""
        if self.server.owner.closing.is_set():
            raise ConnectionGone
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunks(self) -> None:
        """The zero-length chunk that ends a chunked body."""
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def stall(self, seconds: float) -> None:
        """Send nothing for ``seconds``; raises `ConnectionGone` as soon as the server is closing
        or the client has hung up."""
        closing = self.server.owner.closing
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if closing.is_set():
                raise ConnectionGone
            if self.client_hung_up(min(STALL_SLICE_S, remaining)):
                raise ConnectionGone

    def client_hung_up(self, wait_s: float) -> bool:
        """Wait up to ``wait_s`` for the socket to turn readable; True if the client closed it."""
        try:
            readable, _, _ = select.select([self.connection], [], [], wait_s)
            if not readable:
                return False
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except (OSError, ValueError):
            return True

    def drop(self, mode: str = "fin") -> None:
        """Close the connection mid-body: an orderly shutdown (FIN), or a reset (RST)."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
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


class _ResponsesRequestHandler(LoopbackHandler):
    server_name = "streamfsm-simulator"
    request_id: str = "req_sim_0000"

    def answer(self, incoming: IncomingRequest) -> None:
        simulator = self.server.owner
        assert isinstance(simulator, ResponsesSimulator)
        path, body = incoming.path, incoming.body
        request, reply = simulator._admit(self.command, path, body, self.headers, incoming.query)
        self.request_id = f"req_sim_{request.n:04d}"
        if reply.headers_after_s:
            try:
                self.stall(reply.headers_after_s)
            except (ConnectionGone, ConnectionError):
                self.close_connection = True
                return
        if reply.status >= 400 or not reply.is_stream:
            self._send_fixed(reply)
        elif asks_to_stream(self.command, path, body):
            self._send_stream(reply)
        else:
            self._send_whole(reply)

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
        body = reply.body if reply.body is not None else default_error_body(reply.status)
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

    def _send_whole(self, reply: Reply) -> None:
        """A streamed reply for a request that did not ask for a stream: one JSON body."""
        answer = whole_answer(reply)
        try:
            self.stall(answer.wait_s)
        except (ConnectionGone, ConnectionError):
            self.close_connection = True
            return
        if answer.dropped:
            self.drop(reply.drop)
            return
        self._send_fixed(attrs.evolve(reply, status=answer.status, body=answer.body, steps=()))

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
                    self.write_chunk(step.data)
                elif isinstance(step, Stall):
                    self.stall(step.seconds)
                elif isinstance(step, TransportFault):
                    self.drop(reply.drop)
                    return
                else:  # pragma: no cover - guarded by the type of Reply.steps
                    raise TypeError(f"unknown step {step!r}")
            self.end_chunks()
        except (ConnectionGone, ConnectionError):
            self.close_connection = True


# --------------------------------------------------------------------------------------------
# A server on loopback


class LoopbackServer:
    """An HTTP server on ``127.0.0.1`` in a daemon thread, one thread per connection: what the
    simulator and the recording proxy share.

    ``port=0`` picks a free port. ``log``: a path (appended to) or an open text file that gets
    one JSON line per request (:meth:`log_request`). The server starts on
    ``__enter__``/:meth:`start`; :meth:`close` stops it promptly, cutting every open connection
    (a reply in progress included). A subclass names its request handler (``handler``)."""

    handler: type[LoopbackHandler] = LoopbackHandler
    thread_name = "loopback-server"

    def __init__(
        self, port: int = 0, *, log: str | os.PathLike[str] | IO[str] | None = None
    ) -> None:
        self._requested_port = port
        self._log_target = log
        self._log: IO[str] | None = None
        self._owns_log = False
        self._lock = threading.Lock()
        self._started_at = time.monotonic()
        self._requests: list[RecordedRequest] = []
        self._server_errors: list[BaseException] = []
        self._connections: set[socket.socket] = set()
        #: Set once :meth:`close` was called: replies in progress stop.
        self.closing: Final = threading.Event()
        self._httpd: _LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Bind and start serving in a daemon thread. Idempotent while running."""
        if self._httpd is not None:
            return self
        if self.closing.is_set():
            raise RuntimeError(f"a closed {type(self).__name__} cannot be restarted")
        httpd = _LoopbackHTTPServer(("127.0.0.1", self._requested_port), self.handler)
        httpd.owner = self
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
            name=f"{self.thread_name}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, cut every open connection, and wait briefly for the threads."""
        self.closing.set()
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

    def _accept_loop(self, httpd: _LoopbackHTTPServer) -> None:
        """Accept connections (each served on its own thread) until the server is closing."""
        httpd.timeout = SERVE_POLL_S
        while not self.closing.is_set():
            httpd.handle_request()

    @staticmethod
    def _wake_accept_loop(httpd: _LoopbackHTTPServer) -> None:
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
            while not self.closing.wait(0.25):
                pass
        finally:
            self.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what callers read -----------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port the server listens on (raises ``RuntimeError`` when not running)."""
        if self._httpd is None:
            raise RuntimeError(f"the {type(self).__name__} is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The ``base_url`` for ``openai.OpenAI``: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return sorted(self._requests, key=lambda request: request.n)

    @property
    def server_errors(self) -> list[BaseException]:
        """Unexpected exceptions raised while serving (a copy); empty when all went well."""
        with self._lock:
            return list(self._server_errors)

    def elapsed(self) -> float:
        """Seconds since the server started."""
        return time.monotonic() - self._started_at

    # -- called by request handlers --------------------------------------------------------
    def log_request(self, request: RecordedRequest) -> None:
        """Keep ``request`` and append it to the log, if there is one (the caller holds the
        lock, so that the log's order is the order requests were numbered in)."""
        self._requests.append(request)
        if self._log is not None:
            try:
                self._log.write(orjson.dumps(request.to_log_json()).decode() + "\n")
                self._log.flush()
            except (OSError, ValueError) as error:
                self._server_errors.append(error)

    def record_server_error(self, error: BaseException) -> None:
        with self._lock:
            self._server_errors.append(error)

    def register_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def forget_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


# --------------------------------------------------------------------------------------------
# The simulator


class ResponsesSimulator(LoopbackServer):
    """Serves a scenario (or a :class:`Script`) as a Responses-API endpoint on ``127.0.0.1``.

    ``scenario``: an :class:`engine.simulator.scenarios.Scenario`, or a :class:`Script` (each reply
    used once, in order). ``port=0`` picks a free port. ``repeat=True`` starts a script over once
    it is used up instead of answering 500 (useful for a long-running ``serve``). ``log``: a path
    (appended to) or an open text file that gets one JSON line per request. The server starts on
    ``__enter__``/:meth:`start` in a daemon thread; :meth:`close` stops it promptly, cutting any
    reply in progress (a stalled one included).
    """

    handler = _ResponsesRequestHandler
    thread_name = "responses-simulator"

    def __init__(
        self,
        scenario: Scenario | Script,
        port: int = 0,
        *,
        repeat: bool = False,
        log: str | os.PathLike[str] | IO[str] | None = None,
    ) -> None:

        if isinstance(scenario, Script):
            scenario = Scenario.from_script(scenario, repeat=repeat)
        elif isinstance(scenario, Scenario):
            if repeat and not scenario.repeat:
                scenario = attrs.evolve(scenario, repeat=True)
        else:
            raise TypeError(
                f"scenario must be a Scenario or a Script, not {type(scenario).__name__}"
            )
        super().__init__(port, log=log)
        self.scenario: Final = scenario
        self.repeat: Final = scenario.repeat
        self._state = ScenarioState(scenario)
        self._replies_used = 0
        self._request_count = 0
        self._background: dict[str, BackgroundResponse] = {}

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
                t=self.elapsed(),
                status=reply.status,
                query=query,
            )
            self.log_request(request)
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
        if (
            reply.serves_background
            and isinstance(body, dict)
            and body.get("background") is True
            and body.get("stream") is True
        ):
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
        return stream_events(background.events_after(starting_after), background.headers)

    def _cancel_background(self, response_id: str) -> Reply:
        """``POST /v1/responses/{id}/cancel``: mark it cancelled, answer its response object."""
        background = self._background.get(response_id)
        if background is None:
            return self._unknown_response(response_id)
        background = attrs.evolve(background, cancelled=True)
        self._background[response_id] = background
        return _json_reply(background.cancelled_response())
