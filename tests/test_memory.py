"""Memory does not grow with the stream (contract v3, "limits and evidence, tightened").

- `run_turn` without a trace, with the real openai client over loopback, holds what it returns
  and a bounded window of what it reads: one stream of 1,000,000 one-character deltas stays under
  100 MB of peak memory for the whole process (measured in a child process of its own, by
  `bench/bench_memory.py`).
- Replaying a trace holds one record at a time beside the machines' state: a long trace grows the
  replaying process by little more than the answer's text.
- Inside one process (tracemalloc): a long answer of one-character deltas costs about its text,
  not a string per delta, with or without commentary; a trace turns records on, a turn without
  one keeps none; a reader ahead of a slow turn waits instead of queueing the body.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import openai
import pytest

import engine
from engine.drivers import sync
from engine.drivers.recording import TurnRecording
from engine.drivers.consume import SINGLE_ATTEMPT
from engine.simulator.replies import Reply, Script
from engine.simulator.server import ResponsesSimulator
from engine.simulator.shapes import assemble, completed, created, output_items, text_message, to_reply
from machines.delivery import DeliveryLedger
from machines.records import Chunk
from machines.text_pieces import JOIN_AT, add_piece
from support import bench_module, peak_memory

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "bench_memory.py"
LIMIT_MB = 100


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return bench_module("bench_memory")


def _measured(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    return result["results"]["this"]


# -- whole processes ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_turn_of_a_million_one_character_deltas_stays_under_100_mb() -> None:
    figures = _measured("--only", "turn", "--deltas", "1000000")
    turn = figures["turn"]
    assert turn["ok"] and turn["characters"] == 1_000_000
    assert turn["peak_rss_mb"] < LIMIT_MB, figures
    assert turn["peak_rss_mb"] - figures["base"]["peak_rss_mb"] < 40, figures


@pytest.mark.slow
def test_replaying_a_long_trace_holds_one_record_at_a_time() -> None:
    """400,000 records: the replay grows the process by a few megabytes (the answer's 200,000
    characters, kept by the machines, and the longest line), not by the records."""
    figures = _measured("--only", "replay", "--replay-deltas", "200000")
    replay = figures["replay"]
    assert replay["ok"] and replay["records"] > 400_000
    assert replay["peak_rss_mb"] < LIMIT_MB, figures
    assert replay["peak_rss_mb"] - figures["base"]["peak_rss_mb"] < 12, figures


def test_the_benchmark_answer_is_what_the_machines_assemble(bench: ModuleType) -> None:
    events = list(bench.answer_events(300))
    result = engine.consume(events)
    assert result.outcome == "completed"
    assert result.output_text == bench.answer_text(300)
    assert sum(b"output_text.delta" in event for event in events) == 300


# -- inside one process ------------------------------------------------------------------------


def _one_character_deltas(count: int, *, phase: str | None = None) -> Iterator[bytes]:
    message = text_message("ab" * (count // 2), deltas=count, phase=phase)
    for step in to_reply(assemble(created(), message, completed(output_items(message)))).steps:
        if isinstance(step, Chunk):
            yield step.data


@pytest.mark.slow
@pytest.mark.parametrize("phase", [None, "commentary"])
def test_a_long_answer_costs_about_its_text(phase: str | None) -> None:
    """200,000 one-character deltas (answer text, or commentary): the machines keep the text
    in a few long pieces, never a string per delta (which cost some 300 bytes a delta)."""
    chunks = list(_one_character_deltas(200_000, phase=phase))
    delivered: list[int] = []
    callbacks = engine.Callbacks(on_text_delta=lambda text: delivered.append(len(text)),
                                 on_commentary_delta=lambda text: delivered.append(len(text)))
    peak = peak_memory(lambda: engine.consume(chunks, callbacks=callbacks))
    assert sum(delivered) == 200_000
    assert peak < 8 * 2**20, peak


def test_a_trace_keeps_the_records_and_a_turn_without_one_keeps_none(tmp_path: Path) -> None:
    chunks = list(_one_character_deltas(2_000))
    traced = TurnRecording(SINGLE_ATTEMPT, None, entry="consume")
    untraced = TurnRecording(SINGLE_ATTEMPT, None, entry="consume", keep_records=False)
    for recording in (traced, untraced):
        for feed in recording.attempts():
            for chunk in chunks:
                feed.chunk(chunk, 0.0)
            if not feed.final:
                feed.end(0.0)
    assert traced.log.count == untraced.log.count == len(traced.log.records) > 2_000
    assert untraced.log.records == []
    assert [t.seq for t in traced.log.transitions] == [t.seq for t in untraced.log.transitions]
    assert traced.finish().output_text == untraced.finish().output_text
    untraced.finish(tmp_path / "nothing.jsonl")  # no records kept: no trace, never a partial one
    assert list(tmp_path.iterdir()) == []


def test_a_reader_ahead_of_a_slow_turn_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server sends everything at once; the turn takes its time over every delta: the
    reader never holds more than `READ_AHEAD` reads for it."""
    most = 0
    real = sync._AttemptReader._hand_over

    def hand_over(self: Any, item: Any) -> bool:
        nonlocal most
        most = max(most, self.items.qsize())
        return bool(real(self, item))

    monkeypatch.setattr(sync._AttemptReader, "_hand_over", hand_over)
    steps = tuple(Chunk(chunk) for chunk in _one_character_deltas(2_000))
    slow = threading.Event()
    with ResponsesSimulator(Script([Reply(steps=steps)])) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        result = engine.run_turn(client, {"model": "m", "input": "hi"}, callbacks=engine.Callbacks(
            on_text_delta=lambda text: slow.wait(0.0005)))
    assert result.outcome == "completed" and len(result.output_text) == 2_000
    assert most <= sync.READ_AHEAD


def test_pieces_join_as_they_grow_and_stay_the_text() -> None:
    pieces: list[str] = []
    text = []
    for index in range(10_000):
        piece = "xyz"[index % 3] * (1 + index % 4)
        add_piece(pieces, piece)
        text.append(piece)
        assert len(pieces) < JOIN_AT + 16
    assert "".join(pieces) == "".join(text)


def test_commentary_runs_keep_where_they_fell_among_the_answer() -> None:
    ledger = DeliveryLedger()
    for index in range(3_000):  # long runs of each, many pieces joined
        ledger.take_commentary("c", 0) if (index // 500) % 2 else ledger.text.take("a")
    ledger.take_commentary("d", 4)
    assert ledger.shown() == ("a" * 500 + "c" * 500) * 3 + "d"
    assert ledger.commentary_messages() == ["c" * 1500, "d"]
