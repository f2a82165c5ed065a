"""`streamfsm demo --codex`: the real `codex app-server` between the user and the simulator.

One `CodexSession` (one subprocess, one thread) runs five turns against the built-in Responses
simulator, offline and without a login: a text answer, a command the approval callback accepts,
one it declines, a provider stream that drops mid-answer and codex retries by itself, and an
interrupt mid-answer. Each turn prints its path through the app-turn machine's states, its
outcome and what the simulator saw. Without a codex binary it prints one line saying how to get
one and exits 0.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from typing import Any, TextIO

from engine.drivers.codex import INSTALL_HINT, find_codex
from engine.log.eventlog import Callbacks
from engine.simulator.codex_app import loopback_session
from engine.simulator.scenarios import scenario_from_data
from engine.simulator.server import ResponsesSimulator
from machines.app_records import AppTurnResult, ApprovalRequest

__all__ = ["DEMO_TURNS", "SCENARIO", "describe_app_result", "run_codex_demo"]

_ESCALATED = ('{"cmd":"echo streamfsm-demo-ok","sandbox_permissions":"require_escalated",'
              '"justification":"the demo asks for approval"}')
_ANSWER = "The capital of France is Paris, a city on the Seine."

#: The simulator's replies, by request number in the session (codex sends one request per model
#: round trip, so each turn's requests are known in advance).
SCENARIO: dict[str, Any] = {"reply": [
    {"nth": 1, "text": "The capital of France is Paris."},
    {"nth": 2, "tool_call": {"name": "exec_command", "arguments": _ESCALATED}},
    {"nth": 3, "text": "The command printed streamfsm-demo-ok."},
    {"nth": 4, "tool_call": {"name": "exec_command", "arguments": _ESCALATED}},
    {"nth": 5, "text": "You declined, so I did not run it."},
    {"nth": 6, "text": _ANSWER, "drop_after_bytes": 2500},
    {"nth": 7, "text": _ANSWER},
    {"nth": 8, "text": "This answer is interrupted after its first words.",
     "stall_s": 10, "stall_after": 6},
]}

#: (title, user text, approval answer, interrupt on the first delta)
DEMO_TURNS: list[tuple[str, str, str, bool]] = [
    ("a text answer", "What is the capital of France?", "decline", False),
    ("a command the approval callback accepts", "Run the demo command.", "accept", False),
    ("a command the approval callback declines", "Run it again.", "decline", False),
    ("the provider drops the stream; codex retries by itself", "Tell me about Paris.",
     "decline", False),
    ("interrupted mid-answer by the caller", "Say something long.", "decline", True),
]


def _clip(text: str, width: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_app_result(result: AppTurnResult) -> list[str]:
    """A few human lines: the turn's path through the app-turn states, then its outcome."""
    steps = [t for t in result.transitions if t.machine == "app_turn"]
    path = steps[0].source if steps else "queued"
    for step in steps:
        path += f" -{step.trigger}-> {step.dest}"
    lines = [f"path      {path}", f"outcome   {result.outcome}"
             + (" (session retired)" if result.retired else "")]
    if result.output_text:
        lines.append(f"text      {_clip(result.output_text)!r}")
    for message in result.messages:
        if message.get("role") == "tool":
            lines.append(f"tool      {_clip(str(message.get('content')), 50)!r}")
    lines.append(f"counts    {result.tool_iterations} tool iteration(s), "
                 f"{result.model_requests} model response(s)")
    if result.error:
        lines.append(f"error     {result.error.get('code')}: "
                     f"{_clip(str(result.error.get('message')), 70)}")
    return lines


def run_codex_demo(out: TextIO, traces: str | None = None) -> int:
    """Run the demo turns, writing to `out` (traces into the folder `traces` if given)."""
    codex = find_codex()
    if codex is None:
        out.write(f"streamfsm demo --codex: no codex binary found; install it: {INSTALL_HINT}\n")
        return 0
    if traces:
        os.makedirs(traces, exist_ok=True)
    out.write(
        f"streamfsm demo --codex: the real codex app-server ({codex}) talks to the built-in\n"
        "Responses simulator on 127.0.0.1 (offline, no login); one session runs every turn.\n"
    )
    answers: list[str] = []

    def approvals(request: ApprovalRequest) -> str:
        out.write(f"    approval  {request.kind}: {_clip(request.command or '', 50)!r} "
                  f"-> {answers[-1]}\n")
        return answers[-1]

    with tempfile.TemporaryDirectory(prefix="streamfsm-codex-demo-") as home, \
            tempfile.TemporaryDirectory(prefix="streamfsm-codex-work-") as work, \
            ResponsesSimulator(scenario_from_data(SCENARIO)) as sim:
        session = loopback_session(
            sim, home, cwd=work, approvals=approvals,
            config={"model_providers.endpoint.http_headers": {"x-streamfsm-session": "demo"}},
        )
        with session:
            for number, (title, text, answer, interrupt) in enumerate(DEMO_TURNS, 1):
                answers.append(answer)
                out.write(f"\n{number}. {title}\n    user      {text!r}\n")
                stop = threading.Event()
                callbacks = Callbacks(on_text_delta=lambda delta: stop.set()) if interrupt else None
                trace = os.path.join(traces, f"codex-{number:02d}.jsonl") if traces else None
                before = len(sim.requests)
                began = time.monotonic()
                result = session.run_turn(text, callbacks=callbacks, interrupt=stop, trace=trace)
                elapsed = time.monotonic() - began
                for line in describe_app_result(result):
                    out.write(f"    {line}\n")
                out.write(f"    {len(sim.requests) - before} request(s) to the simulator, "
                          f"{elapsed * 1000:.0f} ms, app-server pid {session.pid}\n")
    if traces:
        out.write(f"\nTraces written to {traces}/ (replay them: streamfsm replay {traces}/*.jsonl)\n")
    return 0
