"""Trace files: a turn as JSON Lines, enough to replay it and check every decision.

Line 1 is the header: `{"format": "streamfsm-trace", "version": 1, "entry": ..., "policy": ...,
"request": ...}`. Every further line is one record of the event log, in sequence order:

    {"seq": 1, "kind": "input", "attempt": 1, "t": 0.0123, "input": "chunk", "data": "event: ..."}
    {"seq": 2, "kind": "transition", "machine": "stream_attempt", "attempt": 1,
     "source": "awaiting_created", "dest": "streaming", "trigger": "created"}
    {"seq": 3, "kind": "effect", "attempt": 1, "effect": "text_delta", "data": "Hel"}
    ...
    {"seq": N, "kind": "result", "outcome": "completed", "response": {...}, ...}

Inputs are `chunk` (`data`, or `data_b64` when the bytes are not valid UTF-8 on their own),
`http_error` (`status`, `body`, `headers` that say when to retry, `received_at`), `fault` (`fault`, `detail`), `eof`, `idle_timeout` (`seconds`)
and `interrupt`. Secrets are removed from every line before it is written (`engine.log.redaction`).
"""

from __future__ import annotations

import base64
import os
from typing import Any, Iterable

import attrs
import orjson

from engine.log.eventlog import InputRecord, Record, RecordedInput
from machines.records import Chunk
from engine.log.redaction import redact_fields, scrub_line
from machines.records import (
    Effect,
    EndOfStream,
    HttpError,
    IdleTimeout,
    Interrupt,
    Transition,
    TransportFault,
    TurnPolicy,
    TurnResult,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "Trace",
    "TraceError",
    "TraceWriter",
    "header_for",
    "input_from_json",
    "read_trace",
    "record_to_json",
    "result_to_json",
]

FORMAT = "streamfsm-trace"
VERSION = 1


class TraceError(ValueError):
    """A trace file that cannot be read or is not a valid trace. The message is one line."""


def _input_to_json(item: RecordedInput) -> dict[str, Any]:
    if type(item) is Chunk:
        try:
            return {"input": "chunk", "data": item.data.decode("utf-8")}
        except UnicodeDecodeError:
            return {"input": "chunk", "data_b64": base64.b64encode(item.data).decode("ascii")}
    if isinstance(item, HttpError):
        return {
            "input": "http_error",
            "status": item.status,
            "body": item.body,
            "headers": dict(item.headers),
            "received_at": item.received_at,
        }
    if isinstance(item, TransportFault):
        return {"input": "fault", "fault": item.kind, "detail": item.detail}
    if isinstance(item, EndOfStream):
        return {"input": "eof"}
    if isinstance(item, IdleTimeout):
        return {"input": "idle_timeout", "seconds": item.seconds}
    if isinstance(item, Interrupt):
        return {"input": "interrupt"}
    raise TypeError(f"not a recorded input: {type(item).__name__}")


def input_from_json(record: dict[str, Any]) -> RecordedInput:
    """The input a trace line describes (raises `TraceError` when it is not one)."""
    kind = record.get("input")
    try:
        if kind == "chunk":
            if "data_b64" in record:
                return Chunk(base64.b64decode(record["data_b64"], validate=True))
            data = record["data"]
            if not isinstance(data, str):
                raise TypeError("chunk data is not a string")
            return Chunk(data.encode("utf-8"))
        if kind == "http_error":
            headers = record.get("headers") or {}
            received_at = record.get("received_at")
            if not isinstance(headers, dict) or not all(
                isinstance(v, str) for v in headers.values()
            ):
                raise TypeError("headers is not an object of strings")
            if received_at is not None and (
                isinstance(received_at, bool) or not isinstance(received_at, (int, float))
            ):
                raise TypeError("received_at is not a number")
            return HttpError(int(record["status"]), record.get("body"), headers, received_at)
        if kind == "fault":
            fault = record["fault"]
            if fault not in ("drop", "read_timeout", "connect_error"):
                raise ValueError(f"unknown fault {fault!r}")
            return TransportFault(fault, str(record.get("detail", "")))
        if kind == "eof":
            return EndOfStream()
        if kind == "idle_timeout":
            return IdleTimeout(float(record["seconds"]))
        if kind == "interrupt":
            return Interrupt()
    except (KeyError, TypeError, ValueError) as error:
        raise TraceError(f"seq {record.get('seq')}: bad {kind} input ({error})") from None
    raise TraceError(f"seq {record.get('seq')}: unknown input kind {kind!r}")


def record_to_json(record: Record, seq: int) -> dict[str, Any]:
    """One log record as its trace line's JSON object; `seq` is its place in the log."""
    if type(record) is Effect:
        return {
            "seq": seq,
            "kind": "effect",
            "attempt": record.attempt,
            "effect": record.kind,
            "data": record.data,
        }
    if type(record) is InputRecord:
        return {
            "seq": seq,
            "kind": "input",
            "attempt": record.attempt,
            "t": record.t,
            **_input_to_json(record.input),
        }
    if type(record) is Transition:
        return {
            "seq": seq,
            "kind": "transition",
            "machine": record.machine,
            "attempt": record.attempt,
            "source": record.source,
            "dest": record.dest,
            "trigger": record.trigger,
        }
    raise TypeError(f"not a log record: {type(record).__name__}")


