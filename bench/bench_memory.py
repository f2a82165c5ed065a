"""Peak memory of a long turn and of a long replay, each in a child process of its own.

Theory of operation
===================

Two workloads, each run in a fresh child that does nothing else, so the figure is the whole
process's peak resident set size (``ru_maxrss`` from ``os.wait4``: the interpreter, the libraries
and what the workload holds):

``turn``
    ``engine.run_turn`` with a real ``openai.OpenAI`` client and no trace, against a loopback
    server (this file, ``--serve``, in its own process) streaming one answer of ``--deltas``
    one-character text deltas (1,000,000 by default: about 150 MB of event stream) in 64 KiB
    writes, as fast as the client reads. The child checks the answer came whole.
``replay``
    ``engine.replay`` of the trace of one answer of ``--replay-deltas`` one-character deltas,
    each event its own network read (1,500,000 deltas: about 3,000,000 records, an input record
    per read and an effect record per delivered delta). The trace is recorded first, in another
    child (``engine.consume(chunks, trace=PATH)``; recording is not what is measured); the
    replay child checks it is identical.

``base_rss_mb`` is the peak of a child that only imports ``engine`` and ``openai`` and makes a
client, so ``peak_rss_mb - base_rss_mb`` is what the workload itself held. The contract's limit
is 100 MB in total for each (``LIMIT_MB``); the exit status is 1 when a workload passes it or
fails its check.

``--baseline-path CHECKOUT`` runs the same children with another checkout of streamfsm first on
``sys.path`` too (only the public API is used: ``engine.run_turn``, ``engine.consume``,
``engine.replay``), so a change can be measured against what it replaces on the same machine.

Output: a few lines, then one line ``RESULT {json}``. Run from the repository root::

    python bench/bench_memory.py [--deltas 1000000] [--replay-deltas 1500000] [--only turn|replay]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final, Iterator

ROOT: Final = Path(__file__).resolve().parent.parent

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_process import ServerProcess  # noqa: E402  (a sibling script of this one)

#: The contract's limit on each workload's peak memory, in MB.
LIMIT_MB: Final = 100
#: The characters the deltas cycle through.
_LETTERS: Final = "abcdefghijklmnopqrstuvwxyz"
#: Bytes the server writes at once.
_WRITE: Final = 64 * 1024


# -- the answer ------------------------------------------------------------------------------------


def answer_text(deltas: int) -> str:
    """The answer: `deltas` characters, one per delta."""
    return (_LETTERS * (deltas // len(_LETTERS) + 1))[:deltas]


def _frame(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def answer_events(deltas: int) -> Iterator[bytes]:
    """The answer's SSE events, one at a time (never all at once: a million of them would be
    the benchmark's own memory): `response.created`, the message announced, one
    `response.output_text.delta` per character, the `*.done` events and `response.completed`."""
    text = answer_text(deltas)
    sequence = iter(range(10**9))
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress",
            "content": []}
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
    yield _frame({"type": "response.created", "sequence_number": next(sequence),
                  "response": response})
    yield _frame({"type": "response.output_item.added", "sequence_number": next(sequence),
                  "output_index": 0, "item": item})
    yield _frame({"type": "response.content_part.added", "sequence_number": next(sequence),
                  "item_id": "msg_1", "output_index": 0, "content_index": 0,
                  "part": {"type": "output_text", "text": "", "annotations": []}})
    head = ('{"type":"response.output_text.delta","sequence_number":%d,"item_id":"msg_1",'
            '"output_index":0,"content_index":0,"delta":"%s"}')
    for character in text:
        data = head % (next(sequence), character)
        yield b"event: response.output_text.delta\ndata: " + data.encode() + b"\n\n"
    part = {"type": "output_text", "text": text, "annotations": []}
    done = {**item, "status": "completed", "content": [part]}
    yield _frame({"type": "response.output_text.done", "sequence_number": next(sequence),
                  "item_id": "msg_1", "output_index": 0, "content_index": 0, "text": text})
    yield _frame({"type": "response.content_part.done", "sequence_number": next(sequence),
                  "item_id": "msg_1", "output_index": 0, "content_index": 0, "part": part})
    yield _frame({"type": "response.output_item.done", "sequence_number": next(sequence),
                  "output_index": 0, "item": done})
    yield _frame({"type": "response.completed", "sequence_number": next(sequence),
                  "response": {**response, "status": "completed", "output": [done]}})


# -- the server --------------------------------------------------------------------------------------

_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n"
)


def _serve_one(connection: socket.socket, deltas: int) -> None:
    with connection:
        received = b""
        while b"\r\n\r\n" not in received:
            more = connection.recv(65536)
            if not more:
                return
            received += more
        head, _, body = received.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            more = connection.recv(65536)
            if not more:
                return
            body += more
        connection.sendall(_HEAD)
        pending: list[bytes] = []
        size = 0
        for frame in answer_events(deltas):
            pending.append(frame)
            size += len(frame)
            if size >= _WRITE:
                data = b"".join(pending)
                connection.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                pending, size = [], 0
        data = b"".join(pending)
        connection.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))


def serve(deltas: int) -> None:
    """Answer every request with the long answer, one connection at a time, until SIGTERM."""
    listener = socket.create_server(("127.0.0.1", 0))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    while True:
        connection, _ = listener.accept()
        try:
            _serve_one(connection, deltas)
        except OSError:  # the client went away
            pass


def server_for(deltas: int) -> ServerProcess:
    """The server (`--serve`) in a child process, on a free loopback port."""
    return ServerProcess([os.path.abspath(__file__), "--serve", "--deltas", str(deltas)])


# -- the children ------------------------------------------------------------------------------------

#: What each child runs (`--child NAME`), with the checkout under test first on `sys.path`.
_CHILDREN: Final = ("base", "turn", "record", "replay")


def _child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One workload, in this (child) process; what it found, as JSON."""
    import engine
    import openai

    client = openai.OpenAI(base_url=args.base_url or "http://127.0.0.1:9/v1",
                           api_key="sk-bench-memory", max_retries=0)
    if name == "base":
        return {}
    if name == "turn":
        began = time.perf_counter()
        result = engine.run_turn(client, {"model": "gpt-5", "input": "a long answer"})
        seconds = time.perf_counter() - began
        ok = result.outcome == "completed" and result.output_text == answer_text(args.deltas)
        return {"ok": ok, "outcome": result.outcome, "seconds": round(seconds, 1),
                "characters": len(result.output_text)}
    if name == "record":
        result = engine.consume(answer_events(args.replay_deltas), trace=args.trace)
        return {"ok": result.output_text == answer_text(args.replay_deltas),
                "bytes": os.path.getsize(args.trace)}
    began = time.perf_counter()
    report = engine.replay(args.trace)
    seconds = time.perf_counter() - began
    return {"ok": report.identical, "records": report.records, "seconds": round(seconds, 1),
            "records_per_s": round(report.records / seconds)}


