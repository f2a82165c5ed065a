"""Benchmark of streamfsm's hot path: one long streamed answer, three ways to digest it.

Theory of operation
===================

One recorded Responses-API stream is built deterministically with the `engine.simulator.shapes` builders:
``response.created``, one assistant message streamed as N ``response.output_text.delta`` events of
a few characters each (the text mixes ASCII with a few multi-byte characters), the ``*.done``
events and ``response.completed``. Its SSE bytes are cut into network-sized chunks (4 KiB by
default, so chunk boundaries fall inside events, lines and UTF-8 characters).

The same chunks are then digested, in this one process, by:

``consume``
    ``engine.consume(chunks)``: SSE decoding, the event log (an input record per chunk, an effect
    record per delivered delta), the stream-attempt machine and the output assembly.
``consume+trace``
    the same, and the trace file written (JSON Lines, every record rendered).
``sdk``
    the openai SDK's own streaming helper: its ``Stream`` (``SSEDecoder`` + ``construct_type`` of
    each event into the typed ``ResponseStreamEvent`` union) over an ``httpx2.Response`` holding
    the same chunks, wrapped in the ``ResponseStream`` that ``client.responses.stream()`` returns
    (``ResponseStreamState.handle_event`` accumulates the snapshot and builds the helper events).
    No socket is involved; the client object is built once and never sends a request.
``bare``
    the floor: split the bytes on blank lines and ``json.loads`` (stdlib) every ``data:`` line,
    keeping only the text deltas (so the result can be checked).

Each path must assemble the same answer text; the script stops with an error if one does not.

Timing: ``time.perf_counter`` around one whole digestion, the garbage collector disabled while
timing (and a collection before each run), one warm-up run of each path, then ``--rounds``
rounds in which the paths take turns. Reported per event (``µs/event`` = median time / number of
SSE events). Ratios are *paired*: the median over rounds of one path's time over the other's in
the same round, so load from other processes that comes and goes between rounds cancels out
rather than landing on one path (the 1-minute load average is reported too). Peak memory is
measured in separate, untimed runs with ``tracemalloc`` (which slows everything down) and reported
against the bare loop; the input chunks exist before tracing starts and are not counted.

Output: a table on stdout, then one line ``RESULT {json}`` with every figure.

Run from the repository root::

    python bench/bench_consume.py [--deltas 20000] [--rounds 7] [--chunk 4096]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2
import openai
from openai._streaming import Stream
from openai._types import omit
from openai.lib.streaming.responses import ResponseStream
from openai.types.responses import ResponseStreamEvent

import engine
from engine.simulator.shapes import assemble, completed, created, output_items, text_message, to_reply
from machines.records import Chunk

__all__ = [
    "PATHS",
    "RecordedStream",
    "build_stream",
    "main",
    "make_run_consume_traced",
    "make_run_sdk",
    "measure",
    "run_bare",
    "run_consume",
    "run_sdk",
    "split_and_parse",
    "timed_rounds",
]

#: Targets the report checks: the SDK helper should be at least this many times slower than
#: consume, and consume at most this many times slower than the bare loop.
SDK_OVER_CONSUME_TARGET = 10.0
CONSUME_OVER_BARE_TARGET = 2.5

_WORDS = (
    "the stream keeps every delta in order and nothing the user saw is lost or repeated; "
    "café naïve résumé — 東京 → ok. "
)


class RecordedStream:
    """The recorded stream: its chunks, the answer text, and how many SSE events it holds."""

    __slots__ = ("chunks", "text", "events", "size")

    def __init__(self, chunks: list[bytes], text: str, events: int) -> None:
        self.chunks = chunks
        self.text = text
        self.events = events
        self.size = sum(len(chunk) for chunk in chunks)


def answer_text(deltas: int, chars_per_delta: int = 4) -> str:
    """A deterministic answer of about ``chars_per_delta`` characters per delta."""
    length = deltas * chars_per_delta
    repeats = length // len(_WORDS) + 1
    return (_WORDS * repeats)[:length]


def build_stream(deltas: int = 20_000, chunk_size: int = 4096) -> RecordedStream:
    """created, one message of ``deltas`` text deltas with its done events, completed; as SSE
    bytes cut every ``chunk_size`` bytes."""
    text = answer_text(deltas)
    message = text_message(text, deltas=deltas)
    parts = assemble(created(), message, completed(output_items(message)))
    reply = to_reply(parts, chunking=chunk_size)
    chunks = [step.data for step in reply.steps if isinstance(step, Chunk)]
    return RecordedStream(chunks, text, len(parts))


# --------------------------------------------------------------------------------------------
# The paths. Each takes the chunks and returns the assembled answer text.


def run_consume(chunks: Sequence[bytes]) -> str:
    return engine.consume(chunks).output_text


def make_run_consume_traced(trace_path: str) -> Callable[[Sequence[bytes]], str]:
    def run_consume_traced(chunks: Sequence[bytes]) -> str:
        return engine.consume(chunks, trace=trace_path).output_text

    return run_consume_traced


def sdk_client() -> openai.OpenAI:
    """A real client; it only lends `Stream` its SSE decoder and response processing."""
    return openai.OpenAI(api_key="sk-bench-not-used", base_url="http://127.0.0.1:9/v1", max_retries=0)


def make_run_sdk(client: openai.OpenAI) -> Callable[[Sequence[bytes]], str]:
    def run_sdk(chunks: Sequence[bytes]) -> str:
        response = httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=iter(chunks)
        )
        raw_stream: Stream[Any] = Stream(cast_to=ResponseStreamEvent, response=response, client=client)
        helper: ResponseStream[Any] = ResponseStream(
            raw_stream=raw_stream, text_format=omit, input_tools=omit, starting_after=None
        )
        return helper.get_final_response().output_text

    return run_sdk


def run_sdk(chunks: Sequence[bytes]) -> str:
    """The SDK path with a fresh client (for one-off use; the benchmark reuses one client)."""
    return make_run_sdk(sdk_client())(chunks)


def run_bare(chunks: Sequence[bytes]) -> str:
    return split_and_parse(chunks, json.loads)


def split_and_parse(chunks: Sequence[bytes], loads: Callable[[bytes], Any]) -> str:
    """The bare loop: split the bytes on blank lines, `loads` every ``data:`` line, keep the text
    deltas (``bench_paths.py`` takes orjson's for its floor)."""
    pieces: list[str] = []
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        if b"\n\n" not in buffer:
            continue
        blocks = buffer.split(b"\n\n")
        buffer = blocks.pop()
        for block in blocks:
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    event = loads(line[6:])
                    if event["type"] == "response.output_text.delta":
                        pieces.append(event["delta"])
    return "".join(pieces)


# --------------------------------------------------------------------------------------------
# Measuring


def timed_rounds(
    runs: dict[str, Callable[[Sequence[bytes]], object]],
    chunks: Sequence[bytes],
    rounds: int,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Wall times of every path over ``rounds`` rounds, after one warm-up run of each (and,
    into ``cpu`` when given, the thread's CPU times of the same runs).

    The paths take turns within each round, so a change in machine load between rounds touches
    every path alike; the collector runs before each timed run and is disabled during it.
    """
    for run in runs.values():
        run(chunks)  # warm-up: imports, caches, first-call costs
    times: dict[str, list[float]] = {name: [] for name in runs}
    was_enabled = gc.isenabled()
    try:
        for _ in range(rounds):
            for name, run in runs.items():
                gc.collect()
                gc.disable()
                start, start_cpu = time.perf_counter(), time.thread_time()
                run(chunks)
                if cpu is not None:
                    cpu.setdefault(name, []).append(time.thread_time() - start_cpu)
                times[name].append(time.perf_counter() - start)
                gc.enable()
    finally:
        if was_enabled:
            gc.enable()
    return times


def paired_ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of ``slow``'s time over ``fast``'s time in the same round."""
    return statistics.median(a / b for a, b in zip(times[slow], times[fast]))


def peak_bytes(run: Callable[[Sequence[bytes]], str], chunks: Sequence[bytes]) -> int:
    """Peak traced allocation while ``run`` digests the chunks (the chunks themselves excluded)."""
    gc.collect()
    tracemalloc.start()
    try:
        run(chunks)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


PATHS: tuple[str, ...] = ("consume", "consume+trace", "sdk", "bare")


def measure(deltas: int, rounds: int, chunk_size: int, memory: bool = True) -> dict[str, Any]:
    stream = build_stream(deltas, chunk_size)
    client = sdk_client()
    with tempfile.TemporaryDirectory(prefix="bench-consume-") as tmp:
        trace_path = os.path.join(tmp, "trace.jsonl")
        runs: dict[str, Callable[[Sequence[bytes]], str]] = {
            "consume": run_consume,
            "consume+trace": make_run_consume_traced(trace_path),
            "sdk": make_run_sdk(client),
            "bare": run_bare,
        }
        texts = {name: run(stream.chunks) for name, run in runs.items()}
        wrong = [name for name, text in texts.items() if text != stream.text]
        if wrong:
            raise SystemExit(f"paths disagree on the assembled text: {', '.join(wrong)}")
        times = timed_rounds(runs, stream.chunks, rounds)
        seconds = {name: statistics.median(values) for name, values in times.items()}
        peaks = {name: peak_bytes(run, stream.chunks) for name, run in runs.items()} if memory else {}
        trace_bytes = os.path.getsize(trace_path)
    per_event = {name: s / stream.events * 1e6 for name, s in seconds.items()}
    result: dict[str, Any] = {
        "deltas": deltas,
        "events": stream.events,
        "chunks": len(stream.chunks),
        "chunk_size": chunk_size,
        "stream_bytes": stream.size,
        "trace_bytes": trace_bytes,
        "rounds": rounds,
        "text_chars": len(stream.text),
        "texts_agree": True,
        "median_ms": {name: round(s * 1e3, 3) for name, s in seconds.items()},
        "us_per_event": {name: round(us, 3) for name, us in per_event.items()},
        "time_vs_bare": {name: round(paired_ratio(times, name, "bare"), 2) for name in runs},
        "ratios": {
            "sdk/consume": round(paired_ratio(times, "sdk", "consume"), 2),
            "consume/bare": round(paired_ratio(times, "consume", "bare"), 2),
            "consume+trace/consume": round(paired_ratio(times, "consume+trace", "consume"), 2),
            "consume+trace/bare": round(paired_ratio(times, "consume+trace", "bare"), 2),
            "sdk/bare": round(paired_ratio(times, "sdk", "bare"), 2),
        },
        "targets": {
            "sdk/consume>=": SDK_OVER_CONSUME_TARGET,
            "consume/bare<=": CONSUME_OVER_BARE_TARGET,
        },
        "python": platform.python_implementation() + " " + platform.python_version(),
        "openai": openai.__version__,
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    result["targets_met"] = {
        "sdk/consume": result["ratios"]["sdk/consume"] >= SDK_OVER_CONSUME_TARGET,
        "consume/bare": result["ratios"]["consume/bare"] <= CONSUME_OVER_BARE_TARGET,
    }
    if memory:
        result["peak_kib"] = {name: round(b / 1024, 1) for name, b in peaks.items()}
        result["peak_vs_bare"] = {name: round(b / peaks["bare"], 2) for name, b in peaks.items()}
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['events']} SSE events ({result['deltas']} text deltas), "
        f"{result['stream_bytes']} bytes in {result['chunks']} chunks of {result['chunk_size']}; "
        f"median of {result['rounds']} rounds; {result['python']}, openai {result['openai']}, "
        f"{result['cpus']} CPUs, load average {result['load_average_1min']}",
        "",
        f"{'path':<15}{'median ms':>11}{'µs/event':>10}{'× bare':>8}"
        + (f"{'peak KiB':>11}{'mem × bare':>12}" if "peak_kib" in result else ""),
    ]
    for name in PATHS:
        row = (
            f"{name:<15}{result['median_ms'][name]:>11.1f}{result['us_per_event'][name]:>10.2f}"
            f"{result['time_vs_bare'][name]:>8.2f}"
        )
        if "peak_kib" in result:
            row += f"{result['peak_kib'][name]:>11.0f}{result['peak_vs_bare'][name]:>12.2f}"
        lines.append(row)
    ratios, met = result["ratios"], result["targets_met"]
    lines += [
        "",
        f"sdk/consume  = {ratios['sdk/consume']:.2f}  (target >= {SDK_OVER_CONSUME_TARGET:g}: "
        f"{'met' if met['sdk/consume'] else 'MISSED'})",
        f"consume/bare = {ratios['consume/bare']:.2f}  (target <= {CONSUME_OVER_BARE_TARGET:g}: "
        f"{'met' if met['consume/bare'] else 'MISSED'})",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=20_000, help="text deltas in the stream")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per path (median)")
    parser.add_argument("--chunk", type=int, default=4096, help="network chunk size in bytes")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    args = parser.parse_args(argv)
    if args.deltas < 1 or args.rounds < 1 or args.chunk < 1:
        parser.error("--deltas, --rounds and --chunk must be positive")
    result = measure(args.deltas, args.rounds, args.chunk, memory=not args.no_memory)
    print(table(result))
    print("RESULT " + json.dumps(result, ensure_ascii=False, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
