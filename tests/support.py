"""Shared pieces of the core test suite: the real openai client against the loopback simulator,
a turn runner that always writes a trace and checks that it replays identically, and a list sink
for driving the machines by hand.

Every turn a test runs over HTTP goes through `run_over_http`, so every one of them also proves
that its trace replays record for record.

Wall-clock limits. A test that says something ended promptly gives the limit an idle two-core
machine needs and passes it through `within`, which multiplies it by `TIME_SCALE`
(`STREAMFSM_TEST_TIME_SCALE`, default 3: the suite on two workers beside another busy process)
but never lets it reach the wait the test tells a prompt end from (a stall, a timeout the run
must not have sat out): a run that waited for that takes at least that long, so the test still
fails for it on any machine. A limit is a bound on lateness, never a reason to sleep.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import time
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import attrs
import openai
import orjson

import engine
from engine.simulator.server import ResponsesSimulator
from engine.simulator.replies import Script
from machines.records import Effect, SseEvent, Transition
from machines.table import Row, Table

API_KEY = "sk-test-0123456789abcdefghijklmnop"
#: How much slower than an idle two-core machine a run may be (see "Wall-clock limits" above).
TIME_SCALE = float(os.environ.get("STREAMFSM_TEST_TIME_SCALE") or 3)
REQUEST: dict[str, Any] = {"model": "gpt-5", "input": "What is the capital of France?"}


@contextlib.contextmanager
def simulated_client(
    script: Script, *, api_key: str = API_KEY, **client_options: Any
) -> Iterator[tuple[openai.OpenAI, ResponsesSimulator]]:
    """The real openai client (no SDK retries) pointed at a simulator playing `script`."""
    with ResponsesSimulator(script) as sim:
        client = openai.OpenAI(
            base_url=sim.base_url, api_key=api_key, max_retries=0, **client_options
        )
        try:
            yield client, sim
        finally:
            client.close()


@attrs.frozen
class Run:
    """One turn over HTTP: its result, what the server received, its trace and how long it took."""

    result: engine.TurnResult
    requests: list[Any]
    trace: Path
    elapsed: float

    @property
    def attempts(self) -> list[tuple[str, str, str]]:
        return [(a.kind, a.final_state, a.reason) for a in self.result.attempts]


def run_over_http(
    script: Script,
    trace_dir: Path,
    *,
    request: dict[str, Any] | None = None,
    api_key: str = API_KEY,
    client_options: dict[str, Any] | None = None,
    **run_options: Any,
) -> Run:
    """`engine.run_turn` with the real client against `script`; checks the trace replays identically."""
    trace = trace_dir / f"trace-{time.monotonic_ns()}.jsonl"
    with simulated_client(script, api_key=api_key, **(client_options or {})) as (client, sim):
        started = time.monotonic()
        result = engine.run_turn(client, dict(request or REQUEST), trace=trace, **run_options)
        elapsed = time.monotonic() - started
        requests = sim.requests
        assert sim.server_errors == []
    assert_replays_identically(trace)
    return Run(result, requests, trace, elapsed)


def assert_replays_identically(trace: Path | str) -> None:
    report = engine.replay(trace)
    assert report.records > 0
    assert report.identical, report.divergence.describe()


def trace_lines(trace: Path | str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in Path(trace).read_bytes().splitlines() if line.strip()]


def write_trace_lines(path: Path | str, lines: list[dict[str, Any]]) -> None:
    Path(path).write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_module(name: str) -> ModuleType:
    """A benchmark script of `bench/` (`name` without `.py`), imported as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_memory(run: Callable[[], Any]) -> int:
    """The peak of Python allocations while `run()` runs (tracemalloc), in bytes."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def within(seconds: float, *, before: float | None = None) -> float:
    """A wall-clock limit: `seconds` on an idle machine times `TIME_SCALE`, kept below `before`
    (the wait a run that was not prompt would have sat out)."""
    limit = seconds * TIME_SCALE
    return limit if before is None else min(limit, before)


def wait_for(condition: Callable[[], object], within_s: float) -> float | None:
    """Seconds until `condition()` held, or None if it did not within `within_s` (looked at
    every 10 ms: a test waits for what it needs, not for a guessed time)."""
    began = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - began
        if time.monotonic() - began > within_s:
            return None
        time.sleep(0.01)


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Decisions:
    """Every decision a machine returned, in order, numbered as the event log would number them."""

    def __init__(self) -> None:
        self.records: list[Transition | Effect] = []

    def take(self, decisions: list[Transition | Effect]) -> list[Transition | Effect]:
        for decision in decisions:
            if isinstance(decision, Transition):
                decision = attrs.evolve(decision, seq=len(self.records) + 1)
            self.records.append(decision)
        return decisions

    @property
    def transition_records(self) -> list[Transition]:
        return [r for r in self.records if isinstance(r, Transition)]

    @property
    def transitions(self) -> list[tuple[str, str, str]]:
        return [(r.source, r.dest, r.trigger) for r in self.transition_records]

    def effects(self, kind: str) -> list[Any]:
        return [r.data for r in self.records if isinstance(r, Effect) and r.kind == kind]


def sse(event: dict[str, Any]) -> SseEvent:
    """An `SseEvent` carrying `event` as compact JSON, named after its type."""
    return SseEvent(str(event.get("type", "message")), orjson.dumps(event).decode())


def patch_rows(monkeypatch: Any, module: Any, change: Callable[[Row[Any, Any]], Row[Any, Any]]) -> None:
    """Replace a machine module's `TABLE` for one test by a table whose rows are `change(row)` of
    today's: a rule broken on purpose, to show a check catches it."""
    table = module.TABLE
    rows = [change(row) for row in table.rows]
    patched = Table(table.machine, table.states, table.triggers, rows,
                    initial=table.initial, final=table.final)
    monkeypatch.setattr(module, "TABLE", patched)


def text_keeps_flowing_after_tool_calls(monkeypatch: Any) -> None:
    """Break the stream-attempt machine on purpose for one test: entering `tool_call` no longer
    stops answer text from reaching the user."""
    from machines import stream_attempt

    patch_rows(
        monkeypatch, stream_attempt,
        lambda row: attrs.evolve(row, then=None) if row.then is stream_attempt.stop_text else row,
    )


@contextlib.contextmanager
def searched_one_string_at_a_time() -> Iterator[None]:
    """Within the block, masking searches its bytes a string at a time (the way it takes where
    the one-pass search of `engine.log.literals` cannot run)."""
    from engine.log import literals

    before = literals._ENGINE
    literals._ENGINE = False
    try:
        yield
    finally:
        literals._ENGINE = before
