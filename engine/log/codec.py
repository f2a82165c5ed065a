"""Input records as trace lines, for every protocol: one codec, derived from the records.

Theory of operation
===================

An input line of a trace is the record's envelope and the observation's fields:

    {"seq": 4, "kind": "input", "attempt": 1, "t": 0.0123, "input": "fault", "fault": "drop",
     "detail": "RemoteProtocolError"}

`input` is the observation's name, its class's `KIND` (`machines.records.InputKind`); the other
fields are the class's attrs fields, in their order, under their own names, with their JSON values.
So a record class is its own codec: `INPUTS` maps every `InputKind` a trace records to an
`InputFormat` built from the class at import, and a new protocol's records join by being listed
in `_RECORDS`. Where the trace format writes a field otherwise, a small override (`FieldFormat`)
says how:

    Chunk.data                  "data" (text), or "data_b64" when the bytes are not UTF-8
    ServerLine.text, StderrLine.text
                                "data"
    TransportFault.kind         "fault"
    HttpError.headers           an object of strings (null or missing: none)

Reading checks every field against its annotation (`machines` annotates every field): a boolean
is `true` or `false` and nothing else, a whole number is an `int` and never a boolean, a `float`
is a finite number >= 0 (every float an input holds is a duration or a clock reading) and never a
boolean, a string is a string, a `Literal` or an enumeration takes only its values, a union any
of its members' values, a list a list whose every item fits, a `dict` an object, a record class
an object whose fields fit. A field with a default, or one that may be None, may be missing.
What does not fit is a `TraceError` naming the record's seq and the field.

Every other record is checked the same way (`check_record`): a transition's fields (`machine`,
`attempt`, `source`, `dest`, `trigger`), an effect's (`attempt`, `effect`: one of
`machines.records.EffectKind`, and its `data`, whose type depends on the effect: text for text,
null or a routing for a first delta, seconds for a wait, an object for a tool call, an error, a
line to send, ...), the result's (derived from the entry's result class, `TurnResult` or
`AppTurnResult`: each field it holds fits its annotation) and an abandoned record's
(`exception`). An attempt number is a whole number, never a boolean.

Stream inputs: `Chunk` (the bytes of one network read) and `ServerLine` (one stdout line of the
codex app-server) are pieces of one byte stream per attempt, and `InputFormat.stream` says how
(`StreamFormat`): the trace writer masks secrets in the stream as a whole and cuts it again where
it was cut (`engine.log.trace`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Callable, Final, Union

import attrs

from engine.log.eventlog import Input, InputRecord, Record
from machines.app_records import (
    ApprovalAnswer,
    Close,
    CompactRequest,
    InterruptTimeout,
    ProcessExit,
    RequestTimeout,
    ServerLine,
    SpawnFailed,
    StderrLine,
    Steer,
    ToolAnswer,
    TurnRequest,
)
from machines.records import (
    Chunk,
    Effect,
    EffectKind,
    EndOfStream,
    FirstDeltaRouting,
    HttpError,
    IdleTimeout,
    InputKind,
    Interrupt,
    Transition,
    TransportFault,
    TurnTimeout,
)

__all__ = [
    "INPUTS",
    "JSON_TYPES",
    "TEXT_EFFECTS",
    "TRACE_TYPE_NAMES",
    "FieldFormat",
    "InputFormat",
    "StreamFormat",
    "TraceError",
    "abandoned_to_json",
    "check_record",
    "decode_input",
    "encode_input",
    "fits_at_a_glance",
    "record_to_json",
    "json_type",
    "result_to_json",
    "type_name",
]


class TraceError(ValueError):
    """A trace file that cannot be read or is not a valid trace. The message is one line."""


#: The JSON types, as `json_type` names them.
JSON_TYPES: Final = ("null", "boolean", "integer", "number", "string", "list", "object")
#: The Python type a JSON reader gives for each JSON type but null, in the order they are
#: tested (a `bool` is an `int` to Python, so it comes first).
_PYTHON_TYPES: Final = (
    (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "list"),
    (dict, "object"),
)

#: How a trace's error messages name each JSON type (a number is a number, whole or not).
TRACE_TYPE_NAMES: Final[Mapping[str, str]] = {
    "null": "null", "boolean": "a boolean", "integer": "a number", "number": "a number",
    "string": "a string", "list": "a list", "object": "an object",
}


def json_type(value: Any) -> str | None:
    """The JSON type (`JSON_TYPES`) of a value read from JSON: an `int` is an "integer", a `float`
    a "number"; None for a value no JSON text gives."""
    if value is None:
        return "null"
    for python_type, name in _PYTHON_TYPES:
        if isinstance(value, python_type):
            return name
    return None


def type_name(value: Any, names: Mapping[str, str] = TRACE_TYPE_NAMES) -> str:
    """How a value's JSON type is named in an error message: in a trace's words, or in the
    `names` of another format (a scenario file speaks TOML: "a table", "an array"); a value no
    JSON text gives is named by its Python type."""
    kind = json_type(value)
    return names[kind] if kind is not None else type(value).__name__


# -- checking a JSON value against an annotation --------------------------------------------------

#: Reads a JSON value as the field's value; raises `TypeError` / `ValueError` when it does not fit.
Check = Callable[[Any], Any]


def _whole(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"{type_name(value)}, not a whole number")
    return value


def _boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise TypeError(f"{type_name(value)}, not a boolean")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{type_name(value)}, not a number")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{value!r}, not a finite number >= 0")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{type_name(value)}, not a string")
    return value


def _null(value: Any) -> None:
    if value is not None:
        raise TypeError(f"{type_name(value)}, not null")


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{type_name(value)}, not an object")
    return value


def _count(value: Any) -> int:
    """A whole number >= 0 (an attempt number, a count), never a boolean."""
    if type(value) is not int:
        raise TypeError(f"{type_name(value)}, not a whole number")
    if value < 0:
        raise ValueError(f"{value!r}, not a whole number >= 0")
    return value


def _list_of(check: Check) -> Check:
    def each(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise TypeError(f"{type_name(value)}, not a list")
        for index, item in enumerate(value):
            _named(f"item {index}", check, item)
        return value

    return each


def _fields_of(record_class: type) -> Check:
    """An object whose fields, those of `record_class` it holds, fit their annotations."""
    hints = typing.get_type_hints(record_class)
    checks = {field.name: _check_for(hints[field.name]) for field in attrs.fields(record_class)}

    def fits(value: Any) -> dict[str, Any]:
        _object(value)
        for name, check in checks.items():
            if name in value:
                _named(name, check, value[name])
        return value  # type: ignore[no-any-return]

    return fits


def _anything(value: Any) -> Any:
    return value


class _Unknown(ValueError):
    """A value a field of a fixed set of values does not take."""


def _named(name: str, check: Check, value: Any) -> Any:
    """`check(value)`, its error naming what was checked (a field, a list's item): "unknown
    NAME 'x'" for a value a fixed set of values does not hold, else "NAME is ..."."""
    try:
        return check(value)
    except _Unknown as error:
        raise ValueError(f"unknown {name} {error}") from None
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name} is {error}") from None


