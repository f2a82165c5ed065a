"""`CodexSession`: turns run by a `codex app-server` subprocess, as recorded machines.

    with engine.CodexSession(config={...}, approvals=decide) as session:
        result = session.run_turn("Fix the failing test", callbacks=..., interrupt=event,
                                  trace="turn.jsonl")

The driver owns the I/O and the clocks; every rule lives in the machines
(`machines.app_session`, `machines.app_turn`):

* The subprocess is started on the first turn and kept for the next ones; a turn that retires
  the session (the `retire` effect) closes it, and the next turn starts a new one. It is started
  in its own process group, so `close()` ends it with everything it started. npm's Node launcher
  (`node_modules/.bin/codex`) is resolved to the native binary it would start (killing the
  launcher leaves the real server running); if that binary cannot be found the launcher runs, in
  its own process group like every subprocess here.
* One reader thread per pipe: stdout lines become `ServerLine`s, its end `EndOfStream` (after a
  `ProcessExit` when the process has already exited); stderr lines become `StderrLine`s with the
  secrets removed (kept for error messages). The approval callback runs on its own thread per
  request, so an interrupt is honoured while it blocks; its answer comes back as an
  `ApprovalAnswer` input. Everything arrives on one queue.
* The caller's thread runs the turn: it waits on that queue (at most 20 ms at a time) and asks
  the turn's `Watchdog` (`engine.drivers.watchdog`, the stream drivers' too) about the clocks:
  the interrupt, the idle timeout (a turn in which the server wrote nothing for
  `idle_timeout_s`: its silence is paused while an approval is pending and restarts on every
  line sent or received), and the deadlines: the request timeout (a client request unanswered
  for `request_timeout_s`, due from when it was sent, in whichever turn) and the interrupt grace
  (`turn/interrupt` sent and no `turn/completed` within `interrupt_grace_s`). It feeds each
  observation, and each input a clock gives, to the machines through `AppTurnRecording`, which
  records it, records the decisions, then acts on them. Callbacks run on the caller's thread.
* Lines the server writes between turns wait on the queue and are the first inputs of the next
  turn's trace. If the subprocess died between turns, the next turn starts a new one.

Secrets (the values of credential-named environment variables, of the variables the config's
`env_key`s name, and of credential-named config values) are removed from stderr lines as they are
read, from the result's error and from every trace line.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import orjson

from engine.drivers.app_recording import AppTurnRecording
from engine.drivers.arguments import check_callbacks, check_trace, interrupt_check
from engine.drivers.watchdog import Deadlines, Watchdog, next_within, turn_clock
from engine.log.eventlog import Callbacks, announce_retry
from engine.log.logs import log
from engine.log.redaction import is_secret_name, scrub
from machines.app_records import (
    DECISIONS,
    ApprovalAnswer,
    ApprovalRequest,
    AppInput,
    AppTurnResult,
    InterruptTimeout,
    ProcessExit,
    RequestTimeout,
    ServerLine,
    SessionConfig,
    SpawnFailed,
    StderrLine,
    TurnRequest,
)
from machines.app_session import AppSession
from machines.app_turn import State as TurnState
from machines.records import Effect, EndOfStream, IdleTimeout, Interrupt, RetryNotice

__all__ = [
    "ApprovalCallback",
    "CodexSession",
    "codex_command",
    "find_codex",
    "native_binary",
    "toml_value",
]

#: The approval callback: shown a request, answers one of "accept", "acceptForSession",
#: "decline", "cancel".
ApprovalCallback = Callable[[ApprovalRequest], str]

CODEX_VERSION = "0.169.0"
_TRIPLES = {
    ("linux", "x86_64"): ("x86_64-unknown-linux-musl", "codex-linux-x64"),
    ("linux", "aarch64"): ("aarch64-unknown-linux-musl", "codex-linux-arm64"),
    ("darwin", "x86_64"): ("x86_64-apple-darwin", "codex-darwin-x64"),
    ("darwin", "arm64"): ("aarch64-apple-darwin", "codex-darwin-arm64"),
}
#: The deadline of the grace an interrupted turn has to complete (`Deadlines` key).
INTERRUPT_GRACE = "interrupt grace"

#: Where `.ci/run` (and the test suite) install @openai/codex with npm.
INSTALL_HINT = (
    f"npm install --prefix ~/.cache/streamfsm/codex-{CODEX_VERSION} @openai/codex@{CODEX_VERSION}"
    " (or set STREAMFSM_CODEX to a codex binary)"
)


# -- finding the binary -----------------------------------------------------------------------
def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "streamfsm" / f"codex-{CODEX_VERSION}"


def _executable(path: str | os.PathLike[str]) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def native_binary(launcher: str | os.PathLike[str]) -> Path | None:
    """The native codex binary npm's Node launcher at `launcher` would start, or None when
    `launcher` is not that launcher or the binary is not installed beside it."""
    try:
        real = Path(os.path.realpath(launcher))
    except OSError:
        return None
    if real.name != "codex.js" or real.parent.name != "bin":
        return None
    package = real.parent.parent  # node_modules/@openai/codex
    found = _platform()
    if found is None:
        return None
    triple, platform_package = found
    for vendor in (package.parent / platform_package / "vendor", package / "vendor"):
        candidate = vendor / triple / "bin" / "codex"
        if _executable(candidate):
            return candidate
    return None


def _platform() -> tuple[str, str] | None:
    """(target triple, npm platform package) of this machine, None where codex ships none."""
    machine = os.uname().machine if hasattr(os, "uname") else ""
    return _TRIPLES.get((sys.platform, machine))


def find_codex() -> Path | None:
    """A codex binary: `STREAMFSM_CODEX` when it names an executable, else `codex` on PATH, else
    the npm install `.ci/run` makes (`~/.cache/streamfsm/codex-0.169.0`); None without one."""
    named = os.environ.get("STREAMFSM_CODEX")
    if named and _executable(named):
        return Path(named)
    on_path = shutil.which("codex")
    if on_path:
        return Path(on_path)
    modules = _cache_dir() / "node_modules"
    candidates = [modules / ".bin" / "codex"]
    platform = _platform()
    if platform is not None:
        triple, package = platform
        candidates.insert(0, modules / "@openai" / package / "vendor" / triple / "bin" / "codex")
    return next((candidate for candidate in candidates if _executable(candidate)), None)


def codex_command(command: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The argv to start and the environment it needs beyond ours: `command` (or the binary
    `find_codex()` gives, + `app-server`) with npm's launcher replaced by its native binary."""
    if command is None:
        found = find_codex()
        if found is None:
            raise FileNotFoundError(f"no codex binary found; install it: {INSTALL_HINT}")
        argv = [str(found), "app-server"]
    else:
        argv = list(command)
    extra: dict[str, str] = {}
    native = native_binary(argv[0])
    if native is not None:
        package = Path(os.path.realpath(argv[0])).parent.parent
        extra = {"CODEX_MANAGED_PACKAGE_ROOT": str(package), "CODEX_MANAGED_BY_NPM": "1"}
        argv[0] = str(native)
    return argv, extra


