"""What a dropped stream costs: one long answer cut after N events, healed by streamfsm with
resume (a background request), by streamfsm without it (`TurnPolicy(resume=False)`), and by the
Codex CLI (`codex exec`, which sends the request again). Per run: the HTTP requests made, the bytes
of event stream the server sent, and the answer text it sent more than once.

    python bench/bench_resume.py [--deltas 60] [--cut 32] [--codex PATH | --no-codex]

The codex row needs a codex binary (`--codex`, else `STREAMFSM_CODEX`, else the cache folder
.ci/run installs into); without one it is left out. Prints a table and `RESULT {json}`.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

import engine  # noqa: E402
from engine.drivers.sse import SseDecoder  # noqa: E402
from engine.log.trace import input_from_json, read_trace  # noqa: E402
from engine.simulator import shapes  # noqa: E402
from engine.simulator.scenarios import Rule, Scenario, frame_ends  # noqa: E402
from engine.simulator.server import ResponsesSimulator  # noqa: E402
from machines.records import Chunk  # noqa: E402

WORDS = ("streamfsm resumes a background response where its stream broke instead of asking the "
         "model to start over ").split()
CODEX_VERSION = "0.169.0"


def answer_events(deltas: int) -> list[dict[str, Any]]:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(deltas * 4)) + "."
    message = shapes.text_message(text, deltas=deltas)
    parts = shapes.assemble(shapes.created(), shapes.in_progress(), message,
                            shapes.completed(shapes.output_items(message)))
    return [p for p in parts if isinstance(p, dict)]


def delta_chars(events: list[dict[str, Any]]) -> int:
    return sum(len(e["delta"]) for e in events if e["type"] == "response.output_text.delta")


def body_of(events: list[dict[str, Any]]) -> bytes:
    reply = shapes.to_reply(events)
    return b"".join(step.data for step in reply.steps if isinstance(step, Chunk))


def run_streamfsm(events: list[dict[str, Any]], cut: int, resume: bool, trace: Path) -> dict[str, Any]:
    """One turn over loopback HTTP; what the server sent is read back from the turn's trace."""
    reply = shapes.to_reply(events, headers=tuple(shapes.SUCCESS_HEADERS))
    if resume:
        scenario = Scenario([Rule(reply, background_drop_after_events=cut)])
    else:  # the same cut, as the first request's stream, then the whole answer again
        cut_at = frame_ends(body_of(events))[cut - 1]
        scenario = Scenario([Rule(reply, times=1, drop_after_bytes=cut_at), Rule(reply)])
    request = {"model": "gpt-5", "input": "Explain resuming.", "background": True}
    with ResponsesSimulator(scenario) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="bench-key", max_retries=0)
        started = time.monotonic()
        result = engine.run_turn(client, request, trace=trace,
                                 policy=engine.TurnPolicy(resume=resume))
        took = time.monotonic() - started
        requests = [f"{r.method} {r.path}" for r in sim.requests]
    received = 0
    decoders: dict[int, SseDecoder] = {}
    deltas: list[dict[str, Any]] = []
    for record in read_trace(trace).inputs():
        item = input_from_json(record)
        if not isinstance(item, Chunk):
            continue
        received += len(item.data)
        decoder = decoders.setdefault(record["attempt"], SseDecoder())
        for event in decoder.feed(item.data):
            payload = json.loads(event.data)
            if payload.get("type") == "response.output_text.delta":
                deltas.append(payload)
    text = result.output_text
    return {
        "ok": result.outcome == "completed" and text == full_text(events),
        "requests": requests,
        "bytes_sent": received,
        "text_resent": delta_chars(deltas) - len(text),
        "seconds": round(took, 3),
    }


def full_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


