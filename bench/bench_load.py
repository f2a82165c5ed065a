"""Load benchmark: many concurrent `engine.arun_turn` turns against a loopback server, beside the
openai SDK's own async stream on the same server, in the same run.

Theory of operation
===================

Server: a small purpose-built asyncio HTTP/1.1 server (this file, ``--serve``) in its own
process, so it neither shares the client's event loop nor its GIL. Every request gets the same
answer: ``response.created``, ``response.in_progress``, one assistant message streamed as
``--deltas`` text deltas (200 by default), its ``*.done`` events and ``response.completed``,
built with the `engine.simulator.shapes` builders, each event one HTTP chunk, the connection kept
alive afterwards. The server writes one event per connection per pass through its loop, so
concurrent streams interleave the way a busy real server's do. A request whose
``metadata.drop`` is ``"1"`` is, the first time its ``metadata.turn`` is seen, cut in the middle
of the text (FIN without the chunked terminator); the next request for that turn gets the whole
answer. The threaded `engine.simulator.server` (one thread per connection, a write and a flush
per event) is not used: at these concurrencies, on the same two cores, it cannot keep up and the
figures would measure the server.

Client: for each N in ``--concurrency`` (50, 200, 500), N tasks each run ``--turns`` turns back
to back through one shared ``openai.AsyncOpenAI`` client (``max_retries=0``), 10 % of the turns
(``--drop-rate``) being cut on their first attempt. Three ways, each on fresh turn ids:

``streamfsm``
    ``engine.arun_turn`` with the default policy (one stream retry), answer text collected from
    ``on_text_delta``.
``streamfsm+idle``
    the same with ``TurnPolicy(idle_timeout_s=0.5)``.
``sdk``
    ``await client.responses.create(..., stream=True)`` iterated (the SDK's typed events), text
    from ``response.output_text.delta`` events; on an exception the turn is sent again (up to two
    attempts), starting its text over.

Checked for every turn: it completed; the text delivered (callbacks, or the SDK's deltas) is
exactly the answer, nothing lost or delivered twice across the retry; no attempt ended on an
idle or read timeout (the server is never silent, so any is a false timeout); the cut turns
were retried. And for every batch, with the garbage collector off from its first turn until
after ``client.close()``: how many sockets to the server are still open then (``sockets_left``:
a connection nothing closed, which only the garbage collector would). Cuts end the connection
with a FIN, or with a reset (``--cut rst``: ``SO_LINGER`` 0). Reported per N and way: turns/s
(turns / wall time of the whole batch), and the ratio streamfsm / sdk. Output: a table, then one
line ``RESULT {json}``. Exit status 1 if a check failed.

Run from the repository root::

    python bench/bench_load.py [--concurrency 50,200,500] [--turns 1] [--deltas 200] [--cut rst]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import signal
import socket
import statistics
import struct
import sys
import time
from typing import Any, Callable, Final

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_process import ServerProcess  # noqa: E402  (a sibling script of this one)

ANSWER_UNIT: Final = "load test é "  # a multi-byte character in every few deltas
WAYS: Final = ("streamfsm", "streamfsm+idle", "sdk")
IDLE_TIMEOUT_S: Final = 0.5


# -- the server ----------------------------------------------------------------------------------


def answer_text(deltas: int) -> str:
    """The answer every turn streams, as `deltas` pieces of 4 characters."""
    text = (ANSWER_UNIT * (deltas * 4 // len(ANSWER_UNIT) + 1))[: deltas * 4]
    return text


def _reply_frames(deltas: int) -> list[bytes]:
    """The answer's SSE events, each one HTTP chunk (chunked transfer-encoding framing)."""
    from engine.simulator.shapes import (
        assemble,
        completed,
        created,
        in_progress,
        output_items,
        text_message,
    )
    from engine.simulator.replies import sse_frame

    message = text_message(answer_text(deltas), deltas=deltas)
    events = assemble(created(), in_progress(), message, completed(output_items(message)))
    frames = [sse_frame(event) for event in events if isinstance(event, dict)]
    return [b"%x\r\n%s\r\n" % (len(frame), frame) for frame in frames]


