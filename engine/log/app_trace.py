"""Traces of codex app-server turns: the app-server inputs as trace lines, and back.

An app-server turn's trace is a streamfsm trace (JSON Lines, `format` and `version` as for every
trace) whose header says `"entry": "codex_app_server"` and carries what the machines start from:

    {"format": "streamfsm-trace", "version": 1, "entry": "codex_app_server",
     "config": {"cwd": ..., "approval_policy": ..., "sandbox": ..., "client_name": ...,
                "client_version": ...},
     "session": {"state": "spawned" | "ready" | ..., "thread_id": ..., "next_id": ...,
                 "pending": [[id, method], ...], "turn_number": ..., "finished_turns": [...],
                 "stderr": [...]}}

Every further line is a record with `seq`, as in every trace: inputs, then the transitions and
effects they caused, and the `result` last. The inputs (`attempt` is the turn's number in its
session, `t` the driver's clock):

    {"kind": "input", "input": "line", "data": "<one stdout line, as read>"}
    {"kind": "input", "input": "stderr", "data": "<one stderr line, secrets removed>"}
    {"kind": "input", "input": "eof"}                     stdout ended
    {"kind": "input", "input": "exit", "code": -9}        the subprocess exited
    {"kind": "input", "input": "spawn_failed", "detail": "..."}
    {"kind": "input", "input": "turn", "text": "..."}     the caller asked for the turn
    {"kind": "input", "input": "approval", "request_id": 0, "decision": "accept", "detail": ""}
    {"kind": "input", "input": "request_timeout", "request_id": 3, "method": "turn/start",
     "seconds": 30.0}
    {"kind": "input", "input": "idle_timeout", "seconds": 5.0}
    {"kind": "input", "input": "interrupt"}
    {"kind": "input", "input": "interrupt_timeout", "seconds": 2.0}

Effects are `send` (the JSON-RPC message written, as an object), `approval` (the request shown to
the callback), `first_delta`, `text_delta`, `reasoning_delta`, `message` (a projected chat
message), `error`, `outcome` and `retire`. Secrets are removed from every line before it is
written, as for every trace.
"""

from __future__ import annotations

import os
from typing import Any, Final, Iterable

import attrs
import orjson

