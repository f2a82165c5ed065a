"""`streamfsm record`, the recording proxy, against real upstream processes with real clients.

Upstreams: `streamfsm serve` in another process (events one chunk each, `chunk_delay_ms` apart),
and a plain `http.server` SSE endpoint written here, which cuts its chunks where it likes (inside
an event, two events in one chunk), echoes the client's key, drops a connection, answers 429 and
answers a request without `stream` with JSON. The clients: the real openai SDK and the engine's
own `run_turn`. What is checked: the answer passes through as it came (the same chunks, not
coalesced, not held back), each request becomes one trace that replays identically and holds no
secret, and `streamfsm serve DIR` serves the recording back the way it was recorded.
"""

from __future__ import annotations

import contextlib
import http.server
import signal
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import openai
import orjson
import pytest

import engine
from engine.log.trace import input_from_json, read_trace
from engine.simulator.recording_proxy import RecordingProxy, trace_name
from engine.simulator.replies import frame_ends, sse_frame
from engine.simulator.scenarios import load_fixture, script_from_folder
from engine.simulator.server import ResponsesSimulator
from machines.records import Chunk

from support import within
from test_scenarios_cli import running, served, streamfsm

KEY = "sk-proxy-test-0123456789abcdefghijklmn"
REQUEST = {"model": "gpt-5", "input": "What is the capital of France?"}
DELAY_MS = 120


def _client(base_url: str, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, **options)


def _read_stream(base_url: str) -> tuple[list[bytes], list[float]]:
    """One streaming request with the openai SDK: each piece `iter_bytes` yields, and when."""
    client = _client(base_url)
    started = time.monotonic()
    pieces: list[bytes] = []
    arrivals: list[float] = []
    with client.responses.with_streaming_response.create(**REQUEST, stream=True) as answer:
        for piece in answer.iter_bytes():
            pieces.append(piece)
            arrivals.append(time.monotonic() - started)
    return pieces, arrivals


def _chunks(trace: Path) -> list[tuple[bytes, float]]:
    """The chunks a trace recorded, with their clock readings."""
    out = []
    for record in read_trace(trace).inputs():
        if record["input"] == "chunk":
            item = input_from_json(record)
            assert isinstance(item, Chunk)
            out.append((item.data, record["t"]))
    return out


def _gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


def _no_secret_in(folder: Path) -> None:
    for path in folder.iterdir():
        text = path.read_text(encoding="utf-8")
        for start in range(len(KEY) - 7):
            assert KEY[start : start + 8] not in text, path


def _assert_replays(folder: Path) -> None:
    traces = sorted(folder.glob("*.jsonl"))
    assert traces
    done = streamfsm("replay", *map(str, traces))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("identical") == len(traces)


@contextlib.contextmanager
def recording(upstream: str, out: Path, *extra: str) -> Iterator[str]:
    """`streamfsm record --upstream UPSTREAM --port 0 --out OUT` in a subprocess: yields its URL;
    SIGTERM afterwards must end it with exit 0."""
    with running("record", "--upstream", upstream, "--port", "0", "--out", str(out), *extra) as (
        _, url, first,
    ):
        assert first.startswith(f"recording {upstream} into {out}/")
        yield url


# -- through a `streamfsm serve` process -------------------------------------------------------------
def _paced_scenario(tmp_path: Path) -> Path:
    scenario = tmp_path / "paced.toml"
    scenario.write_text(
        f'[[reply]]\ntext = "The capital of France is Paris, on the Seine."\n'
        f"chunk_delay_ms = {DELAY_MS}\n",
        encoding="utf-8",
    )
    return scenario


@pytest.mark.slow
def test_chunks_and_their_timing_pass_through_and_are_recorded(tmp_path: Path) -> None:
    out = tmp_path / "recorded"
    with served(_paced_scenario(tmp_path), tmp_path / "upstream.jsonl") as upstream:
        direct, _ = _read_stream(upstream.base_url)
        with recording(upstream.base_url, out) as proxy:
            pieces, arrivals = _read_stream(proxy)
    # the same chunks as the upstream sent them, one event each: nothing coalesced or split
    assert pieces == direct
    assert all(piece.count(b"\n\n") == 1 and piece.endswith(b"\n\n") for piece in pieces)
    # not held back: the client had each chunk while the upstream was still pausing
    delay = DELAY_MS / 1000
    assert arrivals[-1] - arrivals[0] >= (len(pieces) - 1) * delay * 0.9
    trace = out / trace_name(1, "POST", "/v1/responses")
    assert sorted(out.iterdir()) == [trace]
    recorded = _chunks(trace)
    assert [data for data, _ in recorded] == pieces
    assert statistics.median(_gaps([t for _, t in recorded])) >= delay * 0.9
    # the client saw the same spacing the proxy read (within a few milliseconds, typically)
    spacing = [abs(a - b) for a, b in zip(_gaps(arrivals), _gaps([t for _, t in recorded]))]
    assert statistics.median(spacing) < within(0.03, before=DELAY_MS / 2000), spacing
    header = read_trace(trace).header
    assert header["entry"] == "consume"
    assert header["exchange"]["status"] == 200
    assert header["exchange"]["upstream"] == upstream.base_url
    assert header["request"]["stream"] is True
    _assert_replays(out)
    _no_secret_in(out)