_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\nx-request-id: req_bench\r\n\r\n"
)


async def _serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    frames: list[bytes],
    seen: set[str],
    reset: bool = False,
) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            try:
                metadata = orjson.loads(body).get("metadata") or {}
            except (orjson.JSONDecodeError, AttributeError):
                metadata = {}
            turn = str(metadata.get("turn", ""))
            cut = metadata.get("drop") == "1" and turn not in seen
            seen.add(turn)
            writer.write(_HEAD)
            stop = len(frames) // 2 if cut else len(frames)
            for frame in frames[:stop]:
                writer.write(frame)
                await writer.drain()
                await asyncio.sleep(0)  # one event per connection per loop pass
            if cut:
                if reset:  # a reset, not an orderly close: SO_LINGER 0, then close
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                else:
                    writer.close()
                return
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def _serve(port: int, deltas: int, reset: bool = False) -> None:
    frames = _reply_frames(deltas)
    seen: set[str] = set()
    server = await asyncio.start_server(
        lambda r, w: _serve_connection(r, w, frames, seen, reset), "127.0.0.1", port,
        backlog=4096,
    )
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def server_for(deltas: int, cut: str = "fin") -> ServerProcess:
    """The benchmark server (`--serve`) in a child process, on a free loopback port."""
    return ServerProcess([os.path.abspath(__file__), "--serve", "--deltas", str(deltas),
                          "--cut", cut])


# -- the client ----------------------------------------------------------------------------------


class Tally:
    """What one batch of turns did."""

    def __init__(self) -> None:
        self.turns = 0
        self.completed = 0
        self.text_errors = 0
        self.false_timeouts = 0
        self.retried = 0
        self.sockets_left = 0
        self.raised: list[str] = []

    def add(self, other: Tally) -> None:
        self.turns += other.turns
        self.completed += other.completed
        self.text_errors += other.text_errors
        self.false_timeouts += other.false_timeouts
        self.retried += other.retried
        self.sockets_left += other.sockets_left
        self.raised += other.raised

    def to_json(self) -> dict[str, Any]:
        return {
            "turns": self.turns,
            "completed": self.completed,
            "text_errors": self.text_errors,
            "false_timeouts": self.false_timeouts,
            "retried": self.retried,
            "sockets_left": self.sockets_left,
            "raised": self.raised[:5],
        }


def _request(turn: str, cut: bool) -> dict[str, Any]:
    return {
        "model": "gpt-5",
        "input": "Say the load test answer.",
        "metadata": {"turn": turn, "drop": "1" if cut else "0"},
    }


async def _streamfsm_turn(client: Any, turn: str, cut: bool, answer: str, idle: bool,
                          tally: Tally) -> None:
    import engine

    delivered: list[str] = []
    policy = engine.TurnPolicy(idle_timeout_s=IDLE_TIMEOUT_S if idle else None)
    result = await engine.arun_turn(
        client, _request(turn, cut), policy=policy,
        callbacks=engine.Callbacks(on_text_delta=delivered.append),
    )
    reasons = [a.reason for a in result.attempts]
    tally.turns += 1
    tally.completed += result.outcome == "completed"
    tally.text_errors += "".join(delivered) != answer or result.output_text != answer
    tally.false_timeouts += sum(r in ("idle_timeout", "read_timeout") for r in reasons)
    tally.retried += len(reasons) > 1


async def _sdk_turn(client: Any, turn: str, cut: bool, answer: str, tally: Tally) -> None:
    import httpx2
    import openai

    tally.turns += 1
    for attempt in range(2):
        parts: list[str] = []
        try:
            stream = await client.responses.create(**_request(turn, cut), stream=True)
            async for event in stream:
                if event.type == "response.output_text.delta":
                    parts.append(event.delta)
        except (openai.APIError, httpx2.HTTPError) as error:
            if isinstance(error, (openai.APITimeoutError, httpx2.TimeoutException)):
                tally.false_timeouts += 1
            if attempt == 0:
                tally.retried += 1
            continue
        tally.completed += 1
        tally.text_errors += "".join(parts) != answer
        return
    tally.text_errors += 1


