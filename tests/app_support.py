"""Shared pieces of the app-server tests: the real codex binary, sessions against the simulator,
a turn runner that always writes a trace and checks that it replays identically, and a session
machine fed by hand (`Fed`, `started`) for the tests of single rules.

Set STREAMFSM_RECORD_APP_FIXTURES=DIR to also copy the traces the real-binary tests name into DIR
(that is how replay_fixtures/codex_app_server/ was recorded).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import attrs
import orjson
import pytest

import engine
from engine.drivers.codex import CodexSession
from engine.fuzz import app_lines as L
from engine.simulator.codex_app import LOOPBACK_KEY, loopback_session
from engine.simulator.scenarios import scenario_from_data
from engine.simulator.server import ResponsesSimulator
from machines import app_turn
from machines.app_records import ServerLine, SessionConfig, TurnRequest
from machines.app_session import AppSession
from machines.records import Effect, Transition

_sessions = itertools.count(1)

#: Scenario replies used by several tests.
TEXT = "The capital of France is Paris."
ESCALATED = ('{"cmd":"echo streamfsm-tool-ok","sandbox_permissions":"require_escalated",'
             '"justification":"the test asks for it"}')
#: codex retries nothing itself: one request per model round trip.
NO_RETRIES = {"model_providers.endpoint.request_max_retries": 0,
              "model_providers.endpoint.stream_max_retries": 0}


def tool_then_answer(arguments: str, answer: str = "The command printed streamfsm-tool-ok.",
                     **answer_options: Any) -> dict[str, Any]:
    """A scenario: an `exec_command` call, then `answer` once the tool output comes back."""
    return {"reply": [
        {"when": "tool_output", "text": answer, **answer_options},
        {"tool_call": {"name": "exec_command", "arguments": arguments}},
    ]}


#: The session config of the machines fed by hand.
CONFIG = SessionConfig(cwd="/work")


class Fed:
    """A session fed by hand, with every decision it returned."""

    def __init__(self, session: AppSession | None = None) -> None:
        self.session = session or AppSession(CONFIG)
        self.decisions: list[Transition | Effect] = []

    def feed(self, *items: Any) -> list[Transition | Effect]:
        out: list[Transition | Effect] = []
        for item in items:
            if isinstance(item, str):
                item = ServerLine(item)
            out.extend(self.session.receive(item))
        self.decisions.extend(out)
        return out

    def effects(self, kind: str) -> list[Any]:
        return [d.data for d in self.decisions if isinstance(d, Effect) and d.kind == kind]

    def sent(self) -> list[dict[str, Any]]:
        return self.effects("send")

    def path(self, machine: str) -> list[tuple[str, str, str]]:
        return [(d.source, d.dest, d.trigger) for d in self.decisions
                if isinstance(d, Transition) and d.machine == machine]

    def text(self) -> str:
        return "".join(self.effects("text_delta"))

    @property
    def turn(self) -> app_turn.AppTurn:
        assert self.session.turn is not None
        return self.session.turn

    def result(self) -> Any:
        return self.session.turn_result([])


def started(text: str = "hi", config: SessionConfig = CONFIG) -> Fed:
    """A session through its handshake with turn 1 sent (turn/start is request 3)."""
    fed = Fed(AppSession(config))
    fed.feed(TurnRequest(text), *L.handshake())
    fed.feed(L.turn_start_response(3), L.turn_started(), *L.user_message(text))
    return fed


CODEX_VERSION = "0.169.0"
NATIVE = "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
LAUNCHER = "node_modules/.bin/codex"


def codex_cache_dir() -> Path:
    """Where .ci/run and `install_codex` put it:
    `${XDG_CACHE_HOME:-~/.cache}/streamfsm/codex-VERSION`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "streamfsm" / f"codex-{CODEX_VERSION}"


def installed_codex(folder: Path) -> Path | None:
    """The codex an npm install into `folder` made: its native binary, else npm's launcher."""
    for relative in (NATIVE, LAUNCHER):
        candidate = folder / relative
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def pinned_codex() -> Path | None:
    """STREAMFSM_CODEX when it names an executable, else what the cache folder holds (not a
    codex on PATH: the tests are for this version)."""
    named = os.environ.get("STREAMFSM_CODEX")
    if named and os.path.isfile(named) and os.access(named, os.X_OK):
        return Path(named)
    return installed_codex(codex_cache_dir())