def _one_of(values: tuple[Any, ...]) -> Check:
    def check(value: Any) -> Any:
        if isinstance(value, str) and value in values:
            return value
        raise _Unknown(repr(value))

    return check


def _any_of(checks: list[Check]) -> Check:
    def check(value: Any) -> Any:
        for each in checks:
            try:
                return each(value)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{type_name(value)} does not fit")

    return check


def _check_for(hint: Any) -> Check:
    """The check of a JSON value for a field annotated `hint`."""
    if hint is Any:
        return _anything
    if hint is bool:
        return _boolean
    if hint is int:
        return _whole
    if hint is float:
        return _seconds
    if hint is str:
        return _text
    if hint is type(None):
        return _null
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        members = tuple(member.value for member in hint)
        return lambda value: hint(_one_of(members)(value))
    if hint is dict:
        return _object
    if isinstance(hint, type) and attrs.has(hint):
        return _fields_of(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return _one_of(typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return _any_of([_check_for(member) for member in typing.get_args(hint)])
    if origin is dict:
        return _object
    if origin is list:
        return _list_of(_check_for(typing.get_args(hint)[0]))
    raise TypeError(f"no trace format for a field of type {hint!r}")


#: A field a line must hold.
_REQUIRED: Final = object()


def _when_missing(field: Any, hint: Any) -> Any:
    """What a line that leaves the field out means: its default (`attrs.NOTHING`), None for a
    field that may be None, else that the line is not a record (`_REQUIRED`)."""
    if field.default is not attrs.NOTHING:
        return attrs.NOTHING
    if typing.get_origin(hint) in (Union, types.UnionType) and type(None) in typing.get_args(hint):
        return None
    return _REQUIRED


# -- fields and inputs ----------------------------------------------------------------------------


@attrs.frozen
class FieldFormat:
    """How one field of an input record is written to and read from its trace line.

    `write(value)` returns the line's fields for it; `read(record)` the field's value, or
    `attrs.NOTHING` when the line leaves it out (the record's default applies)."""

    name: str
    write: Callable[[Any], dict[str, Any]]
    read: Callable[[dict[str, Any]], Any]


def _plain(name: str, key: str, check: Check, missing: Any) -> FieldFormat:
    def read(record: dict[str, Any]) -> Any:
        if key not in record:
            if missing is _REQUIRED:
                raise KeyError(key)
            return missing
        return _named(key, check, record[key])

    return FieldFormat(name, lambda value: {key: value}, read)


def _chunk_to_json(data: bytes) -> dict[str, Any]:
    try:
        return {"data": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"data_b64": base64.b64encode(data).decode("ascii")}


def _chunk_from_json(record: dict[str, Any]) -> bytes:
    if "data_b64" in record:
        encoded = record["data_b64"]
        if not isinstance(encoded, str):
            raise TypeError(f"data_b64 is {type_name(encoded)}, not a string")
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError("data_b64 is not base64") from None
    return _text(record["data"]).encode("utf-8")


def _headers_from_json(record: dict[str, Any]) -> Any:
    headers = record.get("headers")
    if headers is None:
        return attrs.NOTHING
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise TypeError(f"headers is {type_name(headers)}, not an object of strings")
    return headers


#: Fields the trace format writes otherwise than by their own name and JSON value.
_OVERRIDES: Final[dict[tuple[type, str], FieldFormat]] = {
    (Chunk, "data"): FieldFormat("data", _chunk_to_json, _chunk_from_json),
    (HttpError, "headers"): FieldFormat(
        "headers", lambda headers: {"headers": dict(headers)}, _headers_from_json
    ),
}
#: Fields written under another key.
_KEYS: Final[dict[tuple[type, str], str]] = {
    (ServerLine, "text"): "data",
    (StderrLine, "text"): "data",
    (TransportFault, "kind"): "fault",
}


@attrs.frozen
class StreamFormat:
    """An input kind whose records are the pieces of one byte stream per attempt: `payload(item)`
    is the piece's bytes, `rebuild(data)` the record for masked bytes of the same length, and
    pieces are joined with `separator` (stdout lines lost their line ends)."""

    payload: Callable[[Any], bytes]
    rebuild: Callable[[bytes], Any]
    separator: bytes


def _line_text(data: bytes) -> ServerLine:
    try:
        return ServerLine(data.decode("utf-8"))
    except UnicodeDecodeError:  # a mask cut a character a secret shares a byte of
        return ServerLine(data.decode("utf-8", "replace"))


_STREAMS: Final[dict[type, StreamFormat]] = {
    Chunk: StreamFormat(lambda item: item.data, Chunk, b""),
    ServerLine: StreamFormat(lambda item: item.text.encode("utf-8", "surrogatepass"), _line_text, b"\n"),
}


@attrs.frozen
class InputFormat:
    """How one kind of input (`kind`, the record class `cls`) is written and read."""

    kind: InputKind
    cls: type
    fields: tuple[FieldFormat, ...]
    stream: StreamFormat | None = None

    @classmethod
    def of(cls, record_class: type) -> InputFormat:
        """The format of `record_class`, derived from its attrs fields and annotations."""
        hints = typing.get_type_hints(record_class)
        fields = []
        for field in attrs.fields(record_class):
            name = field.name
            override = _OVERRIDES.get((record_class, name))
            if override is None:
                hint = hints[name]
                key = _KEYS.get((record_class, name), name)
                override = _plain(name, key, _check_for(hint), _when_missing(field, hint))
            fields.append(override)
        kind: InputKind = record_class.KIND  # type: ignore[attr-defined]
        return cls(kind, record_class, tuple(fields), _STREAMS.get(record_class))

    def to_json(self, item: Any) -> dict[str, Any]:
        """The line's `input` field and the record's fields."""
        out: dict[str, Any] = {"input": self.kind.value}
        for field in self.fields:
            out.update(field.write(getattr(item, field.name)))
        return out

    def from_json(self, record: dict[str, Any]) -> Any:
        """The record a line describes; `KeyError`, `TypeError` or `ValueError` when it is not one."""
        arguments = {}
        for field in self.fields:
            value = field.read(record)
            if value is not attrs.NOTHING:
                arguments[field.name] = value
        return self.cls(**arguments)


#: Every record class a trace holds as an input, of every protocol.
_RECORDS: Final = (
    # Responses-API stream attempts (`EndOfStream`, `IdleTimeout`, `TurnTimeout` and
    # `Interrupt` for app-server turns too)
    Chunk, HttpError, TransportFault, EndOfStream, IdleTimeout, TurnTimeout, Interrupt,
    # codex app-server turns
    ServerLine, StderrLine, ProcessExit, SpawnFailed, TurnRequest, ApprovalAnswer,
    RequestTimeout, InterruptTimeout, CompactRequest, ToolAnswer, Steer, Close,
)
#: The trace format of every input kind a trace records, by its name.
INPUTS: Final[dict[InputKind, InputFormat]] = {
    format_.kind: format_ for format_ in map(InputFormat.of, _RECORDS)
}
_BY_CLASS: Final[dict[type, InputFormat]] = {format_.cls: format_ for format_ in INPUTS.values()}


def encode_input(item: Input) -> dict[str, Any]:
    """An input as the fields of its trace line (`input` and the record's fields)."""
    format_ = _BY_CLASS.get(type(item))
    if format_ is None:
        raise TypeError(f"not a recorded input: {type(item).__name__}")
    return format_.to_json(item)


def decode_input(record: dict[str, Any], kinds: frozenset[InputKind] | None = None) -> Input:
    """The input a trace line describes (`kinds`: the kinds its entry records, by default any);
    `TraceError` when it is not one."""
    name = record.get("input")
    format_ = INPUTS.get(name) if isinstance(name, str) else None  # type: ignore[call-overload]
    if format_ is None or (kinds is not None and format_.kind not in kinds):
        raise TraceError(f"seq {record.get('seq')!r}: unknown input kind {name!r}")
    try:
        item: Input = format_.from_json(record)
    except (KeyError, TypeError, ValueError) as error:
        raise TraceError(f"seq {record.get('seq')!r}: bad {name} input ({error})") from None
    return item


# -- records as JSON ------------------------------------------------------------------------------


def record_to_json(record: Record, seq: int) -> dict[str, Any]:
    """One log record as its trace line's JSON object; `seq` is its place in the log."""
    if type(record) is Effect:
        return {"seq": seq, "kind": "effect", "attempt": record.attempt, "effect": record.kind,
                "data": record.data}
    if type(record) is Transition:
        return {"seq": seq, "kind": "transition", "machine": record.machine,
                "attempt": record.attempt, "source": record.source, "dest": record.dest,
                "trigger": record.trigger}
    if type(record) is InputRecord:
        return {"seq": seq, "kind": "input", "attempt": record.attempt, "t": record.t,
                **encode_input(record.input)}
    raise TypeError(f"not a log record: {type(record).__name__}")


def result_to_json(result: dict[str, Any], seq: int) -> dict[str, Any]:
    """The trace's final `result` record, from the result's JSON (`to_json()`)."""
    return {"seq": seq, "kind": "result", **result}


def abandoned_to_json(exception: str, seq: int) -> dict[str, Any]:
    """The final record of a turn cut short by an exception (its class name only: the message may
    quote anything)."""
    return {"seq": seq, "kind": "abandoned", "exception": exception}


# -- checking every other record ------------------------------------------------------------------

#: What an effect's `data` holds, by effect (`machines.records.EffectKind`).
#: The effects whose data is text.
TEXT_EFFECTS: Final = frozenset({"text_delta", "reasoning_delta", "commentary_delta", "refusal_delta"})
EFFECT_DATA: Final[dict[str, Check]] = {
    **dict.fromkeys(TEXT_EFFECTS, _text),
    "first_delta": _any_of([_null, _one_of(typing.get_args(FirstDeltaRouting))]),
    "wait": _seconds,
    "cancel": _text,
    **dict.fromkeys(
        ("tool_call", "error", "rate_limits", "send", "approval", "message", "outcome", "retire",
         "call_tool", "steered"),
        _object,
    ),
}
_EFFECTS: Final = _one_of(typing.get_args(EffectKind))

#: The fields of each record kind but `seq` and `kind` (checked by the reader), and their checks.
_RECORD_FIELDS: Final[dict[str, dict[str, Check]]] = {
    "transition": {"machine": _text, "attempt": _count, "source": _text, "dest": _text,
                   "trigger": _text},
    "effect": {"attempt": _count, "effect": _EFFECTS},
    "abandoned": {"exception": _text},
}
_MISSING_ALLOWED: Final = frozenset({("abandoned", "exception")})


def fits_at_a_glance(record: dict[str, Any]) -> bool:
    """Whether a record is a text effect or a transition whose every field fits (True only when
    `check_record` finds nothing wrong; False says nothing). Nearly every record of a trace is
    one of these: the checks of `check_record` without walking them."""
    kind = record.get("kind")
    if kind != "effect" and kind != "transition":
        return False
    attempt = record.get("attempt")
    if type(attempt) is not int or attempt < 0:
        return False
    if kind == "effect":
        effect = record.get("effect")
        return type(effect) is str and effect in TEXT_EFFECTS and type(record.get("data", "")) is str
    return (type(record.get("machine")) is str and type(record.get("source")) is str
            and type(record.get("dest")) is str and type(record.get("trigger")) is str)


def check_record(record: dict[str, Any], result: type | None = None) -> None:
    """Check the fields of a record that is not an input (`kind` names a record kind, as the
    reader made sure): every field of a transition, an effect and an abandoned record, and, for
    a result, every field of the `result` class (`TurnResult`, `AppTurnResult`) it holds.
    `TraceError` naming the field when one does not fit."""
    kind = record.get("kind")
    if fits_at_a_glance(record):
        return
    try:
        if kind == "result":
            if result is not None:
                _results(result)(record)
            return
        for key, check in _RECORD_FIELDS.get(str(kind), {}).items():
            if key not in record:
                if (kind, key) in _MISSING_ALLOWED:
                    continue
                raise KeyError(key)
            _named(key, check, record[key])
        if kind == "effect":
            if "data" in record:
                _named("data", EFFECT_DATA.get(record["effect"], _anything), record["data"])
    except KeyError as error:
        raise TraceError(f"seq {record.get('seq')!r}: {kind} record without {error}") from None
    except (TypeError, ValueError) as error:
        raise TraceError(f"seq {record.get('seq')!r}: bad {kind} record ({error})") from None


#: The check of a result record, by the result class its entry returns.
_RESULT_CHECKS: dict[type, Check] = {}


def _results(result: type) -> Check:
    check = _RESULT_CHECKS.get(result)
    if check is None:
        check = _RESULT_CHECKS[result] = _fields_of(result)
    return check