async def run_batch(base_url: str, way: str, n: int, turns: int, drop_rate: float,
                    answer: str, tag: str) -> tuple[Tally, int, float, float]:
    """N concurrent workers, each running `turns` turns back to back: the batch's tally, the
    number of turns planned to be cut, its wall time and the client process's CPU time."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    tally = Tally()
    chooser = random.Random(f"{tag}:{n}")
    plan = [[chooser.random() < drop_rate for _ in range(turns)] for _ in range(n)]

    async def worker(index: int) -> None:
        for k, cut in enumerate(plan[index]):
            turn = f"{tag}:{way}:{n}:{index}:{k}"
            try:
                if way == "sdk":
                    await _sdk_turn(client, turn, cut, answer, tally)
                else:
                    await _streamfsm_turn(client, turn, cut, answer, way == "streamfsm+idle", tally)
            except Exception as error:  # a raised turn is a failed check, not a crash
                tally.turns += 1
                tally.raised.append(f"{type(error).__name__}: {error}")

    collecting = gc.isenabled()
    gc.disable()  # a connection nothing closed stays open until after close(): counted below
    try:
        began, cpu_began = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(i) for i in range(n)))
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu_began
        await client.close()
        tally.sockets_left = len(open_sockets_to(int(base_url.rsplit(":", 1)[1].split("/")[0])))
    finally:
        if collecting:
            gc.enable()
    return tally, sum(map(sum, plan)), seconds, cpu


def open_sockets_to(port: int) -> list[socket.socket]:
    """The sockets of this process still open to `port`."""
    found = []
    for thing in gc.get_objects():
        if isinstance(thing, socket.socket) and thing.fileno() != -1:
            try:
                peer = thing.getpeername()
            except OSError:
                continue
            if isinstance(peer, tuple) and peer[1] == port:
                found.append(thing)
    return found


def _problems(way: str, row: dict[str, Any]) -> list[str]:
    problems = []
    if row["completed"] != row["turns"]:
        problems.append(f"{row['turns'] - row['completed']} turns did not complete")
    if row["text_errors"]:
        problems.append(f"{row['text_errors']} turns lost or duplicated text")
    if row["false_timeouts"]:
        problems.append(f"{row['false_timeouts']} false timeouts")
    if row["retried"] != row["planned_cuts"]:
        problems.append(f"{row['retried']} turns retried, {row['planned_cuts']} cut")
    if row["raised"]:
        problems.append(f"raised: {row['raised'][0]}")
    if row["sockets_left"]:
        problems.append(f"{row['sockets_left']} sockets still open after client.close()")
    return [f"{way}: {p}" for p in problems]


def measure(concurrency: list[int], turns: int, deltas: int, drop_rate: float, rounds: int = 1,
            report: Callable[[str], None] = print, cut: str = "fin") -> dict[str, Any]:
    """Every N and way against one server process, the ways taking turns `rounds` times; the
    figures as JSON. Turns/s is the median over rounds; the checks count every turn."""
    answer = answer_text(deltas)
    server = server_for(deltas, cut)
    results: dict[str, Any] = {}
    problems: list[str] = []
    notes: list[str] = []
    try:
        for way in WAYS:  # warm-up, not counted: imports, first connections, first-call costs
            asyncio.run(run_batch(server.base_url, way, 4, 1, 0.5, answer, f"{os.getpid()}.warm"))
        for n in concurrency:
            tallies = {way: Tally() for way in WAYS}
            rates: dict[str, list[float]] = {way: [] for way in WAYS}
            cpu_per_turn: dict[str, list[float]] = {way: [] for way in WAYS}
            cuts = dict.fromkeys(WAYS, 0)
            for round_ in range(rounds):
                for way in WAYS:
                    tally, planned, seconds, cpu = asyncio.run(run_batch(
                        server.base_url, way, n, turns, drop_rate, answer, f"{os.getpid()}.{round_}"
                    ))
                    tallies[way].add(tally)
                    cuts[way] += planned
                    rates[way].append(tally.turns / seconds)
                    cpu_per_turn[way].append(cpu / max(tally.turns, 1))
            row: dict[str, Any] = {}
            for way in WAYS:
                row[way] = {
                    **tallies[way].to_json(),
                    "planned_cuts": cuts[way],
                    "turns_per_s": round(statistics.median(rates[way]), 2),
                    "client_cpu_ms_per_turn": round(1000 * statistics.median(cpu_per_turn[way]), 2),
                }
                found = [f"N={n} {p}" for p in _problems(way, row[way])]
                # the SDK is the yardstick, not the subject: its failures are noted, not failed
                (notes if way == "sdk" else problems).extend(found)
            sdk = row["sdk"]
            for way in ("streamfsm", "streamfsm+idle"):
                row[way]["vs_sdk"] = round(row[way]["turns_per_s"] / sdk["turns_per_s"], 2)
                row[way]["vs_sdk_cpu"] = round(
                    sdk["client_cpu_ms_per_turn"] / row[way]["client_cpu_ms_per_turn"], 2
                )
            results[str(n)] = row
            report(_table_rows(n, row))
    finally:
        server.close()
    return {
        "server": "asyncio (bench/bench_load.py --serve), own process",
        "deltas": deltas,
        "turns_per_worker": turns,
        "rounds": rounds,
        "drop_rate": drop_rate,
        "cut": cut,
        "idle_timeout_s": IDLE_TIMEOUT_S,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "problems": problems,
        "sdk_notes": notes,
        "ok": not problems,
    }


def _table_rows(n: int, row: dict[str, Any]) -> str:
    lines = []
    for way in WAYS:
        r = row[way]
        ratio = "" if "vs_sdk" not in r else f"{r['vs_sdk']:.2f}"
        cpu_ratio = "" if "vs_sdk_cpu" not in r else f"{r['vs_sdk_cpu']:.2f}"
        lines.append(
            f"{n:>5} {way:<15} {r['turns_per_s']:>8.1f} {ratio:>7} {r['client_cpu_ms_per_turn']:>8.1f}"
            f" {cpu_ratio:>7} {r['false_timeouts']:>6} {r['text_errors']:>5}"
            f" {r['retried']:>4}/{r['planned_cuts']:<4} {r['completed']:>5}/{r['turns']}"
            f" {r['sockets_left']:>5}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="50,200,500", help="comma-separated N values")
    parser.add_argument("--turns", type=int, default=1, help="turns per worker, back to back")
    parser.add_argument("--deltas", type=int, default=200, help="text deltas per answer")
    parser.add_argument("--drop-rate", type=float, default=0.1,
                        help="share of turns whose first attempt is cut")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times the three ways take turns at each N (median turns/s)")
    parser.add_argument("--cut", choices=("fin", "rst"), default="fin",
                        help="how a cut turn's connection ends: FIN, or a reset")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(0, args.deltas, args.cut == "rst"))
        return
    concurrency = [int(n) for n in args.concurrency.split(",") if n]
    print("    N way              turns/s  vs_sdk  cpu_ms  vs_sdk  false  text retried  completed"
          " socks")
    print("                                           /turn   (cpu)"
          "                                left")
    result = measure(concurrency, args.turns, args.deltas, args.drop_rate, args.rounds,
                     cut=args.cut)
    for problem in result["problems"]:
        print("PROBLEM " + problem)
    for note in result["sdk_notes"]:
        print("SDK " + note)
    print("RESULT " + json.dumps(result))
    if not result["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