@pytest.mark.slow
def test_serve_dir_gives_the_recording_back_with_its_timing(tmp_path: Path) -> None:
    out = tmp_path / "recorded"
    with served(_paced_scenario(tmp_path), tmp_path / "upstream.jsonl") as upstream:
        with recording(upstream.base_url, out) as proxy:
            pieces, arrivals = _read_stream(proxy)
            whole = _client(proxy).responses.create(**REQUEST)  # a second request: JSON back
    assert len(list(out.glob("*.jsonl"))) == 2
    with served(out, tmp_path / "again.jsonl", "--timing", "recorded") as again:
        assert "(2 replies)" in again.first_line and "repeating" not in again.first_line
        replayed, replay_arrivals = _read_stream(again.base_url)
        answered = _client(again.base_url).responses.create(**REQUEST)
        with pytest.raises(openai.InternalServerError, match="exhausted"):
            _client(again.base_url).responses.create(**REQUEST)
    assert replayed == pieces
    assert answered.output_text == whole.output_text == "The capital of France is Paris, on the Seine."
    spacing = [abs(a - b) for a, b in zip(_gaps(arrivals), _gaps(replay_arrivals))]
    assert statistics.median(spacing) < within(0.03, before=DELAY_MS / 2000), spacing
    with served(out, tmp_path / "fast.jsonl") as fast:  # --timing none: no pauses
        started = time.monotonic()
        assert _read_stream(fast.base_url)[0] == pieces
        assert time.monotonic() - started < arrivals[-1]


def test_every_request_keeps_its_own_wait_before_the_first_byte(tmp_path: Path) -> None:
    """Each recorded request's clock starts when it was sent, so served back with its timing the
    second request waits as long as the first did: the client's pause between them is not
    mistaken for the server's."""
    scenario = tmp_path / "slow.toml"
    scenario.write_text('[[reply]]\ntext = "Paris."\nstall_s = 0.4\n', encoding="utf-8")
    out = tmp_path / "recorded"
    with served(scenario, tmp_path / "upstream.jsonl") as upstream:
        with RecordingProxy(upstream.base_url, out) as proxy:
            _read_stream(proxy.base_url)
            time.sleep(0.5)  # the client's own pause between its requests
            _read_stream(proxy.base_url)
    sent = [read_trace(path).header["exchange"]["sent_t"] for path in sorted(out.glob("*.jsonl"))]
    assert sent[1] - sent[0] >= 0.9  # when each was sent: its wait, then the client's pause
    with ResponsesSimulator(load_fixture(str(out), timing="recorded")) as again:
        firsts = [_read_stream(again.base_url)[1][0] for _ in range(2)]
    assert all(first >= 0.35 for first in firsts), firsts
    with ResponsesSimulator(load_fixture(str(out))) as fast:
        assert all(_read_stream(fast.base_url)[1][0] < within(0.35, before=0.4) for _ in range(2))


def test_sigint_also_ends_it_with_exit_0_and_keeps_what_was_recorded(tmp_path: Path) -> None:
    out = tmp_path / "recorded"
    with served("happy_text", tmp_path / "upstream.jsonl") as upstream:
        with recording(upstream.base_url, out) as proxy:
            result = engine.run_turn(_client(proxy), dict(REQUEST))
        assert result.outcome == "completed"
    with running("record", "--upstream", "http://127.0.0.1:9/v1", "--port", "0", "--out",
                 str(tmp_path / "other")) as (process, _, _):
        process.send_signal(signal.SIGINT)
        out_text, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert "stopped: 0 requests recorded" in out_text
    assert len(list(out.glob("*.jsonl"))) == 1


# -- a hand-written SSE endpoint ----------------------------------------------------------------
def _events(text: str) -> list[bytes]:
    response = {"id": "resp_hand", "object": "response", "status": "in_progress", "output": []}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    done = {**response, "status": "completed", "output": [item]}
    delta = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
             "content_index": 0}
    words = text.split(" ")
    return [
        sse_frame({"type": "response.created", "sequence_number": 0, "response": response}),
        *(sse_frame({**delta, "sequence_number": n + 1, "delta": word + (" " if n < len(words) - 1 else "")})
          for n, word in enumerate(words)),
        sse_frame({"type": "response.completed", "sequence_number": len(words) + 1,
                   "response": done}),
    ]