from engine.log.redaction import scrub_line
from engine.log.trace import FORMAT, VERSION, VERSIONS, TraceError, dumps, record_to_json
from machines.app_records import (
    DECISIONS,
    AppInput,
    AppTurnResult,
    ApprovalAnswer,
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
from machines.records import Effect, EndOfStream, IdleTimeout, Interrupt, Transition

__all__ = [
    "AppInputRecord",
    "AppRecord",
    "AppTrace",
    "ENTRY",
    "app_header",
    "app_input_from_json",
    "app_input_to_json",
    "app_normalise",
    "app_record_to_json",
    "app_result_to_json",
    "is_app_trace_file",
    "is_app_trace_header",
    "read_app_trace",
    "write_app_trace",
]

#: The header's `entry` for an app-server turn.
ENTRY: Final = "codex_app_server"


@attrs.frozen(slots=True)
class AppInputRecord:
    """One observation of the app-server, as the driver recorded it for turn `attempt`; `t` is
    the driver's monotonic clock, seconds since the turn began."""

    attempt: int
    t: float | None
    input: AppInput


#: A record of an app-server turn's log; its sequence number is its position (from 1).
AppRecord = AppInputRecord | Transition | Effect


def app_input_to_json(item: AppInput) -> dict[str, Any]:
    """An input as the fields of its trace line."""
    kind = type(item)
    if kind is ServerLine:
        assert isinstance(item, ServerLine)
        return {"input": "line", "data": item.text}
    if kind is StderrLine:
        assert isinstance(item, StderrLine)
        return {"input": "stderr", "data": item.text}
    if kind is EndOfStream:
        return {"input": "eof"}
    if kind is ProcessExit:
        assert isinstance(item, ProcessExit)
        return {"input": "exit", "code": item.code}
    if kind is SpawnFailed:
        assert isinstance(item, SpawnFailed)
        return {"input": "spawn_failed", "detail": item.detail}
    if kind is TurnRequest:
        assert isinstance(item, TurnRequest)
        return {"input": "turn", "text": item.text}
    if kind is ApprovalAnswer:
        assert isinstance(item, ApprovalAnswer)
        return {"input": "approval", "request_id": item.request_id, "decision": item.decision,
                "detail": item.detail}
    if kind is RequestTimeout:
        assert isinstance(item, RequestTimeout)
        return {"input": "request_timeout", "request_id": item.request_id, "method": item.method,
                "seconds": item.seconds}
    if kind is IdleTimeout:
        assert isinstance(item, IdleTimeout)
        return {"input": "idle_timeout", "seconds": item.seconds}
    if kind is Interrupt:
        return {"input": "interrupt"}
    if kind is InterruptTimeout:
        assert isinstance(item, InterruptTimeout)
        return {"input": "interrupt_timeout", "seconds": item.seconds}
    raise TypeError(f"not an app-server input: {kind.__name__}")


def _string(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _seconds(record: dict[str, Any]) -> float:
    value = record["seconds"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("seconds must be a number >= 0")
    return float(value)


def app_input_from_json(record: dict[str, Any]) -> AppInput:
    """The input a trace line describes (raises `TraceError` when it is not one)."""
    kind = record.get("input")
    try:
        if kind == "line":
            return ServerLine(_string(record, "data"))
        if kind == "stderr":
            return StderrLine(_string(record, "data"))
        if kind == "eof":
            return EndOfStream()
        if kind == "exit":
            code = record.get("code")
            if code is not None and type(code) is not int:
                raise TypeError("code is not a whole number")
            return ProcessExit(code)
        if kind == "spawn_failed":
            return SpawnFailed(_string(record, "detail"))
        if kind == "turn":
            return TurnRequest(_string(record, "text"))
        if kind == "approval":
            ident = record["request_id"]
            if type(ident) is not int and not isinstance(ident, str):
                raise TypeError("request_id is not an id")
            decision = record["decision"]
            if decision not in DECISIONS:
                raise ValueError(f"unknown decision {decision!r}")
            return ApprovalAnswer(ident, decision, str(record.get("detail", "")))
        if kind == "request_timeout":
            ident = record["request_id"]
            if type(ident) is not int:
                raise TypeError("request_id is not a whole number")
            return RequestTimeout(ident, _string(record, "method"), _seconds(record))
        if kind == "idle_timeout":
            return IdleTimeout(_seconds(record))
        if kind == "interrupt":
            return Interrupt()
        if kind == "interrupt_timeout":
            return InterruptTimeout(_seconds(record))
    except (KeyError, TypeError, ValueError) as error:
        raise TraceError(f"seq {record.get('seq')}: bad {kind} input ({error})") from None
    raise TraceError(f"seq {record.get('seq')}: unknown app-server input kind {kind!r}")


def app_record_to_json(record: AppRecord, seq: int) -> dict[str, Any]:
    """One log record as its trace line's JSON object; `seq` is its place in the log."""
    if type(record) is AppInputRecord:
        return {"seq": seq, "kind": "input", "attempt": record.attempt, "t": record.t,
                **app_input_to_json(record.input)}
    assert isinstance(record, (Transition, Effect))
    return record_to_json(record, seq)


def app_result_to_json(result: AppTurnResult, seq: int) -> dict[str, Any]:
    """The trace's final `result` record."""
    return {"seq": seq, "kind": "result", **result.to_json()}


def app_header(config: SessionConfig, snapshot: dict[str, Any]) -> dict[str, Any]:
    """The header of an app-server turn's trace."""
    return {"format": FORMAT, "version": VERSION, "entry": ENTRY, "config": config.to_json(),
            "session": snapshot}


def _dumps(value: dict[str, Any], secrets: Iterable[str]) -> bytes:
    return scrub_line(dumps(value), secrets)


def app_normalise(value: dict[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """A record exactly as it reads back from a trace file (secrets removed, JSON types)."""
    parsed: dict[str, Any] = orjson.loads(_dumps(value, secrets))
    return parsed


def write_app_trace(
    path: str | os.PathLike[str],
    header: dict[str, Any],
    records: list[AppRecord],
    result: AppTurnResult | None,
    secrets: Iterable[str] = (),
) -> None:
    """Write the header, every record and the result (None: a turn cut short by a bug) to
    `path`, via a `.partial` file renamed at the end; secrets removed from every line."""
    secrets = list(secrets)
    name = os.fspath(path)
    tmp = name + ".partial"
    with open(tmp, "wb") as out:
        write = out.write
        write(_dumps(header, secrets) + b"\n")
        for seq, record in enumerate(records, 1):
            write(_dumps(app_record_to_json(record, seq), secrets) + b"\n")
        if result is not None:
            write(_dumps(app_result_to_json(result, len(records) + 1), secrets) + b"\n")
    os.replace(tmp, name)


@attrs.frozen(slots=True)
class AppTrace:
    """An app-server trace as read: its path, header, config, session snapshot and records."""

    path: str
    header: dict[str, Any]
    config: SessionConfig
    session: dict[str, Any]
    records: list[dict[str, Any]]

    def inputs(self) -> list[dict[str, Any]]:
        """The recorded input records, in order."""
        return [r for r in self.records if r.get("kind") == "input"]


def is_app_trace_header(header: Any) -> bool:
    """Whether a parsed first line is the header of an app-server trace."""
    return isinstance(header, dict) and header.get("entry") == ENTRY


def is_app_trace_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file's first line is an app-server trace header (False for anything that
    cannot be read or parsed: the ordinary trace reader reports those)."""
    try:
        with open(path, "rb") as source:
            first = source.readline(1 << 20)
        return is_app_trace_header(orjson.loads(first))
    except (OSError, ValueError, TypeError):
        return False


_KINDS: Final = {"input", "transition", "effect", "result"}


def read_app_trace(path: str | os.PathLike[str]) -> AppTrace:
    """Read and check an app-server trace; any problem raises `TraceError` with one line."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as source:
            raw = source.read()
    except OSError as error:
        raise TraceError(f"{name}: cannot read ({error.strerror or error})") from None
    lines = [line for line in raw.split(b"\n") if line.strip()]
    if not lines:
        raise TraceError(f"{name}: empty file, not a trace")
    parsed: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise TraceError(f"{name}: line {number} is not JSON") from None
        if not isinstance(value, dict):
            raise TraceError(f"{name}: line {number} is not a JSON object")
        parsed.append(value)
    header = parsed[0]
    if header.get("format") != FORMAT:
        raise TraceError(f"{name}: line 1 is not a {FORMAT} header")
    if header.get("version") not in VERSIONS:
        raise TraceError(f"{name}: trace format version {header.get('version')!r} is not "
                         f"supported (this streamfsm reads versions {VERSIONS})")
    if header.get("entry") != ENTRY:
        raise TraceError(f"{name}: not an app-server trace (entry {header.get('entry')!r})")
    try:
        config = SessionConfig.from_json(header.get("config"))
        session = header.get("session")
        if not isinstance(session, dict):
            raise TypeError("session must be an object")
        AppSession.restore(config, session)
    except (TypeError, ValueError) as error:
        raise TraceError(f"{name}: bad header ({error})") from None
    records = parsed[1:]
    for number, record in enumerate(records, 2):
        if record.get("kind") not in _KINDS:
            raise TraceError(f"{name}: line {number} has unknown kind {record.get('kind')!r}")
        seq = record.get("seq")
        if type(seq) is not int or seq < 1:
            raise TraceError(f"{name}: line {number} has no valid seq number ({seq!r})")
        if record["kind"] == "input":
            if type(record.get("attempt")) is not int or record["attempt"] < 0:
                raise TraceError(f"{name}: line {number} input has no valid turn number")
            t = record.get("t")
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
                raise TraceError(f"{name}: line {number} input has a bad clock reading")
            try:
                app_input_from_json(record)
            except TraceError as error:
                raise TraceError(f"{name}: line {number}: {error}") from None
    if not records or records[-1].get("kind") != "result":
        raise TraceError(f"{name}: no result record at the end (a truncated trace)")
    return AppTrace(name, header, config, session, records)
