"""Benchmark of every path a turn's events take, against the floor, in one run.

Theory of operation
===================

Five figures, each a ratio against a floor measured in the same run, so that load from other
processes lands on both sides of each ratio:

``consume/floor``
    ``engine.consume(chunks)`` over the stream of ``bench_consume.py`` (one message of
    ``--deltas`` 4-character text deltas in 4 KiB chunks) against the *floor*: a bare loop that
    splits the same chunks into events and parses each ``data:`` line with ``orjson`` (the
    cheapest digestion CPython offers), keeping the text deltas.
``consume+trace/floor``
    the same with ``trace=PATH``: every record rendered, masked and written. Each run writes
    over the previous run's trace, which the file system makes wait: replacing a file by a
    rename flushes the new file's data first (ext4's ``auto_da_alloc``), a few milliseconds of
    wall-clock time for the 6 MB trace and no CPU time. ``consume+new trace/floor`` (a figure
    without a goal, in rounds of its own after the others) writes each run's trace to a new
    file, as a trace per turn does.
``replay/floor``
    ``engine.replay(PATH)`` of that trace: read, checked, fed to today's machines, compared.
``import engine/import openai``
    a fresh interpreter that runs ``import engine``, against one that runs ``import openai``
    (both wall clock of the whole process, interpreter start included).
``replay small/import openai``
    a fresh ``python -m engine replay SMALL`` (``streamfsm replay``; SMALL is one short turn,
    ``replay_fixtures/happy_text.jsonl``) against the same ``import openai``.

And one figure that must stay as it is (about 3): ``first delta sdk/streamfsm``, the cold time
to the first text delta of a turn: in a fresh interpreter that imported openai (and
``from engine import run_turn``) and made a client, from asking the built-in simulator (served
from this process, ``happy_text``) to the first delta's arrival, through the SDK's stream
helper (``client.responses.stream``) over through ``run_turn`` (``on_first_delta``). The first
turn pays for what each loads on first use.

The in-process paths take turns within each round (the garbage collector runs before and is
off during each timed run, one warm-up run each); the process paths likewise take turns, one
of each per round. Each ratio is paired: the median over rounds of one side's time over the
other's in the same round, both in wall-clock time and in CPU time (the thread's for the
in-process paths, user + system for the processes): on a machine shared with other work, the
CPU times move much less with the load. The 1-minute load average is reported before and
after.

Output: a table, then one line ``RESULT {json}``. Run from the repository root::

    python bench/bench_paths.py [--deltas 20000] [--rounds 7] [--process-rounds 9]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make the repository and its siblings importable
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson

import engine
from bench_consume import build_stream, paired_ratio, split_and_parse, timed_rounds  # noqa: E402  (a sibling script)

__all__ = ["FIRST_DELTA_KEEP", "GOALS", "first_delta_rounds", "main", "measure", "process_rounds", "run_floor"]

#: The cold time to the first delta: the SDK's over streamfsm's, about this before the figures
#: above were worked on (a figure to keep, not a goal: it moves with the load; compare runs).
FIRST_DELTA_KEEP = 3.0

#: A fresh interpreter's first turn (openai and the turn function imported, a client made):
#: prints the seconds from asking to the first delta's arrival.
_FIRST_DELTA = {
    "first delta streamfsm": (
        "import sys, time, openai\n"
        "from engine import Callbacks, run_turn\n"
        "client = openai.OpenAI(base_url=sys.argv[1], api_key='sk-local', max_retries=0)\n"
        "first = []\n"
        "start = time.perf_counter()\n"
        "run_turn(client, {'model': 'gpt-5', 'input': 'hi'}, callbacks=Callbacks(\n"
        "    on_first_delta=lambda: first.append(time.perf_counter())))\n"
        "print(first[0] - start)\n"
    ),
    "first delta sdk": (
        "import sys, time, openai\n"
        "client = openai.OpenAI(base_url=sys.argv[1], api_key='sk-local', max_retries=0)\n"
        "start = time.perf_counter()\n"
        "with client.responses.stream(model='gpt-5', input='hi') as stream:\n"
        "    for event in stream:\n"
        "        if event.type == 'response.output_text.delta':\n"
        "            print(time.perf_counter() - start)\n"
        "            break\n"
    ),
}

#: The goals of each ratio (at most).
GOALS: dict[str, float] = {
    "consume/floor": 1.8,
    "consume+trace/floor": 2.5,
    "replay/floor": 3.0,
    "import engine/import openai": 0.6,
    "replay small/import openai": 1.0,
}

SMALL_TRACE = ROOT / "replay_fixtures" / "happy_text.jsonl"


def run_floor(chunks: Sequence[bytes]) -> str:
    """Split the chunks into events, parse each ``data:`` line with orjson, keep the deltas."""
    return split_and_parse(chunks, orjson.loads)


def process_rounds(
    commands: dict[str, list[str]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU times (user + system) of fresh processes, one of each command per round
    (after one warm-up each, so every file is in the page cache); each must exit 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for warm in (True,) + (False,) * rounds:
        for name, command in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True)
            elapsed = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr.decode(errors='replace')[-2000:]}")
            if not warm:
                wall[name].append(elapsed)
                cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def first_delta_rounds(rounds: int) -> dict[str, list[float]]:
    """Seconds from a fresh interpreter's first turn (`_FIRST_DELTA`) to its first delta, one of
    each per round after a warm-up, against the built-in simulator served from here."""
    from engine.simulator.scenarios import load_fixture
    from engine.simulator.server import ResponsesSimulator

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {name: [] for name in _FIRST_DELTA}
    with ResponsesSimulator(load_fixture("happy_text")) as simulator:  # a shape repeats
        for warm in (True,) + (False,) * rounds:
            for name, code in _FIRST_DELTA.items():
                done = subprocess.run([sys.executable, "-c", code, simulator.base_url], cwd=ROOT,
                                      env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
                if not warm:
                    times[name].append(float(done.stdout.split()[-1]))
    return times


def measure(deltas: int, rounds: int, process_count: int, chunk_size: int = 4096) -> dict[str, Any]:
    stream = build_stream(deltas, chunk_size)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-paths-") as tmp:
        written = os.path.join(tmp, "written.jsonl")
        recorded = os.path.join(tmp, "recorded.jsonl")
        if engine.consume(stream.chunks, trace=recorded).output_text != stream.text:
            raise SystemExit("consume did not assemble the answer")
        if run_floor(stream.chunks) != stream.text:
            raise SystemExit("the floor did not assemble the answer")
        if not engine.replay(recorded).identical:
            raise SystemExit("the trace does not replay identically")
        runs: dict[str, Callable[[Sequence[bytes]], object]] = {
            "floor": run_floor,
            "consume": engine.consume,
            "consume+trace": lambda chunks: engine.consume(chunks, trace=written),
            "replay": lambda _: engine.replay(recorded),
        }
        times_cpu: dict[str, list[float]] = {}
        times = timed_rounds(runs, stream.chunks, rounds, cpu=times_cpu)
        # After the others, so that the files it leaves change nothing of theirs.
        fresh = itertools.count()
        new_file = {
            "floor": run_floor,
            "consume+new trace": lambda chunks: engine.consume(
                chunks, trace=os.path.join(tmp, f"new-{next(fresh)}.jsonl")
            ),
        }
        new_cpu: dict[str, list[float]] = {}
        new_times = timed_rounds(new_file, stream.chunks, rounds, cpu=new_cpu)
        trace_bytes = os.path.getsize(recorded)
    python = sys.executable
    commands = {
        "import openai": [python, "-c", "import openai"],
        "import engine": [python, "-c", "import engine"],
        "replay small": [python, "-m", "engine", "replay", str(SMALL_TRACE)],
    }
    processes, processes_cpu = process_rounds(commands, process_count)
    first = first_delta_rounds(process_count)
    ratios, ratios_cpu = (
        {
            "consume/floor": paired_ratio(inside, "consume", "floor"),
            "consume+trace/floor": paired_ratio(inside, "consume+trace", "floor"),
            "consume+new trace/floor": paired_ratio(new, "consume+new trace", "floor"),
            "replay/floor": paired_ratio(inside, "replay", "floor"),
            "import engine/import openai": paired_ratio(outside, "import engine", "import openai"),
            "replay small/import openai": paired_ratio(outside, "replay small", "import openai"),
        }
        for inside, outside, new in ((times, processes, new_times), (times_cpu, processes_cpu, new_cpu))
    )
    return {
        "deltas": deltas,
        "events": stream.events,
        "trace_bytes": trace_bytes,
        "rounds": rounds,
        "process_rounds": process_count,
        "median_ms": {
            name: round(statistics.median(values) * 1e3, 2)
            for name, values in {**times, "consume+new trace": new_times["consume+new trace"],
                                 **processes}.items()
        },
        "ratios": {name: round(value, 2) for name, value in ratios.items()},
        "ratios_cpu": {name: round(value, 2) for name, value in ratios_cpu.items()},
        "first_delta_ms": {name: round(statistics.median(values) * 1e3, 1) for name, values in first.items()},
        "first delta sdk/streamfsm": round(paired_ratio(first, "first delta sdk", "first delta streamfsm"), 2),
        "goals_met": {name: ratios[name] <= goal for name, goal in GOALS.items()},
        "goals_met_cpu": {name: ratios_cpu[name] <= goal for name, goal in GOALS.items()},
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['events']} SSE events, {result['rounds']} rounds in process, "
        f"{result['process_rounds']} rounds of processes; load average "
        f"{result['load_average_1min'][0]} -> {result['load_average_1min'][1]} on {result['cpus']} CPUs",
        "",
        f"{'ratio (paired medians)':<30}{'wall':>8}{'cpu':>8}{'goal':>8}",
    ]
    for name, goal in GOALS.items():
        marks = "/".join("met" if result[key][name] else "MISSED" for key in ("goals_met", "goals_met_cpu"))
        lines.append(
            f"{name:<30}{result['ratios'][name]:>8.2f}{result['ratios_cpu'][name]:>8.2f}"
            f"{'<= ' + format(goal, 'g'):>8}  {marks}"
        )
    for name in [name for name in result["ratios"] if name not in GOALS]:
        lines.append(f"{name:<30}{result['ratios'][name]:>8.2f}{result['ratios_cpu'][name]:>8.2f}")
    keep = result["first delta sdk/streamfsm"]
    lines.append(f"{'first delta sdk/streamfsm':<30}{keep:>8.2f}{'':>8}{'~' + format(FIRST_DELTA_KEEP, 'g'):>8}  "
                 "(keep: compare with the same run on the previous code)")
    lines.append("")
    lines.append("medians (ms): " + ", ".join(f"{k} {v}" for k, v in result["median_ms"].items()))
    lines.append("cold to first delta (ms): " + ", ".join(f"{k} {v}" for k, v in result["first_delta_ms"].items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=20_000, help="text deltas in the stream")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds in process (median)")
    parser.add_argument("--process-rounds", type=int, default=9, help="rounds of fresh processes")
    args = parser.parse_args(argv)
    if args.deltas < 1 or args.rounds < 1 or args.process_rounds < 1:
        parser.error("--deltas, --rounds and --process-rounds must be positive")
    result = measure(args.deltas, args.rounds, args.process_rounds)
    print(table(result))
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