class _HandWritten(http.server.BaseHTTPRequestHandler):
    """Answers each POST by the `plan` of the server: chunks cut anywhere, a drop, a 429, JSON."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.seen.append((body, {k.lower(): v for k, v in self.headers.items()}))
        plan = self.server.plan.pop(0)
        if plan == "429":
            payload = orjson.dumps({"error": {"message": "Slow down.", "type": "requests",
                                              "param": None, "code": "rate_limit_exceeded"}})
            self.send_response(429)
            self.send_header("content-type", "application/json")
            self.send_header("retry-after", "0")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        events = _events(f"Paris echoes {KEY} back.")
        if plan == "json":
            payload = orjson.dumps(orjson.loads(events[-1].split(b"data: ", 1)[1])["response"])
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        whole = b"".join(events)
        cuts = self.server.cuts
        for start, end in zip([0, *cuts], [*cuts, len(whole)]):
            piece = whole[start:end]
            if plan == "drop" and end == len(whole):
                piece = piece[: len(piece) // 2]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            time.sleep(0.03)
        if plan == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")


@contextlib.contextmanager
def hand_written(plan: list[str]) -> Iterator[Any]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HandWritten)
    server.daemon_threads = True
    server.plan = list(plan)
    server.seen = []
    # a cut inside the first event, then two events in one chunk, then one event a chunk
    ends = frame_ends(b"".join(_events(f"Paris echoes {KEY} back.")))
    server.cuts = [17, ends[0], *ends[2:-1]]
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _cut(whole: bytes, cuts: list[int]) -> list[bytes]:
    return [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]


def test_chunk_boundaries_anywhere_pass_through_exactly(tmp_path: Path) -> None:
    out = tmp_path / "recorded"
    with hand_written(["ok", "ok"]) as upstream:
        direct, _ = _read_stream(upstream.base_url)
        with RecordingProxy(upstream.base_url, out) as proxy:
            pieces, _ = _read_stream(proxy.base_url)
        expected = _cut(b"".join(_events(f"Paris echoes {KEY} back.")), upstream.cuts)
        forwarded = upstream.seen[1][1]
    assert direct == expected
    assert pieces == expected
    assert len(pieces[0]) == 17 and pieces[2].count(b"\n\n") == 2  # cut mid-event; two in one
    assert forwarded["authorization"] == f"Bearer {KEY}"  # headers forwarded as they came
    assert forwarded["accept-encoding"] == "identity"  # the stream is recorded uncompressed
    trace = out / trace_name(1, "POST", "/v1/responses")
    recorded = [data for data, _ in _chunks(trace)]
    assert len(recorded) == len(pieces)
    assert [len(data) for data in recorded] == [len(piece) for piece in pieces]
    assert b"Paris echoes" in b"".join(recorded)
    _no_secret_in(out)  # the key the server echoed is masked, wherever the cuts fell
    _assert_replays(out)


def test_a_turn_through_the_proxy_decides_as_it_does_directly(tmp_path: Path) -> None:
    plan = ["drop", "429", "ok"]
    policy = engine.TurnPolicy(max_stream_retries=2, max_http_retries=1, fallback=False)
    with hand_written(plan) as upstream:
        direct = engine.run_turn(_client(upstream.base_url), dict(REQUEST), policy=policy)
    with hand_written(plan) as upstream:
        with RecordingProxy(upstream.base_url, tmp_path / "recorded") as proxy:
            through = engine.run_turn(_client(proxy.base_url), dict(REQUEST), policy=policy)
            statuses = [(r.n, r.status) for r in proxy.requests]
    assert [(a.kind, a.reason) for a in through.attempts] == [
        (a.kind, a.reason) for a in direct.attempts
    ] == [("stream", "drop"), ("stream", "http_429"), ("stream", "completed")]
    assert through.output_text == direct.output_text
    assert statuses == [(1, 200), (2, 429), (3, 200)]
    traces = sorted((tmp_path / "recorded").glob("*.jsonl"))
    # each trace ends with the input that ended its attempt (for the last: response.completed)
    kinds = [[r["input"] for r in read_trace(path).inputs()][-1] for path in traces]
    assert kinds == ["fault", "http_error", "chunk"]
    outcomes = [read_trace(path).records[-1]["outcome"] for path in traces]
    assert outcomes == ["error", "error", "completed"]
    error = read_trace(traces[1]).inputs()[0]
    assert error["status"] == 429 and error["body"]["error"]["code"] == "rate_limit_exceeded"
    assert error["headers"]["retry-after"] == "0"
    _assert_replays(tmp_path / "recorded")
    _no_secret_in(tmp_path / "recorded")
    # served back, the recording gives the turn the same attempts
    with ResponsesSimulator(load_fixture(str(tmp_path / "recorded"))) as sim:
        again = engine.run_turn(_client(sim.base_url), dict(REQUEST), policy=policy)
    assert [(a.kind, a.reason) for a in again.attempts] == [
        (a.kind, a.reason) for a in direct.attempts
    ]
    assert len(again.output_text) == len(direct.output_text)  # the echoed key stays masked
    assert KEY not in again.output_text


def test_a_plain_json_answer_is_recorded_and_served_back_whole(tmp_path: Path) -> None:
    with hand_written(["json"]) as upstream:
        with RecordingProxy(upstream.base_url, tmp_path / "recorded") as proxy:
            whole = _client(proxy.base_url).responses.create(**REQUEST)
    assert whole.output_text == f"Paris echoes {KEY} back."
    _assert_replays(tmp_path / "recorded")
    _no_secret_in(tmp_path / "recorded")
    with ResponsesSimulator(load_fixture(str(tmp_path / "recorded"))) as sim:
        again = _client(sim.base_url).responses.create(**REQUEST)
    # the key the server echoed was masked in the recording, so it is masked in what comes back
    assert len(again.output_text) == len(whole.output_text)
    assert again.output_text.startswith("Paris echoes") and again.output_text.endswith(" back.")
    assert not any(KEY[i : i + 8] in again.output_text for i in range(len(KEY) - 7))


# -- what the proxy does when a side goes away --------------------------------------------------------
def test_a_client_that_gives_up_on_a_silent_upstream_is_recorded_as_an_interrupt(tmp_path: Path) -> None:
    scenario = tmp_path / "silent.toml"
    scenario.write_text('[[reply]]\ntext = "late"\nstall_s = 30\nstall_after = 1\n')
    with served(scenario, tmp_path / "upstream.jsonl") as upstream:
        with RecordingProxy(upstream.base_url, tmp_path / "recorded") as proxy:
            client = _client(proxy.base_url, timeout=0.5)
            result = engine.run_turn(client, dict(REQUEST), policy=engine.TurnPolicy(
                max_stream_retries=0, fallback=False))
            deadline = time.monotonic() + 10
            while not proxy.traces and time.monotonic() < deadline:
                time.sleep(0.02)
            traces = proxy.traces
    assert result.attempts[0].reason == "read_timeout"
    assert len(traces) == 1
    inputs = read_trace(traces[0]).inputs()
    assert [r["input"] for r in inputs] == ["chunk", "interrupt"]
    assert inputs[-1]["t"] < within(5.0, before=30.0)  # noticed when the client left, not when the upstream spoke
    _assert_replays(tmp_path / "recorded")


def test_an_unreachable_upstream_closes_the_client_connection_and_is_recorded(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with RecordingProxy(f"http://127.0.0.1:{port}/v1", tmp_path / "recorded") as proxy:
        with pytest.raises(openai.APIConnectionError):
            _client(proxy.base_url).responses.create(**REQUEST, stream=True)
        deadline = time.monotonic() + 10
        while not proxy.traces and time.monotonic() < deadline:
            time.sleep(0.02)
    (trace,) = sorted((tmp_path / "recorded").glob("*.jsonl"))
    fault = read_trace(trace).inputs()[0]
    assert (fault["input"], fault["fault"]) == ("fault", "connect_error")
    _assert_replays(tmp_path / "recorded")


def test_requests_are_forwarded_below_the_upstreams_base_path(tmp_path: Path) -> None:
    with served("happy_text", tmp_path / "upstream.jsonl") as upstream:
        with RecordingProxy(upstream.base_url, tmp_path / "recorded") as proxy:
            models = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
            with pytest.raises(openai.NotFoundError):
                models.models.list()
            engine.run_turn(_client(proxy.base_url), dict(REQUEST))
        seen = upstream.requests()
    assert [(r["method"], r["path"]) for r in seen] == [
        ("GET", "/v1/models"), ("POST", "/v1/responses")
    ]
    names = sorted(path.name for path in (tmp_path / "recorded").iterdir())
    assert names == ["0001-get-models.jsonl", "0002-post-responses.jsonl"]
    # served back, only the POST is the recording's: the simulator answers the GET itself
    script = script_from_folder(tmp_path / "recorded")
    assert len(script.replies) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--upstream", "ftp://x/v1"], "http:// or https://"),
        (["--upstream", "http://127.0.0.1:9/v1", "--port", "-5"], "not between 0 and 65535"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = streamfsm("record", *args, "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.startswith("streamfsm: error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_folder_that_holds_traces_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "0001-post-responses.jsonl").write_text("{}\n")
    done = streamfsm("record", "--upstream", "http://127.0.0.1:9/v1", "--out", str(out))
    assert done.returncode == 2
    assert "already holds traces" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_serve_a_folder_without_traces_is_one_line(tmp_path: Path) -> None:
    done = streamfsm("serve", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"streamfsm: error: {tmp_path}: a folder without traces (*.jsonl)"
