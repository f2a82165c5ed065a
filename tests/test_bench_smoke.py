"""The hot-path benchmark (bench/bench_consume.py) runs, and its paths digest the same stream into
the same answer. Correctness only: nothing here asserts a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from support import bench_module

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "bench_consume.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return bench_module("bench_consume")


def test_script_runs_on_a_tiny_stream_and_reports_every_path() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--deltas", "200", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result_lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(result_lines) == 1, done.stdout
    result = json.loads(result_lines[0].removeprefix("RESULT "))
    assert result["deltas"] == 200
    assert result["events"] == 207  # created, item added, part added, 200 deltas, 3 done, completed
    assert result["texts_agree"] is True
    paths = {"consume", "consume+trace", "sdk", "bare"}
    assert set(result["us_per_event"]) == paths
    assert all(value > 0 for value in result["us_per_event"].values())
    assert set(result["peak_vs_bare"]) == paths
    assert set(result["ratios"]) >= {"sdk/consume", "consume/bare"}
    for name in paths:  # the table names every path
        assert any(line.startswith(name + " ") for line in done.stdout.splitlines()), name


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 1 << 20])
def test_all_paths_assemble_the_same_text(bench: ModuleType, tmp_path: Path, chunk_size: int) -> None:
    stream = bench.build_stream(200, chunk_size)
    assert len(stream.text) == 800 and not stream.text.isascii()
    assert b"".join(stream.chunks).count(b"response.output_text.delta") == 2 * 200
    traced = bench.make_run_consume_traced(str(tmp_path / "trace.jsonl"))
    texts = {
        "consume": bench.run_consume(stream.chunks),
        "consume+trace": traced(stream.chunks),
        "sdk": bench.run_sdk(stream.chunks),
        "bare": bench.run_bare(stream.chunks),
    }
    assert texts == dict.fromkeys(texts, stream.text)
    assert (tmp_path / "trace.jsonl").stat().st_size > 0


def test_a_disagreeing_path_stops_the_benchmark(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "run_bare", lambda chunks: bench.run_consume(chunks)[:-1])
    with pytest.raises(SystemExit, match="bare"):
        bench.measure(20, 1, 4096, memory=False)
