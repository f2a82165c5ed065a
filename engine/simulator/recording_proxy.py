"""A recording proxy: any client's requests, forwarded to a real endpoint and saved as traces.

    streamfsm record --upstream https://api.openai.com/v1 --out cassettes/checkout
    OPENAI_BASE_URL=http://127.0.0.1:8766/v1 my-agent ...        # any client, any language

Theory of operation
===================

`RecordingProxy` is an HTTP/1.1 server on ``127.0.0.1`` (the simulator's own plumbing,
`engine.simulator.server.LoopbackServer`), one thread per connection. Each request it receives
is one *exchange*:

1. It is numbered in arrival order (1, 2, ...) and sent on to the upstream: the path after the
   proxy's ``/v1`` is appended to the upstream URL (``https://api.openai.com/v1`` + ``/responses``),
   with the client's method, query, body and headers, except the hop-by-hop ones, ``host`` and
   ``accept-encoding`` (the upstream is asked for ``identity``, so the bytes recorded are the
   bytes of the event stream). The moment it was sent is kept.
2. The answer goes back as it arrives: the status line and headers at once, then each read from
   the upstream (``read1``: what one network read gave, never more than one HTTP chunk of the
   upstream's body) as one HTTP chunk to the client, written and flushed before the next read.
   Nothing is buffered or coalesced, so the client sees the upstream's chunk boundaries and
   timing, give or take the loopback hop.
3. What the proxy observed is what a stream attempt observes, as the same records
   (`machines.records`), each with the seconds since the request was sent: every read a `Chunk`;
   then `EndOfStream` when the body ended, a `TransportFault` when it broke (``drop``) or the
   upstream could not be reached (``connect_error``: the client's connection is then closed
   without a response), an `HttpError` for a status of 400 or above (the body, parsed when it is
   JSON, and the headers that say when to try again; the body is still passed on as it comes),
   or an `Interrupt` when the client hung up first (a watcher notices it while the upstream is
   silent, and the upstream connection is closed).
4. When the exchange ends, those records are written as one trace file in the output folder,
   ``NNNN-METHOD-PATH.jsonl`` (NNNN the arrival number), by the one trace writer
   (`engine.log.trace.TraceWriter`, through the turn recording every driver uses), with the
   client's credentials (its ``Authorization``, API-key, token and cookie headers and query
   parameters, and the request's credential-named fields) as the secrets to mask.

A recorded request is a ``consume`` trace
-----------------------------------------
An exchange is one attempt of raw inputs, which is what ``consume`` records: so the trace's
header says ``"entry": "consume"`` and holds a single-attempt policy (no stream retry, no
fallback, no HTTP retry), and `streamfsm replay` replays it like any other (the stream-attempt
machine decides anew on the recorded chunks). The inputs after the one that ended the attempt
(bytes after ``response.completed``) are passed on to the client but not kept, as a turn would
not read them. The header also holds ``"exchange"``: ``n``, ``method``, ``path`` (with its query),
``upstream`` (the upstream URL without credentials), ``sent_t`` (when the request was sent,
seconds since the proxy started), ``status`` and ``content_type`` of the answer (None when none
came) and ``headers_t`` (seconds from sending to the status line). `streamfsm serve DIR` serves
such a folder back in order (`engine.simulator.scenarios.load_fixture`), an answer that was not an
event stream as a plain JSON body, and under ``--timing recorded`` with the recorded wait for the
status line and the pauses between reads.

A request still in progress when the proxy closes is cut and not saved.
"""

from __future__ import annotations

import http.client
import os
import re
import select
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import IO, Any, Final

import attrs
import orjson

from engine.drivers.recording import TurnRecording
from engine.drivers.transport import kept_headers
from engine.log.redaction import field_secrets, is_secret_name
from engine.simulator.replies import RecordedRequest, redact_headers
from engine.simulator.server import (
    ConnectionGone,
    IncomingRequest,
    LoopbackHandler,
    LoopbackServer,
)
from machines.records import (
    Chunk,
    EndOfStream,
    Fault,
    HttpError,
    Interrupt,
    TransportFault,
    TurnPolicy,
)

__all__ = [
    "EXCHANGE_POLICY",
    "READ_SIZE",
    "Exchange",
    "RecordingProxy",
    "UpstreamURL",
    "trace_name",
]

