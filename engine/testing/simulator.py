"""A scripted OpenAI Responses-API endpoint on loopback, for real clients and real sockets.

Theory of operation
===================

The simulator is a genuine HTTP/1.1 server (``http.server.ThreadingHTTPServer``) bound to
``127.0.0.1``. It does not imitate a model; it plays a *script*. A :class:`Script` is an ordered
tuple of :class:`Reply` records, and each POST to ``/v1/responses`` (or ``/responses``) takes the
next unused reply, so a script of three replies describes three consecutive attempts of one turn
(for example: drop, drop, success). A request that arrives after the script is used up gets an
HTTP 500 with an OpenAI-shaped error body saying so (``code: "script_exhausted"``), unless the
simulator was built with ``repeat=True``, in which case the script starts over.

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
    The connection is shut down at once, in the middle of the chunked body, without the
    terminating zero-length chunk. The client's HTTP parser reports an incomplete body.

Unless a drop ended it, a streaming reply ends with the terminating zero-length chunk and the
connection stays open for keep-alive reuse, exactly like a real server.

A reply with ``body`` set is sent whole with a ``content-length``, as ``application/json``; a
non-200 reply without a body gets a generic OpenAI-shaped error body for its status.

What the openai client raises (openai 3.x over httpx2; checked by tests/test_simulator.py)
-----------------------------------------------------------------------------------------

* A drop while iterating ``response.iter_bytes()`` of ``with_streaming_response.create(...)``:
  ``httpx2.RemoteProtocolError`` ("peer closed connection without sending complete message
  body (incomplete chunked read)"). ``iter_bytes()`` passes transport errors through untouched.
  Iterating the SDK's own ``Stream`` (``create(stream=True)``) wraps the same fault as
  ``openai.APIConnectionError`` with the httpx2 error as ``__cause__``.
* ``Stall`` longer than the client's read timeout: ``httpx2.ReadTimeout`` from ``iter_bytes()``
  (``openai.APITimeoutError`` when iterating the SDK ``Stream``). A stall *before the response
  headers* is not possible here: headers are always sent before the first step.
* Non-2xx status: ``openai.APIStatusError`` (the subclass for the status, e.g.
  ``InternalServerError`` for 500, ``RateLimitError`` for 429, ``AuthenticationError`` for 401)
  raised by ``create(...)`` itself, with ``.status_code`` and ``.body`` (the ``error`` object of the
  JSON body). The openai client retries 408/409/429/5xx on its own unless ``max_retries=0``; each
  retry consumes the next reply of the script.

Every request is recorded as a :class:`RecordedRequest` (method, path, parsed JSON body, headers)
before its reply is played, with secrets redacted: the values of ``authorization``, ``cookie`` and
any header whose name contains ``key`` or ``token`` become ``"[redacted]"``.

The simulator is quiet: it writes nothing to stdout or stderr. Exceptions raised while serving a
request (other than the client hanging up) are kept in :attr:`ResponsesSimulator.server_errors`.

Usage::

    with ResponsesSimulator(script) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="test", max_retries=0)
        ...
        sim.requests  # what the client sent

or, for a command-line server, ``ResponsesSimulator(script, port=8787).serve_forever()``, which
blocks until :meth:`ResponsesSimulator.close` is called from another thread or the process is
interrupted.
"""

from __future__ import annotations

import http.server
import select
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

import attrs
import orjson

from machines.records import Chunk, Stall, TransportFault

__all__ = [
    "RecordedRequest",
    "Reply",
    "ResponsesSimulator",
    "Script",
    "Step",
    "error_body",
    "redact_headers",
]