def install_codex() -> Path:
    """npm install into a temporary folder beside the cache folder, then move it into place (so
    that worker processes asking at once do not clash: one rename wins, the rest use it)."""
    target = codex_cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    try:
        subprocess.run(
            ["npm", "install", "--prefix", str(staging), "--no-audit", "--no-fund",
             "--loglevel=error", f"@openai/codex@{CODEX_VERSION}"],
            check=True, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        )
        try:
            staging.rename(target)
        except OSError:  # another session won the race, or a half-empty folder is in the way
            if installed_codex(target) is None:
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    except subprocess.CalledProcessError as error:
        pytest.fail(f"npm install @openai/codex@{CODEX_VERSION} failed: {error.stderr.strip()}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    installed = installed_codex(target)
    assert installed is not None, f"npm installed no codex binary under {target}"
    return installed


@pytest.fixture(scope="session")
def codex() -> Path:
    """The codex binary (`pinned_codex`), installed into the cache folder with npm when it is not
    there; a skip saying how to get one only without codex and without npm."""
    found = pinned_codex()
    if found is not None:
        return found
    if shutil.which("npm") is None:
        pytest.skip(
            f"no codex binary (STREAMFSM_CODEX unset, nothing under {codex_cache_dir()}) and no "
            "npm to install @openai/codex; .ci/run installs it"
        )
    return install_codex()


@attrs.frozen
class Turn:
    """One turn: its result, what the callbacks got, its trace and how long it took."""

    result: engine.AppTurnResult
    deltas: list[str]
    reasoning: list[str]
    first_deltas: int
    trace: Path
    elapsed: float

    def trace_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.trace.read_bytes().splitlines() if line]

    def sent(self) -> list[dict[str, Any]]:
        return [r["data"] for r in self.trace_lines()
                if r.get("kind") == "effect" and r.get("effect") == "send"]

    def received(self) -> list[dict[str, Any]]:
        out = []
        for record in self.trace_lines():
            if record.get("kind") == "input" and record.get("input") == "line":
                try:
                    out.append(orjson.loads(record["data"]))
                except orjson.JSONDecodeError:
                    pass
        return out


class Harness:
    """A simulator playing a scenario and a `CodexSession` against it, for one test."""

    def __init__(self, sim: ResponsesSimulator, session: CodexSession, tmp: Path) -> None:
        self.sim = sim
        self.session = session
        self.tmp = tmp
        self._turns = itertools.count(1)

    def turn(self, text: str = "What is the capital of France?", *, fixture: str | None = None,
             interrupt: Any = None, on_text: Any = None, session: CodexSession | None = None,
             **_: Any) -> Turn:
        """One turn of the harness's session (or of `session`, another one against the same
        simulator), traced; the trace must replay identically."""
        session = session or self.session
        deltas: list[str] = []
        reasoning: list[str] = []
        firsts: list[None] = []

        def text_delta(delta: str) -> None:
            deltas.append(delta)
            if on_text is not None:
                on_text(delta)

        callbacks = engine.Callbacks(on_first_delta=lambda: firsts.append(None),
                                     on_text_delta=text_delta,
                                     on_reasoning_delta=reasoning.append)
        trace = self.tmp / f"turn-{next(self._turns)}.jsonl"
        began = time.monotonic()
        result = session.run_turn(text, callbacks=callbacks, interrupt=interrupt, trace=trace)
        elapsed = time.monotonic() - began
        self._keep(trace, fixture)
        return Turn(result, deltas, reasoning, len(firsts), trace, elapsed)

    def compact(self, *, fixture: str | None = None) -> Turn:
        """`session.compact()`, traced like a turn (it raises when codex did not compact)."""
        trace = self.tmp / f"turn-{next(self._turns)}.jsonl"
        began = time.monotonic()
        result = self.session.compact(trace=trace)
        elapsed = time.monotonic() - began
        self._keep(trace, fixture)
        return Turn(result, [], [], 0, trace, elapsed)

    def _keep(self, trace: Path, fixture: str | None) -> None:
        """The trace must replay identically; a named one is kept as a fixture when asked."""
        assert_replays_identically(trace)
        target = os.environ.get("STREAMFSM_RECORD_APP_FIXTURES")
        if fixture and target:
            shutil.copyfile(trace, Path(target) / f"{fixture}.jsonl")

    def another_session(self, **options: Any) -> CodexSession:
        """A second session against the same simulator, with the same CODEX_HOME, working
        directory and scenario session (a second process of the same agent, say)."""
        return loopback_session(self.sim, self.tmp / "codex-home", cwd=self.tmp / "work",
                                config=dict(self.session.config_overrides), **options)

    @property
    def requests(self) -> list[Any]:
        return [r for r in self.sim.requests if r.path.endswith("/responses")]


@contextlib.contextmanager
def harness(
    tmp_path: Path, scenario: dict[str, Any], *, config: dict[str, Any] | None = None,
    **options: Any,
) -> Iterator[Harness]:
    """A simulator playing `scenario` and a real codex app-server session against it (its own
    CODEX_HOME and working directory); `nth`/`times` count across the session's subprocesses."""
    home = tmp_path / "codex-home"
    work = tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    headers = {"x-streamfsm-session": f"session-{os.getpid()}-{next(_sessions)}"}
    with ResponsesSimulator(scenario_from_data(scenario)) as sim:
        session = loopback_session(
            sim, home, cwd=work,
            config={"model_providers.endpoint.http_headers": headers, **(config or {})}, **options)
        try:
            yield Harness(sim, session, tmp_path)
        finally:
            session.close()
        assert sim.server_errors == []


def assert_replays_identically(trace: Path | str) -> None:
    report = engine.replay(trace)
    assert report.records > 0
    assert report.identical, report.divergence.describe() if report.divergence else ""


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert LOOPBACK_KEY not in text
        assert LOOPBACK_KEY[:12] not in text


def process_gone(pid: int) -> bool:
    """The process is gone (or a zombie nobody reaps, which runs nothing)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                fields = stat.read().split(")")[-1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members