def result_to_json(result: TurnResult, seq: int) -> dict[str, Any]:
    """The trace's final `result` record."""
    return {"seq": seq, "kind": "result", **result.to_json()}


def header_for(
    entry: str, policy: TurnPolicy, request: dict[str, Any] | None, seed: int = 0
) -> dict[str, Any]:
    """The trace header: format, version, entry point, policy, the seed of the turn's random
    draws (retry jitter) and the redacted request."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "entry": entry,
        "policy": {
            "max_stream_retries": policy.max_stream_retries,
            "fallback": policy.fallback,
            "idle_timeout_s": policy.idle_timeout_s,
            "retry_failed_codes": sorted(policy.retry_failed_codes),
            "max_http_retries": policy.max_http_retries or 0,
            "max_retry_wait_s": policy.max_retry_wait_s,
            "max_event_bytes": policy.max_event_bytes,
            "resume": policy.resume,
        },
        "seed": seed,
        "request": redact_fields(request) if request is not None else None,
    }


def _dumps(value: dict[str, Any], secrets: Iterable[str]) -> bytes:
    return scrub_line(orjson.dumps(value, default=_json_default), secrets)


def _json_default(value: Any) -> Any:
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return repr(value)


def normalise(value: dict[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """A record exactly as it reads back from a trace file (secrets removed, JSON types)."""
    parsed: dict[str, Any] = orjson.loads(_dumps(value, secrets))
    return parsed


class TraceWriter:
    """Writes one trace file: header, records, result."""

    def __init__(self, path: str | os.PathLike[str], secrets: Iterable[str] = ()) -> None:
        self.path = os.fspath(path)
        self.secrets = list(secrets)

    def write(
        self, header: dict[str, Any], records: list[Record], result: TurnResult | None
    ) -> None:
        """Write the header, every record and the result (None: a turn cut short) to the path, via a `.partial` file renamed at the end."""
        secrets = self.secrets
        tmp = self.path + ".partial"
        with open(tmp, "wb") as out:  # line by line: a long turn's trace never sits in memory
            write = out.write
            write(_dumps(header, secrets) + b"\n")
            for seq, record in enumerate(records, 1):
                write(_dumps(record_to_json(record, seq), secrets) + b"\n")
            if result is not None:
                write(_dumps(result_to_json(result, len(records) + 1), secrets) + b"\n")
        os.replace(tmp, self.path)


@attrs.frozen(slots=True)
class Trace:
    """A trace file as read: its path, header and records (JSON objects)."""
    path: str
    header: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def policy(self) -> TurnPolicy:
        """The `TurnPolicy` the header recorded (raises `TraceError` if it is not valid)."""
        p = self.header.get("policy") or {}
        try:
            defaults = TurnPolicy()
            return TurnPolicy(
                max_stream_retries=p.get("max_stream_retries", 1),
                fallback=p.get("fallback", True),
                idle_timeout_s=p.get("idle_timeout_s"),
                retry_failed_codes=p.get("retry_failed_codes") or (),
                max_http_retries=p.get("max_http_retries", 0),
                max_retry_wait_s=p.get("max_retry_wait_s", defaults.max_retry_wait_s),
                max_event_bytes=p.get("max_event_bytes", defaults.max_event_bytes),
                resume=p.get("resume", defaults.resume),
            )
        except (TypeError, ValueError) as error:
            raise TraceError(f"{self.path}: bad policy in header ({error})") from None

    def inputs(self) -> list[dict[str, Any]]:
        """The recorded input records, in order."""
        return [r for r in self.records if r.get("kind") == "input"]


_KINDS = {"input", "transition", "effect", "result"}


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and check a trace file; any problem raises `TraceError` with one line of text."""
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
    if header.get("version") != VERSION:
        raise TraceError(
            f"{name}: trace format version {header.get('version')!r} is not supported "
            f"(this streamfsm reads version {VERSION})"
        )
    if header.get("entry") not in ("run_turn", "arun_turn", "consume"):
        raise TraceError(f"{name}: unknown entry {header.get('entry')!r} in header")
    records = parsed[1:]
    for number, record in enumerate(records, 2):
        if record.get("kind") not in _KINDS:
            raise TraceError(f"{name}: line {number} has unknown kind {record.get('kind')!r}")
        # Only the type of `seq` is checked here: a record missing, added or moved is a valid
        # file whose seq numbers replay will not reproduce, so it is reported as a divergence.
        seq = record.get("seq")
        if type(seq) is not int or seq < 1:
            raise TraceError(f"{name}: line {number} has no valid seq number ({seq!r})")
        if record["kind"] == "input":
            if not isinstance(record.get("attempt"), int) or record["attempt"] < 1:
                raise TraceError(f"{name}: line {number} input has no valid attempt number")
            try:
                input_from_json(record)
            except TraceError as error:
                raise TraceError(f"{name}: line {number}: {error}") from None
    trace = Trace(name, header, records)
    trace.policy  # validates the header's policy
    return trace
