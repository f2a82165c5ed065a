"""Benchmark of `streamfsm replay` on a long trace: peak memory and records per second.

Theory of operation
===================

A trace of one long answer is recorded with ``engine.consume(chunks, trace=PATH)``: the stream
is built with the same builders as ``bench_consume.py`` (``response.created``, one assistant
message of ``--deltas`` text deltas of 4 characters, its ``*.done`` events, ``response.completed``),
cut into ``--chunk``-byte network reads. For 1,000,000 deltas the trace holds about 2 million
records (an input record per chunk, an effect record per delivered delta) and weighs about 180 MB.

The trace is then replayed with ``engine.replay(PATH)`` in a fresh child process that does
nothing else, so the figures are the replay's own:

``peak_rss_mb``
    the child's peak resident set size (``ru_maxrss`` from ``os.wait4``), what ``/usr/bin/time -v``
    reports as "Maximum resident set size";
``base_rss_mb``
    the same for a child that only imports ``engine`` (the interpreter and the libraries), so
    ``peak_rss_mb - base_rss_mb`` is what the replay itself holds;
``tracemalloc_peak_mb``
    (with ``--tracemalloc``) the peak of Python allocations during the replay, in another child
    (tracemalloc slows the replay down, so that run is not timed);
``records_per_s``
    records compared per second of wall time in the untraced child (reading, decoding, running
    the machines, rendering and comparing every record).

Generation runs in its own child too (building a million events takes memory the replay must not
be charged for). ``--trace PATH`` reuses a trace already recorded there (``--keep`` keeps the
generated one).

Output: a few lines on stdout, then one line ``RESULT {json}`` with every figure.

Run from the repository root::

    python bench/bench_replay.py [--deltas 1000000] [--chunk 4096] [--tracemalloc]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

__all__ = ["generate", "main", "measure_child", "replay_once"]

_WORDS = (
    "the stream keeps every delta in order and nothing the user saw is lost or repeated; "
    "café naïve résumé — 東京 → ok. "
)


def generate(path: str, deltas: int, chunk_size: int) -> dict[str, Any]:
    """Record the long answer's trace at `path` through `engine.consume`."""
    import engine
    from engine.simulator.shapes import assemble, completed, created, output_items, text_message, to_reply
    from machines.records import Chunk

    length = deltas * 4
    text = (_WORDS * (length // len(_WORDS) + 1))[:length]
    message = text_message(text, deltas=deltas)
    parts = assemble(created(), message, completed(output_items(message)))
    del message
    reply = to_reply(parts, chunking=chunk_size)
    del parts
    chunks = [step.data for step in reply.steps if isinstance(step, Chunk)]
    del reply
    result = engine.consume(chunks, trace=path)
    if result.output_text != text:
        raise SystemExit("bench_replay: the recorded answer is not the generated text")
    return {"chunks": len(chunks), "stream_bytes": sum(map(len, chunks))}


def replay_once(path: str, use_tracemalloc: bool) -> dict[str, Any]:
    """Replay the trace once in this process; the figures as a dict."""
    import engine

    if use_tracemalloc:
        import tracemalloc

        tracemalloc.start()
    started = time.perf_counter()
    report = engine.replay(path)
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {
        "records": report.records,
        "identical": report.identical,
        "seconds": round(seconds, 3),
    }
    if use_tracemalloc:
        out["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    return out


def measure_child(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run this script as a child with `args`; its JSON answer and its peak RSS in MB."""
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"bench_replay: child {args} exited with {child.returncode}")
    answer: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
    return answer, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--deltas", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=4096, help="bytes per network read")
    parser.add_argument("--trace", help="replay this trace (recorded if it does not exist)")
    parser.add_argument("--keep", action="store_true", help="keep the generated trace")
    parser.add_argument("--tracemalloc", action="store_true", help="also measure with tracemalloc")
    parser.add_argument("--child-generate", help=argparse.SUPPRESS)
    parser.add_argument("--child-replay", help=argparse.SUPPRESS)
    parser.add_argument("--child-import", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-tracemalloc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_generate:
        print(json.dumps(generate(args.child_generate, args.deltas, args.chunk)))
        return 0
    if args.child_replay:
        print(json.dumps(replay_once(args.child_replay, args.child_tracemalloc)))
        return 0
    if args.child_import:
        import engine  # noqa: F401

        print(json.dumps({}))
        return 0

    folder = None
    path = args.trace
    if path is None:
        folder = tempfile.mkdtemp(prefix="bench_replay_")
        path = os.path.join(folder, f"deltas-{args.deltas}.jsonl")
    generated: dict[str, Any] = {}
    try:
        if not os.path.exists(path):
            print(f"recording {args.deltas:,} deltas in {args.chunk}-byte chunks to {path} ...")
            generated, _ = measure_child(
                ["--child-generate", path, "--deltas", str(args.deltas), "--chunk", str(args.chunk)]
            )
        size_mb = os.path.getsize(path) / 2**20
        _, base_rss = measure_child(["--child-import"])
        replayed, peak_rss = measure_child(["--child-replay", path])
        figures: dict[str, Any] = {
            "deltas": args.deltas,
            "chunk": args.chunk,
            "trace_mb": round(size_mb, 1),
            **generated,
            "records": replayed["records"],
            "identical": replayed["identical"],
            "seconds": replayed["seconds"],
            "records_per_s": round(replayed["records"] / replayed["seconds"]),
            "peak_rss_mb": round(peak_rss, 1),
            "base_rss_mb": round(base_rss, 1),
        }
        if args.tracemalloc:
            traced, _ = measure_child(["--child-replay", path, "--child-tracemalloc"])
            figures["tracemalloc_peak_mb"] = traced["tracemalloc_peak_mb"]
    finally:
        if folder is not None and not args.keep:
            for name in os.listdir(folder):
                os.unlink(os.path.join(folder, name))
            os.rmdir(folder)
    print(
        f"trace {figures['trace_mb']} MB, {figures['records']:,} records: "
        f"{'identical' if figures['identical'] else 'DIVERGED'} in {figures['seconds']} s "
        f"({figures['records_per_s']:,} records/s)"
    )
    print(f"peak RSS {figures['peak_rss_mb']} MB (interpreter and libraries alone: {figures['base_rss_mb']} MB)")
    if "tracemalloc_peak_mb" in figures:
        print(f"tracemalloc peak {figures['tracemalloc_peak_mb']} MB")
    print("RESULT " + json.dumps(figures))
    return 0 if figures["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
