"""A Responses-API endpoint on loopback that plays a scenario, for real clients and real sockets.

Theory of operation
===================

The simulator is a genuine HTTP/1.1 server (``http.server.ThreadingHTTPServer``) bound to
``127.0.0.1``. It does not imitate a model; it plays a *scenario*
(:class:`engine.testing.scenarios.Scenario`): an ordered list of rules, each pairing conditions
(the request holds a tool output, it is the Nth request, the rule was used fewer than N times)
with a :class:`Reply`. Each POST to ``/v1/responses`` (or ``/responses``) gets the reply of the
first rule whose conditions hold; a request no rule matches gets an HTTP 500 with an
OpenAI-shaped error body saying so. Scenario files (``streamfsm serve FILE.toml``) and their
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
from collections.abc import Iterable, Mapping
from typing import IO, TYPE_CHECKING, Any, Final, Literal

import attrs
import orjson

from machines.records import Chunk, Stall, TransportFault

if TYPE_CHECKING:
    from engine.testing.scenarios import Scenario

__all__ = [
    "RecordedRequest",
    "Reply",
    "ResponsesSimulator",
    "Script",
    "Step",
    "TRACE_STALL_S",
    "error_body",
    "redact_headers",
    "script_from_trace",
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
    """

    status: int = 200
    steps: tuple[Step, ...] = attrs.field(default=(), converter=_steps)
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_headers_tuple)
    headers_after_s: float = attrs.field(default=0.0, validator=_non_negative)
    drop: Literal["fin", "rst"] = attrs.field(
        default="fin", validator=attrs.validators.in_(("fin", "rst"))
    )

    @property
    def is_stream(self) -> bool:
        """Whether this reply is sent as an event stream (else as a whole JSON body)."""
        return self.body is None and (self.status == 200 or bool(self.steps))


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
    def replies_used(self) -> int:
        """How many replies have been handed out (counting repeats)."""
        with self._lock:
            return self._replies_used

    # -- called by the request handler -----------------------------------------------------
    def _admit(
        self, method: str, path: str, body: Any, headers: Any, query: str = ""
    ) -> tuple[RecordedRequest, Reply]:
        """Pick the reply for one request, record the request and log it, atomically.

        Only ``POST`` to a Responses path is answered from the scenario; anything else gets a
        404/405 error body and leaves the scenario where it was.
        """
        redacted = redact_headers(headers)
        with self._lock:
            index, reply = self._choose_reply(method, path, body, redacted)
            self._request_count += 1
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
        self, method: str, path: str, body: Any, headers: Mapping[str, str]
    ) -> tuple[int | None, Reply]:
        if path not in RESPONSES_PATHS:
            message = f"Invalid URL ({method} {path})"
            return None, Reply(status=404, body=error_body(message, type="invalid_request_error"))
        if method != "POST":
            message = f"Method {method} not allowed on {path}"
            return None, Reply(status=405, body=error_body(message, type="invalid_request_error"))
        index, reply = self._state.choose(body, headers)
        if index is not None:
            self._replies_used += 1
        return index, reply

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
