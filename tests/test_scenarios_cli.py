"""`streamfsm serve` as a real subprocess: scenario files, the request log, traces with their
timing, one line per mistake, and a clean exit 0 on SIGTERM and SIGINT."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import attrs
import openai
import pytest

import engine
from support import within

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "scenarios"
FIXTURES = ROOT / "replay_fixtures"


@attrs.define
class Served:
    process: subprocess.Popen[str]
    base_url: str
    log: Path
    first_line: str

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, str, str]:
        """Send ``signum`` and wait: (exit status, rest of stdout, stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline()


@contextlib.contextmanager
def running(*args: str) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """`streamfsm ARGS` (a command that prints "... at URL" first and runs until a signal) in a
    subprocess: yields the process, the URL and the first line; stopped with SIGTERM after the
    block (which must make it exit 0)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        cwd=ROOT,
    )
    try:
        first = _readline(process, timeout=30)
        if " at http://" not in first:
            process.kill()
            out, err = process.communicate(timeout=10)
            raise AssertionError(f"{args[0]} did not start: {first!r} {out!r} {err!r}")
        yield process, first.rsplit(" at ", 1)[1].strip(), first
        err = ""
        if process.returncode is None:  # the block did not stop it itself
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


@contextlib.contextmanager
def served(fixture: str | Path, log: Path, *extra: str) -> Iterator[Served]:
    """`streamfsm serve FIXTURE --port 0 --log LOG` in a subprocess; stopped with SIGTERM after
    the block (which must make it exit 0)."""
    with running("serve", str(fixture), "--port", "0", "--log", str(log), *extra) as started:
        process, url, first = started
        yield Served(process, url, log, first)


def streamfsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=ROOT,
        timeout=60, stdin=subprocess.DEVNULL,
    )


def test_serve_a_scenario_file_and_log_every_request(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    with served(EXAMPLES / "rate_limit_then_text.toml", log) as server:
        assert server.first_line.startswith("serving ")
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-abcdefghijkl", max_retries=2)
        result = engine.run_turn(client, {"model": "gpt-5", "input": "hi"})
        assert result.outcome == "completed"
        lines = server.requests()
    assert [(r["n"], r["status"], r["reply"]) for r in lines] == [(1, 429, 0), (2, 200, 1)]
    assert lines[1]["t"] - lines[0]["t"] >= 1.0
    assert "sk-abcdefghijkl" not in log.read_text()
    assert lines[0]["body"]["input"] == "hi"


def test_serve_keeps_background_responses_for_resume_and_cancel(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    with served(EXAMPLES / "background_resume.toml", log) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-abcdefghijkl", max_retries=0)
        first: list[Any] = []
        with pytest.raises(openai.APIConnectionError):
            for event in client.responses.create(
                model="gpt-5", input="hi", background=True, stream=True
            ):
                first.append(event)
        response_id = first[0].response.id
        last = first[-1].sequence_number
        rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
        cancelled = client.responses.cancel(response_id)
        lines = server.requests()
    assert [e.sequence_number for e in first + rest] == list(range(len(first) + len(rest)))
    assert len(first) == 4 and rest[-1].type == "response.completed"
    assert cancelled.status == "cancelled"
    assert [(r["n"], r["method"], r["path"], r["reply"], r["status"]) for r in lines] == [
        (1, "POST", "/v1/responses", 0, 200),
        (2, "GET", f"/v1/responses/{response_id}?starting_after=3&stream=true", None, 200),
        (3, "POST", f"/v1/responses/{response_id}/cancel", None, 200),
    ]
    assert "sk-abcdefghijkl" not in log.read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_serve_with_exit_0(signum: int, tmp_path: Path) -> None:
    with served(EXAMPLES / "stall_then_text.toml", tmp_path / "log.jsonl") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=30)
        outcome: list[str] = []
        reader = threading.Thread(
            target=lambda: outcome.append(
                engine.run_turn(client, {"model": "m", "input": "hi"},
                                policy=engine.TurnPolicy(max_stream_retries=0, fallback=False)).outcome
            ),
            daemon=True,
        )
        reader.start()  # the reply stalls for 12 s: the server is mid-reply when signalled
        deadline = time.monotonic() + 10
        while not server.requests() and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        status, out, err = server.stop(signum)
        assert time.monotonic() - started < within(5.0, before=12.0)
        assert status == 0, err
        assert "stopped" in out and "Traceback" not in err
        reader.join(timeout=10)
        assert outcome == ["error"]  # the stalled stream was cut when the server stopped


def test_serve_a_trace_with_its_recorded_timing(tmp_path: Path) -> None:
    trace = FIXTURES / "stall_then_retry.jsonl"
    with served(trace, tmp_path / "log.jsonl", "--timing", "recorded") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        result = engine.run_turn(client, {"model": "m", "input": "hi"},
                                 policy=engine.TurnPolicy(idle_timeout_s=0.3))
        assert result.outcome == "completed"
        assert [a.reason for a in result.attempts] == ["idle_timeout", "completed"]
        assert "repeating" in server.first_line


def test_serve_a_shape_name(tmp_path: Path) -> None:
    with served("http_429", tmp_path / "log.jsonl") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError) as raised:
            client.responses.create(model="m", input="hi", stream=True)
        assert raised.value.response.headers["retry-after"] == "20"
        assert server.requests()[0]["status"] == 429


def test_a_broken_scenario_is_one_line_per_mistake_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[[reply]]\nstal_s = 3\ntext = 'hi'\n[[reply]]\nnth = '1'\ntext = 'x'\n"
                    "[[reply]]\nshape = 'happy'\n")
    done = streamfsm("serve", str(path), "--port", "0")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"streamfsm: error: {path}: reply[0]: unknown key 'stal_s' (did you mean 'stall_s'?)",
        f"streamfsm: error: {path}: reply[1]: nth must be a whole number >= 1, not a string ('1')",
        f"streamfsm: error: {path}: reply[2]: unknown shape 'happy' (did you mean 'happy_text'?)",
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("missing.toml",), "missing.toml: cannot read"),
        (("nonexistent_thing",), "not a built-in shape"),
        ((str(EXAMPLES / "text.toml"), "--log", "/nonexistent-dir/log.jsonl"), "cannot open"),
    ],
)
def test_serve_usage_errors_are_one_line(args: tuple[str, ...], words: str) -> None:
    done = streamfsm("serve", *args, "--port", "0")
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and words in done.stderr, done.stderr


def test_serve_help_names_the_scenario_options() -> None:
    done = streamfsm("serve", "--help")
    assert done.returncode == 0
    for words in ("--log FILE", "--timing", "SIGTERM", ".toml"):
        assert words in done.stdout
    assert os.path.exists(ROOT / "docs" / "scenarios.md")