RESPONSES_PATHS: Final = frozenset({"/v1/responses", "/responses"})
REDACTED: Final = "[redacted]"
STALL_SLICE_S: Final = 0.02
"""Longest uninterrupted sleep inside a Stall; bounds how late a close or hang-up is noticed."""
SERVE_POLL_S: Final = 0.05
"""Poll interval of the accept loop, a fallback: ``close()`` wakes the loop with a connection."""

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
    server slow to answer at all).
    """

    status: int = 200
    steps: tuple[Step, ...] = attrs.field(default=(), converter=_steps)
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_headers_tuple)
    headers_after_s: float = attrs.field(default=0.0, validator=_non_negative)

    @property
    def is_stream(self) -> bool:
        return self.body is None and (self.status == 200 or bool(self.steps))


@attrs.frozen
class Script:
    """The replies for consecutive requests, in order, with a name and a one-line description."""

    replies: tuple[Reply, ...] = attrs.field(converter=tuple)
    name: str = ""
    description: str = ""


@attrs.frozen
class RecordedRequest:
    """A request as the simulator received it, secrets redacted.

    ``body`` is the parsed JSON body (``None`` if it was empty or not JSON); ``headers`` maps
    lower-cased header names to values; ``reply_index`` is the position in the script of the reply
    it got (``None`` for requests the script did not answer: wrong path, or script exhausted).
    """

    method: str
    path: str
    body: Any
    headers: dict[str, str]
    reply_index: int | None


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
        path = self.path.split("?", 1)[0]
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        _, reply = simulator._admit(self.command, path, body, self.headers)
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
                "x-request-id": self.server.simulator._request_id(),
            },
        )
        self.wfile.write(body)
        self.wfile.flush()

    def _send_stream(self, reply: Reply) -> None:
        simulator = self.server.simulator
        self._send_headers(
            reply,
            {
                "content-type": "text/event-stream; charset=utf-8",
                "transfer-encoding": "chunked",
                "cache-control": "no-cache",
                "x-request-id": simulator._request_id(),
            },
        )
        try:
            for step in reply.steps:
                if isinstance(step, Chunk):
                    self._write_chunk(step.data)
                elif isinstance(step, Stall):
                    self._stall(step.seconds)
                elif isinstance(step, TransportFault):
                    self._drop()
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
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _drop(self) -> None:
        self.close_connection = True
        self.wfile.flush()
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# The simulator


class ResponsesSimulator:
    """Serves a :class:`Script` as a Responses-API endpoint on ``127.0.0.1``.

    ``port=0`` picks a free port. ``repeat=True`` starts the script over once it is used up
    instead of answering 500 (useful for a long-running ``serve``). The server starts on
    ``__enter__``/:meth:`start` in a daemon thread; :meth:`close` stops it promptly, cutting any
    reply in progress (a stalled one included).
    """

    def __init__(self, script: Script, port: int = 0, *, repeat: bool = False) -> None:
        if not isinstance(script, Script):
            raise TypeError(f"script must be a Script, not {type(script).__name__}")
        self.script: Final = script
        self.repeat: Final = repeat
        self._requested_port = port
        self._lock = threading.Lock()
        self._next_reply = 0
        self._request_count = 0
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
        self._httpd = httpd
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
            with socket.create_connection(httpd.server_address[:2], timeout=0.2):
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
        """How many script replies have been handed out (counting repeats)."""
        with self._lock:
            return self._next_reply

    # -- called by the request handler -----------------------------------------------------
    def _admit(self, method: str, path: str, body: Any, headers: Any) -> tuple[int | None, Reply]:
        """Pick the reply for one request and record the request, atomically.

        Only ``POST`` to a Responses path consumes a script reply; anything else gets a 404/405
        error body and leaves the script where it was.
        """
        with self._lock:
            index, reply = self._choose_reply(method, path)
            self._requests.append(
                RecordedRequest(
                    method=method,
                    path=path,
                    body=body,
                    headers=redact_headers(headers),
                    reply_index=index,
                )
            )
        return index, reply

    def _choose_reply(self, method: str, path: str) -> tuple[int | None, Reply]:
        if path not in RESPONSES_PATHS:
            message = f"Invalid URL ({method} {path})"
            return None, Reply(status=404, body=error_body(message, type="invalid_request_error"))
        if method != "POST":
            message = f"Method {method} not allowed on {path}"
            return None, Reply(status=405, body=error_body(message, type="invalid_request_error"))
        taken = self._next_reply
        self._next_reply += 1
        count = len(self.script.replies)
        if self.repeat and count:
            return taken % count, self.script.replies[taken % count]
        if taken < count:
            return taken, self.script.replies[taken]
        label = f" {self.script.name!r}" if self.script.name else ""
        message = (
            f"Simulator script{label} is exhausted: request {taken + 1} arrived but the script "
            f"holds {count} repl{'y' if count == 1 else 'ies'}."
        )
        return None, Reply(
            status=500, body=error_body(message, type="server_error", code="script_exhausted")
        )

    def _request_id(self) -> str:
        with self._lock:
            self._request_count += 1
            return f"req_sim_{self._request_count:04d}"

    def _record_server_error(self, error: BaseException) -> None:
        with self._lock:
            self._server_errors.append(error)

    def _register_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _forget_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


def script_from_trace(trace: Any) -> Script:
    """A recorded turn as a script: each attempt's chunks, faults and HTTP errors, in order.

    Chunks keep their recorded boundaries; a drop or connect error becomes a `TransportFault("drop")`; a read or
    idle timeout becomes a long `Stall`; an interrupt or clean end ends the body."""
    from machines.records import Chunk
    from engine.log.trace import input_from_json
    from machines.records import HttpError, IdleTimeout, TransportFault

    replies: list[Reply] = []
    by_attempt: dict[int, list[Any]] = {}
    for record in trace.inputs():
        by_attempt.setdefault(record["attempt"], []).append(input_from_json(record))
    for number in sorted(by_attempt):
        steps: list[Step] = []
        reply: Reply | None = None
        for item in by_attempt[number]:
            if isinstance(item, Chunk):
                if item.data:
                    steps.append(Chunk(item.data))
            elif isinstance(item, HttpError):
                body = item.body if isinstance(item.body, (dict, list)) else {"error": {"message": str(item.body)}}
                reply = Reply(status=item.status, body=orjson.dumps(body))
                break
            elif isinstance(item, TransportFault) and item.kind != "read_timeout":
                steps.append(TransportFault("drop"))
                break
            elif isinstance(item, (TransportFault, IdleTimeout)):
                steps.append(Stall(30.0))
                break
            else:  # end of stream, interrupt
                break
        replies.append(reply or Reply(steps=tuple(steps)))
    return Script(replies=tuple(replies), name=trace.path, description=f"replies recorded in {trace.path}")