#: One exchange is one attempt: no stream retry, no fallback, no HTTP retry.
EXCHANGE_POLICY: Final = TurnPolicy(max_stream_retries=0, fallback=False, max_http_retries=0)
#: The most one read from the upstream asks for (a read returns what has arrived, up to this).
READ_SIZE: Final = 65536
#: How often the watcher looks for a client that hung up while the upstream is silent.
WATCH_S: Final = 0.05
#: Request headers not passed on: hop-by-hop, the proxy's own host, and the encoding (the
#: upstream is asked for identity, so the recorded bytes are the event stream itself).
_NOT_FORWARDED: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
     "te", "trailer", "transfer-encoding", "upgrade", "host", "accept-encoding", "content-length"}
)
#: Response headers not passed back: the proxy frames the body itself (chunked).
_NOT_RETURNED: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade", "content-length"}
)


@attrs.frozen(slots=True)
class UpstreamURL:
    """The endpoint requests are forwarded to: ``scheme://host:port/base`` (``base`` without a
    trailing slash; the proxy's ``/v1`` is replaced by it)."""

    scheme: str
    host: str
    port: int
    base: str

    @classmethod
    def parse(cls, url: str) -> UpstreamURL:
        """An ``http``/``https`` URL; ``ValueError`` (one line) for anything else."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"the upstream must be an http:// or https:// URL, not {url!r}")
        if parsed.query or parsed.fragment:
            raise ValueError(f"the upstream URL must not hold a query or fragment: {url!r}")
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"the upstream URL has an invalid port: {url!r}") from None
        return cls(parsed.scheme, parsed.hostname, port, parsed.path.rstrip("/"))

    def __str__(self) -> str:
        default = 443 if self.scheme == "https" else 80
        where = self.host if self.port == default else f"{self.host}:{self.port}"
        return f"{self.scheme}://{where}{self.base}"

    def target(self, path: str, query: str) -> str:
        """The upstream's request target for the proxy's ``path``: what follows ``/v1`` (or the
        whole path, when it does not start with ``/v1``) appended to the base."""
        if path == "/v1" or path.startswith("/v1/"):
            path = path[3:]
        return f"{self.base}{path}" + (f"?{query}" if query else "")

    def connect(self, timeout_s: float) -> http.client.HTTPConnection:
        """A new connection to the upstream (not yet opened)."""
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout_s)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)


def trace_name(n: int, method: str, path: str) -> str:
    """``NNNN-METHOD-PATH.jsonl``: the arrival number first, so names sort in arrival order."""
    slug = re.sub(r"[^a-z0-9_]+", "-", path.lower().removeprefix("/v1/")).strip("-")[:60]
    return f"{n:04d}-{method.lower()}-{slug or 'root'}.jsonl"


def credentials_of(headers: Any, query: str, body: Any) -> list[str]:
    """The secrets a client's request carries: the values of credential-named headers (a
    ``Bearer`` token also without its scheme), of credential-named query parameters, and of
    credential-named fields of the JSON body."""
    named = {str(name): str(value) for name, value in headers.items()}
    for name, values in urllib.parse.parse_qs(query, keep_blank_values=False).items():
        if is_secret_name(name):
            named[name] = values[-1]
    return sorted({*field_secrets(named), *field_secrets(body)}, key=len, reverse=True)


@attrs.define
class Exchange:
    """One request and what came back, as the proxy observed it: the inputs of one attempt."""

    n: int
    method: str
    path: str
    query: str
    body: Any
    sent_t: float
    sent_at: float
    secrets: list[str]
    inputs: list[tuple[Chunk | HttpError | TransportFault | EndOfStream | Interrupt, float]] = (
        attrs.Factory(list)
    )
    status: int | None = None
    content_type: str | None = None
    headers_t: float | None = None
    #: The proxy closed while the exchange was in progress (it is not saved).
    cut: bool = False

    def since_sent(self) -> float:
        """Seconds since the request was sent upstream."""
        return round(time.monotonic() - self.sent_at, 6)

    def observe(
        self,
        item: Chunk | HttpError | TransportFault | EndOfStream | Interrupt,
        t: float | None = None,
    ) -> None:
        """Keep one observation with its clock reading (default: now)."""
        self.inputs.append((item, self.since_sent() if t is None else t))

    def broke(self, item: TransportFault | Interrupt, closing: threading.Event) -> None:
        """Keep the observation that broke the exchange; when the proxy is closing, the break
        is the proxy's own doing, and the exchange is not saved."""
        self.cut = closing.is_set()
        self.observe(item)

    def header(self, upstream: UpstreamURL) -> dict[str, Any]:
        """The ``exchange`` field of the trace header (see the module docstring)."""
        return {
            "n": self.n,
            "method": self.method,
            "path": f"{self.path}?{self.query}" if self.query else self.path,
            "upstream": str(upstream),
            "sent_t": round(self.sent_t, 6),
            "status": self.status,
            "content_type": self.content_type,
            "headers_t": self.headers_t,
        }

    def write(self, path: str | os.PathLike[str], upstream: UpstreamURL) -> None:
        """Write the exchange as a trace: its inputs through one attempt of the stream machine,
        up to the input that ended it, masked with the client's credentials."""
        request = self.body if isinstance(self.body, dict) else None
        recording = TurnRecording(EXCHANGE_POLICY, None, entry="consume", request=request)
        recording.header["exchange"] = self.header(upstream)
        pending = iter(self.inputs)
        for feed in recording.attempts():
            for item, t in pending:
                if feed.observe(item, t):
                    break
            else:
                feed.observe(Interrupt(), self.since_sent())  # nothing said how it ended
        recording.finish(path, self.secrets)