def run_child(name: str, checkout: Path, **options: Any) -> dict[str, Any]:
    """Run child `name` with `checkout` first on `sys.path`; its JSON line and peak RSS (MB)."""
    command = [sys.executable, os.path.abspath(__file__), "--child", name]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), str(ROOT / "bench")])}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=checkout)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"bench_memory: child {name} failed ({status}): {output[-500:]}")
    found: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    found["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: kilobytes
    return found


def measure(checkout: Path, deltas: int, replay_deltas: int, only: str | None) -> dict[str, Any]:
    """Both workloads (or `only` one) with `checkout`'s streamfsm."""
    figures: dict[str, Any] = {"base": run_child("base", checkout)}
    if only in (None, "turn"):
        server = server_for(deltas)
        try:
            figures["turn"] = run_child("turn", checkout, deltas=deltas, base_url=server.base_url)
        finally:
            server.close()
    if only in (None, "replay"):
        with tempfile.TemporaryDirectory(prefix="streamfsm-bench-memory-") as scratch:
            trace = os.path.join(scratch, "long.jsonl")
            recorded = run_child("record", checkout, replay_deltas=replay_deltas, trace=trace)
            figures["replay"] = {**run_child("replay", checkout, trace=trace),
                                 "trace_mb": round(recorded["bytes"] / 1e6, 1)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=1_000_000,
                        help="one-character deltas of the turn's answer")
    parser.add_argument("--replay-deltas", type=int, default=1_500_000,
                        help="one-character deltas of the replayed trace (two records each)")
    parser.add_argument("--only", choices=("turn", "replay"), help="run one workload")
    parser.add_argument("--baseline-path", type=Path,
                        help="another checkout of streamfsm, measured the same way first")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=_CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--trace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.deltas)
        return
    if args.child:
        print(json.dumps(_child(args.child, args)))
        return
    checkouts = {"this": ROOT}
    if args.baseline_path is not None:
        checkouts = {"baseline": args.baseline_path.resolve(), **checkouts}
    results = {}
    problems = []
    for label, checkout in checkouts.items():
        figures = measure(checkout, args.deltas, args.replay_deltas, args.only)
        results[label] = figures
        base = figures["base"]["peak_rss_mb"]
        print(f"{label}: base {base} MB")
        for workload in ("turn", "replay"):
            if workload in figures:
                row = figures[workload]
                print(f"{label}: {workload:<6} peak {row['peak_rss_mb']:>7} MB "
                      f"(+{row['peak_rss_mb'] - base:.1f} over base) {json.dumps(row)}")
                if label == "this" and (not row["ok"] or row["peak_rss_mb"] > LIMIT_MB):
                    problems.append(f"{workload}: peak {row['peak_rss_mb']} MB, ok={row['ok']}")
    result = {
        "deltas": args.deltas, "replay_deltas": args.replay_deltas, "limit_mb": LIMIT_MB,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": results, "problems": problems, "ok": not problems,
    }
    print("RESULT " + json.dumps(result))
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
