"""`CodexSession`: turns run by a `codex app-server` subprocess, as recorded machines.

    with engine.CodexSession(config={...}, approvals=decide) as session:
        result = session.run_turn("Fix the failing test", callbacks=..., interrupt=event,
                                  trace="turn.jsonl")

The driver owns the I/O and the clocks; every rule lives in the machines
(`machines.app_session`, `machines.app_turn`):

* The subprocess is started on the first turn and kept for the next ones; a turn that retires
  the session (the `retire` effect) closes it, and the next turn starts a new one (`_start`, the
  one place a subprocess is started). It is started in its own process group, so `close()` ends
  it with everything it started. npm's Node launcher (`node_modules/.bin/codex`) is resolved to
  the native binary it would start (killing the launcher leaves the real server running); if
  that binary cannot be found the launcher runs, in its own process group like every subprocess
  here.
* One reader thread per pipe: stdout lines become `ServerLine`s, its end `EndOfStream` (after a
  `ProcessExit` when the process has already exited); stderr lines become `StderrLine`s with the
  secrets removed (kept for error messages). The approval callback and the tool handler run on
  a thread of their own per request, so an interrupt is honoured while they block; their answers
  come back as `ApprovalAnswer` and `ToolAnswer` inputs. A steer from another thread arrives as
  a `Steer` input. Everything arrives on one queue.
* The caller's thread runs the turn: it waits on that queue (at most 20 ms at a time) and asks
  the turn's `Watchdog` (`engine.drivers.watchdog`, the stream drivers' too) about the clocks:
  the interrupt, the idle timeout (a turn in which the server wrote nothing for
  `idle_timeout_s`: its silence is paused while an approval or a client tool call is pending
  and restarts on every line sent or received), and the deadlines: the request timeout (a client request unanswered
  for `request_timeout_s`, due from when it was sent, in whichever turn) and the interrupt grace
  (`turn/interrupt` sent and no `turn/completed` within `interrupt_grace_s`) and the turn's
  wall-clock limit (`turn_timeout_s`). It also looks, after every wait, whether the session was
  closed from another thread (`close()`), and then feeds `Close`. It feeds each observation, and
  each input a clock gives, to the machines through `AppTurnRecording`, which records it,
  records the decisions, then acts on them. Callbacks run on the caller's thread.
* A compaction (`compact()`) runs like a turn: a `CompactRequest` instead of a `TurnRequest`,
  recorded the same way (its own trace when one is asked for).
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
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
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
    Close,
    CompactRequest,
    InterruptTimeout,
    ProcessExit,
    RequestTimeout,
    ServerLine,
    SessionConfig,
    SpawnFailed,
    StderrLine,
    Steer,
    ToolAnswer,
    ToolCall,
    TurnRequest,
    TurnTimeout,
)
from machines.app_session import AppSession
from machines.app_turn import WAITING_ON_CALLER
from machines.app_turn import State as TurnState
from machines.records import Effect, EndOfStream, IdleTimeout, Interrupt, RetryNotice

__all__ = [
    "ApprovalCallback",
    "CodexSession",
    "ToolHandler",
    "codex_command",
    "find_codex",
    "native_binary",
    "toml_value",
]

#: The approval callback: shown a request, answers one of "accept", "acceptForSession",
#: "decline", "cancel".
ApprovalCallback = Callable[[ApprovalRequest], str]
#: The tool handler: shown a call of one of the client's tools, answers the tool's text output
#: (or raises: codex is told the call failed, with the exception's message).
ToolHandler = Callable[[ToolCall], str]

CODEX_VERSION = "0.169.0"
_TRIPLES = {
    ("linux", "x86_64"): ("x86_64-unknown-linux-musl", "codex-linux-x64"),
    ("linux", "aarch64"): ("aarch64-unknown-linux-musl", "codex-linux-arm64"),
    ("darwin", "x86_64"): ("x86_64-apple-darwin", "codex-darwin-x64"),
    ("darwin", "arm64"): ("aarch64-apple-darwin", "codex-darwin-arm64"),
}
#: The deadline of the grace an interrupted turn has to complete (`Deadlines` key).
INTERRUPT_GRACE = "interrupt grace"
#: The deadline of the turn's wall-clock limit (`Deadlines` key).
TURN_LIMIT = "turn limit"
#: How long `close()` waits for a running turn to end, and for a running approval callback or
#: tool handler to return, before it goes on.
CLOSE_WAIT_S = 5.0

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


# -- pointing codex at a Responses endpoint ----------------------------------------------------
#: The environment variable codex reads an endpoint provider's key from (`endpoint_config`).
ENDPOINT_KEY_VAR = "STREAMFSM_ENDPOINT_KEY"


def endpoint_config(base_url: str, model: str) -> dict[str, Any]:
    """`-c` overrides that make codex use a model provider named `endpoint` at `base_url` (a
    Responses-API URL ending in `/v1`) with the key in `ENDPOINT_KEY_VAR`: no login, no OpenAI
    account, no other network (shared/CODEX_APP_SERVER.md). More settings of that provider are
    `model_providers.endpoint.<key>` overrides."""
    return {
        "model": model,
        "model_provider": "endpoint",
        "model_providers.endpoint.name": "endpoint",
        "model_providers.endpoint.base_url": base_url,
        "model_providers.endpoint.wire_api": "responses",
        "model_providers.endpoint.env_key": ENDPOINT_KEY_VAR,
        "model_providers.endpoint.requires_openai_auth": False,
    }


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


# -- the host's callbacks: approvals and tools ------------------------------------------------
class _Helpers:
    """The threads a session starts to run the host's callbacks (the approval callback, the tool
    handler), one per request, so that `close()` can wait for them."""

    def __init__(self) -> None:
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def start(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=self._run, args=(target, args), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _run(self, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def join(self, seconds: float) -> None:
        """Wait for the running callbacks, `seconds` at most in all (not for the calling one)."""
        deadline = time.monotonic() + seconds
        with self._lock:
            running = [t for t in self._threads if t is not threading.current_thread()]
        for thread in running:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _call_tool(
    handler: ToolHandler, request_id: int | str, call: ToolCall,
    answers: queue.SimpleQueue[AppInput],
) -> None:
    """Run the tool handler on this thread; its answer goes to `answers` as an input. An
    exception is the call's failure, with the exception's message as its text."""
    try:
        output = handler(call)
    except BaseException as error:  # any failure of the host's tool is codex's answer, not ours
        answers.put(ToolAnswer(request_id, str(error) or type(error).__name__, False,
                               f"the tool handler raised {type(error).__name__}"))
        return
    if isinstance(output, str):
        answers.put(ToolAnswer(request_id, output))
    else:
        answers.put(ToolAnswer(request_id, f"the tool returned {type(output).__name__}, not text",
                               False, f"the tool handler returned {type(output).__name__}"))


def _tool_call(data: dict[str, Any]) -> ToolCall:
    return ToolCall(
        call_id=str(data.get("call_id")),
        tool=str(data.get("tool")),
        arguments=data.get("arguments"),
        thread_id=data.get("thread_id"),
        turn_id=data.get("turn_id"),
    )


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


def _text_or_none(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string or None, not {type(value).__name__}")
    return value


def _checked_tools(tools: Any) -> tuple[dict[str, Any], ...]:
    """The client tools as codex is offered them; a wrong shape is the caller's mistake."""
    if tools is None:
        return ()
    if isinstance(tools, (str, bytes, dict)) or not isinstance(tools, (list, tuple)):
        raise TypeError("tools must be a list of {name, description, inputSchema} dicts or None")
    specs = []
    for tool in tools:
        if not isinstance(tool, dict):
            raise TypeError(f"each tool must be a dict, not {type(tool).__name__}")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("each tool needs a name (a non-empty string)")
        if not isinstance(tool.get("description", ""), str):
            raise TypeError(f"tool {name!r}: description must be a string")
        if not isinstance(tool.get("inputSchema", {}), dict):
            raise TypeError(f"tool {name!r}: inputSchema must be a dict (a JSON schema)")
        specs.append({"description": "", "inputSchema": {"type": "object"}, **tool})
    return tuple(specs)