def find_codex(named: str | None) -> Path | None:
    for candidate in (named, os.environ.get("STREAMFSM_CODEX")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    folder = Path(base) / "streamfsm" / f"codex-{CODEX_VERSION}"
    for relative in ("node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex",
                     "node_modules/.bin/codex"):
        if os.access(folder / relative, os.X_OK):
            return folder / relative
    return None


def run_codex(codex: Path, events: list[dict[str, Any]], cut: int, work: Path) -> dict[str, Any]:
    """`codex exec` against `streamfsm serve` with the same answer cut after the same N events
    (codex sends no background request, so the cut is made by bytes)."""
    body = body_of(events)
    cut_at = frame_ends(body)[cut - 1]
    scenario = work / "codex.json"
    scenario.write_text(json.dumps({"reply": [
        {"events": events, "drop_after_bytes": cut_at, "times": 1},
        {"events": events},
    ]}))
    log = work / "requests.jsonl"
    server = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", str(scenario), "--port", "0", "--log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().rsplit(" at ", 1)[1].strip()
        home = work / "codex-home"
        home.mkdir()
        argv = [str(codex), "exec", "--skip-git-repo-check", "--color", "never",
                "-c", 'model="gpt-5.1-codex"', "-c", 'model_provider="loop"',
                "-c", 'model_providers.loop.name="loopback"',
                "-c", f'model_providers.loop.base_url="{base_url}"',
                "-c", 'model_providers.loop.wire_api="responses"',
                "-c", 'model_providers.loop.env_key="STREAMFSM_LOOPBACK_KEY"',
                "-c", "model_providers.loop.requires_openai_auth=false",
                "Explain resuming."]
        env = {**os.environ, "CODEX_HOME": str(home), "STREAMFSM_LOOPBACK_KEY": "loopback-key"}
        env.pop("OPENAI_API_KEY", None)
        started = time.monotonic()
        done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        took = time.monotonic() - started
    finally:
        server.terminate()
        server.communicate(timeout=10)
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    posts = [r for r in requests if r["method"] == "POST" and r["path"] == "/v1/responses"]
    full = [r for r in posts if r["reply"] == 1]
    # request 1 sent the cut prefix, every later one the whole body again
    sent = cut_at + len(body) * len(full)
    resent = delta_chars(events[:cut]) + delta_chars(events) * max(0, len(full) - 1)
    return {
        "ok": done.returncode == 0 and full_text(events).strip(".") in done.stdout,
        "requests": [f"{r['method']} {r['path']}" for r in requests],
        "bytes_sent": sent,
        "text_resent": resent,
        "seconds": round(took, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=60, help="text deltas in the answer")
    parser.add_argument("--cut", type=int, default=32, help="events sent before the cut")
    parser.add_argument("--codex", help="the codex binary (default: found as the tests find it)")
    parser.add_argument("--no-codex", action="store_true", help="leave the codex row out")
    args = parser.parse_args()
    events = answer_events(args.deltas)
    if not 0 < args.cut < len(events):
        parser.error(f"--cut must be between 1 and {len(events) - 1}")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        run_streamfsm(events, args.cut, True, work / "warm-up.jsonl")  # imports, first connection
        rows["streamfsm, resume"] = run_streamfsm(events, args.cut, True, work / "resume.jsonl")
        rows["streamfsm, resume=False"] = run_streamfsm(events, args.cut, False, work / "again.jsonl")
        codex = None if args.no_codex else find_codex(args.codex)
        if codex is not None:
            rows[f"codex exec {CODEX_VERSION}"] = run_codex(codex, events, args.cut, work)
    answer = len(full_text(events))
    print(f"answer: {len(events)} events, {answer} characters of text; cut after {args.cut} events "
          f"({delta_chars(events[:args.cut])} characters shown)")
    print(f"{'':26} {'ok':>3} {'requests':>9} {'bytes sent':>11} {'text re-sent':>13} {'s':>6}")
    for name, row in rows.items():
        print(f"{name:26} {'yes' if row['ok'] else 'NO':>3} {len(row['requests']):>9} "
              f"{row['bytes_sent']:>11} {row['text_resent']:>13} {row['seconds']:>6}")
        print(f"{'':26}     {', '.join(row['requests'])}")
    print("RESULT " + json.dumps({"answer_chars": answer, "cut": args.cut, "rows": rows}))
    return 0 if all(row["ok"] for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