def toml_value(value: Any) -> str:
    """`value` written as a TOML value (for `-c key=value`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{orjson.dumps(str(k)).decode()} = {toml_value(v)}"
                          for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(f"config values must be TOML-writable, not {type(value).__name__}")


# -- the subprocess ---------------------------------------------------------------------------
#: Terminal colour codes in codex's stderr log lines (kept out of error messages).
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Process:
    """The app-server subprocess, its reader threads and the queue they fill."""

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: str, secrets: list[str]
    ) -> None:
        self.items: queue.SimpleQueue[AppInput] = queue.SimpleQueue()
        self._secrets = secrets
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=cwd, start_new_session=True,
        )
        self.pid = self.popen.pid
        self._write_lock = threading.Lock()
        self._stderr = threading.Thread(target=self._read_stderr, name="codex-stderr", daemon=True)
        self._stdout = threading.Thread(target=self._read_stdout, name="codex-stdout", daemon=True)
        self._stderr.start()
        self._stdout.start()

    def _read_stdout(self) -> None:
        put = self.items.put
        stream = self.popen.stdout
        assert stream is not None
        for raw in iter(stream.readline, b""):
            put(ServerLine(raw.decode("utf-8", "replace").rstrip("\r\n")))
        self._stderr.join(timeout=0.5)  # its last lines belong before the end
        try:
            code: int | None = self.popen.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            put(ProcessExit(code))
        put(EndOfStream())

    def _read_stderr(self) -> None:
        stream = self.popen.stderr
        assert stream is not None
        for raw in iter(stream.readline, b""):
            text = _ANSI.sub("", raw.decode("utf-8", "replace").rstrip("\r\n"))
            self.items.put(StderrLine(scrub(text, self._secrets)))

    def write(self, message: Any) -> None:
        """Write one JSON-RPC message as a line; a closed pipe is left to the reader to report."""
        line = orjson.dumps(message) + b"\n"
        stdin = self.popen.stdin
        assert stdin is not None
        with self._write_lock:
            try:
                stdin.write(line)
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                log.debug("app-server stdin closed", pid=self.pid)

    def close(self) -> int | None:
        """End the subprocess and its process group: close stdin, then SIGTERM, then SIGKILL."""
        popen = self.popen
        try:
            if popen.stdin is not None:
                popen.stdin.close()
        except OSError:
            pass
        code = _wait(popen, 0.5)
        if code is None:
            _signal_group(self.pid, signal.SIGTERM)
            code = _wait(popen, 1.5)
        if code is None:
            _signal_group(self.pid, signal.SIGKILL)
            code = _wait(popen, 5.0)
        _signal_group(self.pid, signal.SIGKILL)  # whatever it started and left behind
        for thread in (self._stdout, self._stderr):
            thread.join(timeout=1.0)
        for stream in (popen.stdout, popen.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        return code


def _wait(popen: subprocess.Popen[bytes], seconds: float) -> int | None:
    try:
        return popen.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def _signal_group(pgid: int, number: signal.Signals) -> None:
    try:
        os.killpg(pgid, number)
    except (ProcessLookupError, PermissionError):
        pass


# -- approvals --------------------------------------------------------------------------------
def _ask(
    callback: ApprovalCallback, request_id: int | str, asked: ApprovalRequest,
    answers: queue.SimpleQueue[AppInput],
) -> None:
    """Run the approval callback on this thread; its answer goes to `answers` as an input."""
    try:
        answer = callback(asked)
    except BaseException as error:  # any failure of the host's callback declines
        answers.put(ApprovalAnswer(request_id, "decline",
                                   f"the approval callback raised {type(error).__name__}"))
        return
    if isinstance(answer, str) and answer in DECISIONS:
        answers.put(ApprovalAnswer(request_id, answer))  # type: ignore[arg-type]
    else:
        answers.put(ApprovalAnswer(request_id, "decline",
                                   f"the approval callback answered {type(answer).__name__} "
                                   f"{str(answer)[:40]!r}"))


def _approval_request(data: dict[str, Any]) -> ApprovalRequest:
    params = data.get("params")
    changes = data.get("changes")
    return ApprovalRequest(
        kind=str(data.get("kind")),
        item_id=data.get("item_id"),
        command=data.get("command"),
        cwd=data.get("cwd"),
        reason=data.get("reason"),
        changes=changes if isinstance(changes, list) else None,
        params=params if isinstance(params, dict) else {},
    )


# -- the session ------------------------------------------------------------------------------
def _positive_or_none(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be None or a number of seconds > 0, not {value!r}")
    return float(value)


class CodexSession:
    """A `codex app-server` subprocess that runs turns, reused across them (CONTRACT v2).

    `command`: argv of the app-server (default: `find_codex()` + `["app-server"]`; npm's Node
    launcher is resolved to its native binary). `config`: `-c key=value` overrides, dotted keys
    as they are, values written as TOML. `env`: extra environment variables over `os.environ`.
    `cwd`: the thread's working directory (default: the current one). `approval_policy`,
    `sandbox`: the thread's. `approvals`: callable(`ApprovalRequest`) -> "accept" |
    "acceptForSession" | "decline" | "cancel", run on a thread of its own (None declines).
    `request_timeout_s`: a request unanswered this long ends the turn "error" and retires the
    session; `idle_timeout_s`: a running turn in which the server writes nothing this long does
    the same (None: no idle timeout). `interrupt_grace_s`: how long `turn/completed` may take
    after `turn/interrupt` before the session is retired."""

    def __init__(
        self,
        command: Sequence[str] | None = None,
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        approval_policy: str = "on-request",
        sandbox: str = "read-only",
        approvals: ApprovalCallback | None = None,
        request_timeout_s: float = 30.0,
        idle_timeout_s: float | None = None,
        *,
        interrupt_grace_s: float = 2.0,
        client_name: str = "streamfsm",
    ) -> None:
        if command is not None:
            if isinstance(command, (str, bytes)) or not all(isinstance(a, str) for a in command):
                raise TypeError("command must be a sequence of strings (an argv) or None")
            if not command:
                raise ValueError("command must not be empty")
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"config must be a dict or None, not {type(config).__name__}")
        if env is not None and (not isinstance(env, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise TypeError("env must be a dict of strings or None")
        if cwd is not None and not isinstance(cwd, (str, os.PathLike)):
            raise TypeError(f"cwd must be a path or None, not {type(cwd).__name__}")
        for name, value in (("approval_policy", approval_policy), ("sandbox", sandbox)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string, not {type(value).__name__}")
        if approvals is not None and not callable(approvals):
            raise TypeError("approvals must be callable or None")
        self.request_timeout_s = _positive_or_none("request_timeout_s", request_timeout_s)
        if self.request_timeout_s is None:
            raise ValueError("request_timeout_s must be a number of seconds > 0")
        self.idle_timeout_s = _positive_or_none("idle_timeout_s", idle_timeout_s)
        grace = _positive_or_none("interrupt_grace_s", interrupt_grace_s)
        if grace is None:
            raise ValueError("interrupt_grace_s must be a number of seconds > 0")
        self.interrupt_grace_s = grace
        self.config_overrides = dict(config or {})
        for key, value in self.config_overrides.items():
            if not isinstance(key, str):
                raise TypeError("config keys must be strings")
            toml_value(value)
        self.command = list(command) if command is not None else None
        self.env = dict(env or {})
        self.cwd = os.path.abspath(os.fspath(cwd)) if cwd is not None else os.getcwd()
        self.approvals = approvals
        self.session_config = SessionConfig(
            cwd=self.cwd, approval_policy=approval_policy, sandbox=sandbox,
            client_name=client_name, client_version=CODEX_VERSION,
        )
        self._secrets = self._environment()[1]
        self._process: _Process | None = None
        self._machine: AppSession | None = None
        #: when each request sent to the subprocess is due to be answered (by its id)
        self._deadlines = Deadlines()
        #: the clocks of the turn running (None between turns)
        self._watchdog: Watchdog | None = None
        self._retire = False
        self._spawned = 0  # subprocesses started
        self._gone: str | None = None  # why the last one was closed
        self._turn_lock = threading.Lock()
        self._process_lock = threading.Lock()

    # -- the subprocess ----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The app-server's process id, None when none runs."""
        process = self._process
        return process.pid if process is not None and process.popen.poll() is None else None

    def _environment(self) -> tuple[dict[str, str], list[str]]:
        env = {**os.environ, **self.env}
        secrets = {value for name, value in env.items() if is_secret_name(name) and len(value) >= 8}
        for key, value in self.config_overrides.items():
            last = key.rsplit(".", 1)[-1]
            if last == "env_key" and isinstance(value, str) and env.get(value):
                secrets.add(env[value])
            elif is_secret_name(last) and isinstance(value, str) and len(value) >= 8:
                secrets.add(value)
        return env, sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)

    def _argv(self) -> tuple[list[str], dict[str, str]]:
        argv, extra = codex_command(self.command)
        for key, value in self.config_overrides.items():
            argv += ["-c", f"{key}={toml_value(value)}"]
        return argv, extra

    def _start(self) -> SpawnFailed | None:
        """Start a subprocess and a fresh session machine; the reason when it cannot start."""
        self._machine = AppSession(self.session_config)
        self._deadlines = Deadlines()
        env, self._secrets = self._environment()
        try:
            argv, extra = self._argv()
            process = _Process(argv, {**env, **extra}, self.cwd, self._secrets)
        except (OSError, ValueError) as error:
            detail = scrub(f"{type(error).__name__}: {error}", self._secrets)
            log.warning("app-server could not be started", error=type(error).__name__)
            return SpawnFailed(detail)
        with self._process_lock:
            self._process = process
        log.info("app-server started", pid=process.pid)
        return None

    def _drop(self, reason: str) -> None:
        with self._process_lock:
            process, self._process = self._process, None
        self._machine = None
        if process is not None:
            self._gone = reason
            code = process.close()
            log.info("app-server closed", pid=process.pid, reason=reason, exit_code=code)

    def close(self) -> None:
        """End the subprocess and everything it started; the next turn starts a new one."""
        self._drop("closed")

    def __enter__(self) -> CodexSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one turn ------------------------------------------------------------------------------
    def run_turn(
        self,
        text: str,
        *,
        callbacks: Callbacks | None = None,
        interrupt: threading.Event | Callable[[], bool] | None = None,
        trace: str | os.PathLike[str] | None = None,
    ) -> AppTurnResult:
        """Run one turn with `text` as the user's input; returns an `AppTurnResult` for
        anything the subprocess or the model does, raises `TypeError`/`ValueError` only for a
        wrong call."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, not {type(text).__name__}")
        check_callbacks(callbacks)
        check_trace(trace)
        interrupted = interrupt_check(interrupt)
        with self._turn_lock:
            return self._run(text, callbacks, interrupted, trace)

    def _run(
        self,
        text: str,
        callbacks: Callbacks | None,
        interrupted: Callable[[], bool],
        trace: str | os.PathLike[str] | None,
    ) -> AppTurnResult:
        waiting = self._between_turns()
        failed: SpawnFailed | None = None
        if self._machine is None or self._machine.is_retired:
            gone = self._machine.retire_reason if self._machine is not None else self._gone
            if self._spawned and gone != "closed":  # the caller hears of a new process first
                announce_retry(callbacks, RetryNotice(self._spawned + 1, "stream",
                                                      gone or "retired", 0.0))
            self._spawned += 1
            self._drop("retired")
            failed = self._start()
            waiting = []
        machine = self._machine
        assert machine is not None
        now = turn_clock()
        self._retire = False
        self._deadlines.forget(INTERRUPT_GRACE)
        watchdog = self._watchdog = Watchdog(time.monotonic, interrupted, self.idle_timeout_s)
        recording = AppTurnRecording(machine, callbacks, act=self._act)
        secrets = self._secrets
        try:
            for item in waiting:
                self._observe(recording, item, now)
            recording.feed(TurnRequest(text), now())
            if failed is not None:
                recording.feed(failed, now())
            watchdog.heard()
            self._loop(recording, watchdog, now)
        except BaseException:
            recording.abandon(trace, secrets)
            self._drop("driver error")
            raise
        finally:
            self._watchdog = None
        result = recording.finish(trace, secrets)
        if self._retire or machine.is_retired:
            self._drop(machine.retire_reason or "retired")
        return result

    def _between_turns(self) -> list[AppInput]:
        """What the subprocess said while no turn ran. A death there retires the session
        quietly (no turn was running): the next turn starts a new subprocess."""
        process = self._process
        if process is None:
            return []
        waiting: list[AppInput] = []
        while True:
            try:
                waiting.append(process.items.get_nowait())
            except queue.Empty:
                break
        if process.popen.poll() is not None or any(
            isinstance(item, (EndOfStream, ProcessExit)) for item in waiting
        ):
            self._drop("exited between turns")
            return []
        return waiting

    def _observe(self, recording: AppTurnRecording, item: AppInput,
                 now: Callable[[], float]) -> None:
        watchdog = self._watchdog
        if type(item) is ServerLine and watchdog is not None:
            watchdog.heard()
        recording.feed(item, now())

    def _loop(self, recording: AppTurnRecording, watchdog: Watchdog,
              now: Callable[[], float]) -> None:
        machine = recording.session
        process = self._process
        items = process.items if process is not None else queue.SimpleQueue()
        interrupt_fed = False
        while not recording.finished:
            item = next_within(items, watchdog.wait_s())
            if item is not None:
                self._observe(recording, item, now)
                if recording.finished:
                    return
            turn = machine.live_turn
            if turn is None:
                return  # the turn ended (recording.finished) or was never started
            if not interrupt_fed and watchdog.caller_stopped():
                interrupt_fed = True
                recording.feed(Interrupt(), now())
                continue
            deadlines = self._deadlines
            if turn.state == TurnState.INTERRUPTING:
                deadlines.start(INTERRUPT_GRACE, self.interrupt_grace_s)
                if deadlines.passed(INTERRUPT_GRACE):
                    recording.feed(InterruptTimeout(self.interrupt_grace_s), now())
                    continue
            timeout = self.request_timeout_s
            assert timeout is not None
            for ident, method in sorted(machine.pending.items()):
                if deadlines.passed(ident):
                    recording.feed(RequestTimeout(ident, method, timeout), now())
                    break
            if recording.finished:
                return
            if turn.state == TurnState.AWAITING_APPROVAL:
                watchdog.pause_silence()  # waiting on the caller, not on the server
                continue
            watchdog.resume_silence()
            if turn.is_sent and watchdog.silence_over():
                recording.feed(IdleTimeout(self.idle_timeout_s or 0.0), now())

    def _act(self, effect: Effect) -> None:
        """Carry out a machine's decision: write a line, ask the callback, retire."""
        kind = effect.kind
        if kind == "send":
            message = effect.data
            process = self._process
            if isinstance(message, dict) and "method" in message and type(message.get("id")) is int:
                assert self.request_timeout_s is not None
                self._deadlines.set(message["id"], self.request_timeout_s)
            watchdog = self._watchdog
            if watchdog is not None:
                watchdog.heard()
            if process is not None:
                process.write(message)
        elif kind == "approval":
            data = effect.data if isinstance(effect.data, dict) else {}
            ident = data.get("request_id")
            process = self._process
            answers = process.items if process is not None else queue.SimpleQueue()
            if type(ident) is not int and not isinstance(ident, str):
                return
            asked = _approval_request(data)
            if self.approvals is None:
                answers.put(ApprovalAnswer(ident, "decline", "no approval callback"))
                return
            threading.Thread(target=_ask, args=(self.approvals, ident, asked, answers),
                             name="codex-approval", daemon=True).start()
        elif kind == "retire":
            self._retire = True