@attrs.define
class _SteerWaiter:
    """A `steer()` call waiting for the machine's answer (the `steered` effect)."""

    done: threading.Event = attrs.field(factory=threading.Event)
    accepted: bool = False


def _never() -> bool:
    return False


class CodexSession:
    """A `codex app-server` subprocess that runs turns, reused across them (CONTRACT v2, v3).

    `command`: argv of the app-server (default: `find_codex()` + `["app-server"]`; npm's Node
    launcher is resolved to its native binary). `config`: `-c key=value` overrides, dotted keys
    as they are, values written as TOML. `env`: extra environment variables over `os.environ`.
    `cwd`: the thread's working directory (default: the current one). `approval_policy`,
    `sandbox`: the thread's. `approvals`: callable(`ApprovalRequest`) -> "accept" |
    "acceptForSession" | "decline" | "cancel", run on a thread of its own (None declines).
    `request_timeout_s`: a request unanswered this long ends the turn "error" and retires the
    session; `idle_timeout_s`: a running turn in which the server writes nothing this long does
    the same (None: no idle timeout; time spent waiting on the approval callback or the tool
    handler does not count). `interrupt_grace_s`: how long `turn/completed` may take after
    `turn/interrupt` before the session is retired.

    v3: `thread_id`: continue that thread (`thread/resume`) in the first subprocess instead of
    starting one; when codex refuses, a new thread is started and the result says
    `thread_resumed` False. `developer_instructions`: sent with the thread request; assigning
    `session.developer_instructions` other instructions between turns starts a new thread for
    the next turn. `tools`: the client's own tools (`{name, description, inputSchema}`), offered
    to codex as dynamic tools; `tool_handler`: callable(`ToolCall`) -> str, run on a thread of
    its own for each call (a call id codex asks for again gets the first answer; an exception is
    answered as the call's failure; None answers every call as failed). `turn_timeout_s`: a
    turn's wall-clock limit (see `run_turn`)."""

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
        thread_id: str | None = None,
        developer_instructions: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_handler: ToolHandler | None = None,
        turn_timeout_s: float | None = None,
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
        if tool_handler is not None and not callable(tool_handler):
            raise TypeError("tool_handler must be callable or None")
        self.request_timeout_s = _positive_or_none("request_timeout_s", request_timeout_s)
        if self.request_timeout_s is None:
            raise ValueError("request_timeout_s must be a number of seconds > 0")
        self.idle_timeout_s = _positive_or_none("idle_timeout_s", idle_timeout_s)
        self.turn_timeout_s = _positive_or_none("turn_timeout_s", turn_timeout_s)
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
        self.tool_handler = tool_handler
        #: the thread the next subprocess continues (the one asked for, until a handshake took it)
        self._resume_thread = _text_or_none("thread_id", thread_id)
        #: the thread of the latest turn
        self._last_thread: str | None = None
        self.session_config = SessionConfig(
            cwd=self.cwd, approval_policy=approval_policy, sandbox=sandbox,
            client_name=client_name, client_version=CODEX_VERSION,
            developer_instructions=_text_or_none("developer_instructions", developer_instructions),
            dynamic_tools=_checked_tools(tools),
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
        #: who runs a turn now (the thread's ident; None between turns), guarded by `_state_lock`
        self._state_lock = threading.Lock()
        self._running: int | None = None
        self._closing = threading.Event()
        self._turn_done = threading.Event()
        self._turn_done.set()
        self._steer_lock = threading.Lock()
        self._steer_waiter: _SteerWaiter | None = None
        self._helpers = _Helpers()
        #: The private CODEX_HOME `for_endpoint` made (removed by `close()`), if any.
        self._private_home: str | None = None

    # -- settings between turns -----------------------------------------------------------------
    @property
    def developer_instructions(self) -> str | None:
        """The developer instructions of the session's thread; other instructions assigned
        between turns start a new thread for the next turn."""
        return self.session_config.developer_instructions

    @developer_instructions.setter
    def developer_instructions(self, value: str | None) -> None:
        self.session_config = attrs.evolve(
            self.session_config,
            developer_instructions=_text_or_none("developer_instructions", value))

    @property
    def thread_id(self) -> str | None:
        """The thread of the session's latest turn, also once its subprocess is gone (before the
        first turn: the one it will continue, if it was given one)."""
        machine = self._machine
        if machine is not None and machine.thread_id is not None:
            return machine.thread_id
        return self._last_thread or self._resume_thread

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
        """Start a subprocess and a fresh session machine for the turn about to run; the reason
        when it cannot start. This is the one place a new subprocess is started: the first turn's,
        and each one after a retirement."""
        config = attrs.evolve(self.session_config, thread_id=self._resume_thread)
        self._machine = AppSession(config)
        if self._private_home is not None:  # removed by an earlier close(): made again
            os.makedirs(self._private_home, exist_ok=True)
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

    @classmethod
    def for_endpoint(
        cls,
        base_url: str,
        *,
        api_key: str = "sk-local",
        model: str = "gpt-5",
        **kwargs: Any,
    ) -> CodexSession:
        """A session whose codex app-server talks to the Responses endpoint at `base_url` (a
        simulator, a recording proxy, a local model server; the URL ends in `/v1`) with
        `api_key`, no login and nothing else on the network, in a private `CODEX_HOME` removed
        by `close()` (a later turn makes a new one). `kwargs` go to `CodexSession`; their
        `config` and `env` are laid over the endpoint's."""
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, not {base_url!r}")
        for name, value in (("api_key", api_key), ("model", model)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty string, not {value!r}")
        config = {**endpoint_config(base_url, model), **(kwargs.pop("config", None) or {})}
        home = tempfile.mkdtemp(prefix="streamfsm-codex-home-")
        env = {"CODEX_HOME": home, ENDPOINT_KEY_VAR: api_key, **(kwargs.pop("env", None) or {})}
        try:
            session = cls(config=config, env=env, **kwargs)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        session._private_home = home
        return session

    def close(self) -> None:
        """End the subprocess and everything it started; the next turn starts a new one.

        From any thread, at any time, any number of times: a turn running on another thread
        ends (it returns outcome "error", `error.code` "session_closed") before the subprocess
        is closed, and the approval callbacks and tool handlers still running are waited for
        (`CLOSE_WAIT_S` at most), so nothing of the session outlives the call."""
        with self._state_lock:
            running = self._running
            if running is not None:
                self._closing.set()
        if running is not None and running != threading.get_ident():
            self._turn_done.wait(CLOSE_WAIT_S)
        self._drop("closed")
        self._helpers.join(CLOSE_WAIT_S)
        if self._private_home is not None:
            shutil.rmtree(self._private_home, ignore_errors=True)

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
        wrong call.

        With `turn_timeout_s`, a turn still running after that long is interrupted and ends
        "error" (`error.code` "turn_timeout"), unless its final agent message had fully arrived:
        then it ends "completed" with that text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, not {type(text).__name__}")
        check_callbacks(callbacks)
        check_trace(trace)
        interrupted = interrupt_check(interrupt)
        with self._turn_lock:
            return self._run(TurnRequest(text), callbacks, interrupted, trace)

    def compact(self, *, trace: str | os.PathLike[str] | None = None) -> AppTurnResult:
        """Compact the session's thread (`thread/compact/start`), between turns: codex runs the
        compaction as a turn of its own. Returns its result once codex reports the compaction
        (a `contextCompaction` item or `thread/compacted`); raises `RuntimeError` with codex's
        words when it does not (a refused or failed compaction, the subprocess dying, no thread
        to compact yet). `trace=` records it like a turn."""
        check_trace(trace)
        with self._turn_lock:
            machine = self._machine
            live = machine is not None and not machine.is_retired and machine.thread_id is not None
            if not live and self._resume_thread is None:
                raise RuntimeError("no thread to compact: run a turn first (or give a thread_id)")
            result = self._run(CompactRequest(), None, _never, trace)
        if result.compacted and result.outcome == "completed":
            return result
        why = (result.error or {}).get("message") or f"the compaction ended {result.outcome}"
        raise RuntimeError(f"codex did not compact the thread: {why}")

    def steer(self, text: str) -> bool:
        """Add `text` to the running turn (`turn/steer`), from any thread: codex drops the
        model's answer in progress and asks again with it. True when codex accepted it; False
        when no turn runs, its id is not known yet, or codex refused."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, not {type(text).__name__}")
        with self._steer_lock:
            waiter = _SteerWaiter()
            with self._state_lock:
                process = self._process if self._running is not None else None
                if process is None:
                    return False
                self._steer_waiter = waiter
                process.items.put(Steer(text))
            assert self.request_timeout_s is not None
            waiter.done.wait(self.request_timeout_s + 1.0)
            with self._state_lock:
                self._steer_waiter = None
            return waiter.accepted

    def _answer_steer(self, accepted: bool) -> None:
        with self._state_lock:
            waiter = self._steer_waiter
        if waiter is not None and not waiter.done.is_set():
            waiter.accepted = accepted
            waiter.done.set()

    def _run(
        self,
        asked: TurnRequest | CompactRequest,
        callbacks: Callbacks | None,
        interrupted: Callable[[], bool],
        trace: str | os.PathLike[str] | None,
    ) -> AppTurnResult:
        with self._state_lock:
            self._running = threading.get_ident()
            self._closing.clear()
            self._turn_done.clear()
        try:
            return self._turn(asked, callbacks, interrupted, trace)
        finally:
            with self._state_lock:
                self._running = None
            self._answer_steer(False)  # a steer that came too late gets its answer too
            self._turn_done.set()

    def _turn(
        self,
        asked: TurnRequest | CompactRequest,
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
        machine.config = attrs.evolve(machine.config,
                                      developer_instructions=self.developer_instructions)
        now = turn_clock()
        self._retire = False
        self._deadlines.forget(INTERRUPT_GRACE)
        self._deadlines.forget(TURN_LIMIT)
        if self.turn_timeout_s is not None:
            self._deadlines.set(TURN_LIMIT, self.turn_timeout_s)
        watchdog = self._watchdog = Watchdog(time.monotonic, interrupted, self.idle_timeout_s)
        recording = AppTurnRecording(machine, callbacks, act=self._act)
        secrets = self._secrets
        try:
            for item in waiting:
                self._observe(recording, item, now)
            recording.feed(asked, now())
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
        if machine.thread_id is not None:
            self._last_thread = machine.thread_id
            self._resume_thread = None  # taken: a later subprocess starts a thread of its own
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
        interrupt_fed = timeout_fed = False
        while not recording.finished:
            if self._closing.is_set():
                recording.feed(Close(), now())
                return
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
            if not timeout_fed and deadlines.passed(TURN_LIMIT):
                timeout_fed = True
                recording.feed(TurnTimeout(self.turn_timeout_s or 0.0), now())
                continue
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
            if turn.state in WAITING_ON_CALLER:
                watchdog.pause_silence()  # waiting on the caller, not on the server
                continue
            watchdog.resume_silence()
            if turn.is_sent and watchdog.silence_over():
                recording.feed(IdleTimeout(self.idle_timeout_s or 0.0), now())

    def _act(self, effect: Effect) -> None:
        """Carry out a machine's decision: write a line, ask the approval callback, call the
        tool handler, answer a steer, retire."""
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
        elif kind in ("approval", "call_tool"):
            data = effect.data if isinstance(effect.data, dict) else {}
            ident = data.get("request_id")
            process = self._process
            answers = process.items if process is not None else queue.SimpleQueue()
            if type(ident) is not int and not isinstance(ident, str):
                return
            if kind == "call_tool":
                if self.tool_handler is None:
                    answers.put(ToolAnswer(ident, "no tool handler", False, "no tool handler"))
                else:
                    self._helpers.start("codex-tool", _call_tool, self.tool_handler, ident,
                                        _tool_call(data), answers)
            elif self.approvals is None:
                answers.put(ApprovalAnswer(ident, "decline", "no approval callback"))
            else:
                self._helpers.start("codex-approval", _ask, self.approvals, ident,
                                    _approval_request(data), answers)
        elif kind == "steered":
            data = effect.data if isinstance(effect.data, dict) else {}
            self._answer_steer(data.get("accepted") is True)
        elif kind == "retire":
            self._retire = True