class _ProxyHandler(LoopbackHandler):
    server_name = "streamfsm-record"

    def do_HEAD(self) -> None:
        self.answer(self.read_request())

    def do_OPTIONS(self) -> None:
        self.answer(self.read_request())

    def answer(self, request: IncomingRequest) -> None:
        """Forward the request, stream the answer back, save the exchange."""
        proxy = self.server.owner
        assert isinstance(proxy, RecordingProxy)
        exchange = proxy.open_exchange(
            request.method, request.path, request.query, request.body, self.headers
        )
        try:
            upstream = proxy.upstream.connect(proxy.connect_timeout_s)
            watcher = _HangUpWatcher(self.connection, upstream)
            try:
                self._exchange(proxy, exchange, upstream, request.raw, watcher)
            finally:
                watcher.stop()
                upstream.close()
            if exchange.inputs and not exchange.cut:
                proxy.save(exchange)
        finally:
            proxy.close_exchange(exchange)

    def _exchange(
        self,
        proxy: RecordingProxy,
        exchange: Exchange,
        upstream: http.client.HTTPConnection,
        raw: bytes,
        watcher: _HangUpWatcher,
    ) -> None:
        headers = {
            name: value for name, value in self.headers.items()
            if name.lower() not in _NOT_FORWARDED
        }
        target = proxy.upstream.target(exchange.path, exchange.query)
        try:
            upstream.connect()
            if upstream.sock is not None:
                upstream.sock.settimeout(proxy.read_timeout_s)
            watcher.start()
            upstream.request(self.command, target, body=raw or None, headers=headers)
            answer = upstream.getresponse()
        except (OSError, http.client.HTTPException) as error:
            exchange.broke(self._broken(error, watcher, Fault.CONNECT_ERROR), proxy.closing)
            self.drop()
            return
        exchange.headers_t = exchange.since_sent()
        exchange.status = answer.status
        exchange.content_type = answer.getheader("content-type")
        proxy.note_status(exchange)
        self._send_head(answer)
        if self.command == "HEAD" or answer.status in (204, 304):
            exchange.observe(EndOfStream())
            return
        failed = answer.status >= 400
        error_body: list[bytes] = []
        broken: Interrupt | TransportFault | None
        while True:
            try:
                data = answer.read1(READ_SIZE)
            except (OSError, http.client.HTTPException) as error:
                data, broken = b"", self._broken(error, watcher, Fault.DROP)
            else:
                broken = Interrupt() if not data and watcher.hung_up else None
            if broken is not None and not failed:
                exchange.broke(broken, proxy.closing)
                self.drop()
                return
            if not data:
                break
            if failed:
                error_body.append(data)
            else:
                exchange.observe(Chunk(data))
            try:
                self.write_chunk(data)
            except (ConnectionGone, OSError):
                if not failed:
                    exchange.broke(Interrupt(), proxy.closing)
                    self.close_connection = True
                    return
                break
        if failed:
            exchange.observe(_http_error(answer, b"".join(error_body)), exchange.headers_t)
        else:
            exchange.observe(EndOfStream())
        try:
            self.end_chunks()
        except OSError:
            self.close_connection = True

    @staticmethod
    def _broken(
        error: BaseException, watcher: _HangUpWatcher, otherwise: Fault
    ) -> Interrupt | TransportFault:
        """What an exchange that broke observed: the client hanging up (the watcher closed the
        upstream connection), a timeout, or `otherwise`."""
        if watcher.hung_up:
            return Interrupt()
        if isinstance(error, TimeoutError):
            return TransportFault(Fault.READ_TIMEOUT, type(error).__name__)
        return TransportFault(otherwise, type(error).__name__)

    def _send_head(self, answer: http.client.HTTPResponse) -> None:
        self.send_response_only(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in _NOT_RETURNED:
                self.send_header(name, value)
        if not (self.command == "HEAD" or answer.status in (204, 304)):
            self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.flush()


def _http_error(answer: http.client.HTTPResponse, body: bytes) -> HttpError:
    """The upstream's error answer as the drivers record one: its status, its body (parsed when
    it is JSON) and the headers that say when to try again."""
    parsed: Any
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = body.decode("utf-8", "replace")
    headers = kept_headers(dict(answer.getheaders()))
    return HttpError(answer.status, parsed, headers, round(time.time(), 3))


class _HangUpWatcher:
    """Notices a client that hangs up while the proxy waits for the upstream, and then closes
    the upstream connection so that the waiting read returns at once."""

    def __init__(self, client: socket.socket, upstream: http.client.HTTPConnection) -> None:
        self._client = client
        self._upstream = upstream
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.hung_up = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="record-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                readable, _, _ = select.select([self._client], [], [], WATCH_S)
                if not readable:
                    continue
                gone = self._client.recv(1, socket.MSG_PEEK) == b""
            except (OSError, ValueError):
                gone = True
            if not gone:
                return  # the client is sending its next request: it is still there
            self.hung_up = True
            sock = self._upstream.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return


class RecordingProxy(LoopbackServer):
    """Forwards every request to ``upstream`` and saves each exchange as a trace in ``out``.

    ``upstream``: the endpoint's base URL (``https://api.openai.com/v1``); the proxy's own
    ``base_url`` (``http://127.0.0.1:PORT/v1``) stands in for it. ``out``: the folder the traces
    go to (created if missing; refused when it already holds traces, so that a folder is one
    recording served back in order). ``connect_timeout_s`` bounds connecting to the upstream;
    ``read_timeout_s`` (None: wait as long as the client does) bounds each wait for it.
    ``log``: as for the simulator, one JSON line per request. :attr:`requests` lists the
    requests with the status the upstream answered; :attr:`traces` the files written so far.
    """

    handler = _ProxyHandler
    thread_name = "recording-proxy"

    def __init__(
        self,
        upstream: str,
        out: str | os.PathLike[str],
        port: int = 0,
        *,
        connect_timeout_s: float = 30.0,
        read_timeout_s: float | None = None,
        log: str | os.PathLike[str] | IO[str] | None = None,
    ) -> None:
        super().__init__(port, log=log)
        self.upstream: Final = UpstreamURL.parse(upstream)
        self.out: Final = Path(out)
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._count = 0
        self._traces: list[Path] = []
        self._pending: dict[int, RecordedRequest] = {}
        self._open = 0
        self._all_closed = threading.Condition(self._lock)

    def start(self) -> RecordingProxy:
        """Check the output folder, then start serving."""
        if self._httpd is None:
            if self.out.exists() and not self.out.is_dir():
                raise ValueError(f"{self.out} is not a folder")
            if self.out.is_dir() and any(self.out.glob("*.jsonl")):
                raise ValueError(
                    f"{self.out} already holds traces: record into a new or empty folder"
                )
            self.out.mkdir(parents=True, exist_ok=True)
        super().start()
        return self

    def close(self, wait_s: float = 10.0) -> None:
        """Stop: cut the exchanges in progress (they are not saved), then wait up to ``wait_s``
        for the traces of those that had ended to be written."""
        super().close()
        with self._all_closed:
            self._all_closed.wait_for(lambda: self._open == 0, timeout=wait_s)

    @property
    def traces(self) -> list[Path]:
        """The trace files written so far, in arrival order of their requests."""
        with self._lock:
            return sorted(self._traces)

    # -- called by the request handler -----------------------------------------------------
    def open_exchange(
        self, method: str, path: str, query: str, body: Any, headers: Any
    ) -> Exchange:
        """Number a request in arrival order and note when it is sent."""
        with self._lock:
            self._count += 1
            self._open += 1
            n = self._count
        exchange = Exchange(
            n, method, path, query, body, sent_t=self.elapsed(), sent_at=time.monotonic(),
            secrets=credentials_of(headers, query, body),
        )
        request = RecordedRequest(
            method=method, path=path, body=body, headers=redact_headers(headers),
            reply_index=None, n=n, t=exchange.sent_t, status=None, query=query,
        )
        with self._lock:
            self._pending[n] = request
        return exchange

    def close_exchange(self, exchange: Exchange) -> None:
        """The handler is done with an exchange (saved, or cut)."""
        with self._all_closed:
            self._pending.pop(exchange.n, None)
            self._open -= 1
            self._all_closed.notify_all()

    def note_status(self, exchange: Exchange) -> None:
        """Log the request once the upstream's status is known."""
        with self._lock:
            request = self._pending.pop(exchange.n, None)
            if request is not None:
                self.log_request(attrs.evolve(request, status=exchange.status))

    def save(self, exchange: Exchange) -> None:
        """Write the exchange's trace (and log a request that got no status)."""
        self.note_status(exchange)
        path = self.out / trace_name(exchange.n, exchange.method, exchange.path)
        exchange.write(path, self.upstream)
        with self._lock:
            self._traces.append(path)
