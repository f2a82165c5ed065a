"""Trace files: a turn as JSON Lines, enough to replay it and check every decision.

One format, one writer and one reader for every protocol. Line 1 is the header,
`{"format": "streamfsm-trace", "version": 2, "entry": ..., ...}`, whose `entry` names the entry
point that recorded the turn and so what else the header holds (`ENTRIES`):

    run_turn, arun_turn, consume   "policy" (the TurnPolicy), "seed" (of the retry jitter),
                                   "request" (redacted); a request the recording proxy saved
                                   (`streamfsm record`: one attempt, a consume trace) also
                                   "exchange" (how it went: `engine.simulator.recording_proxy`)
    codex_app_server               "config" (the SessionConfig), "session" (the session machine's
                                   snapshot the turn started from)

Every further line is one record of the event log, in sequence order, and the last one says how
the turn ended:

    {"seq": 1, "kind": "input", "attempt": 1, "t": 0.0123, "input": "chunk", "data": "event: ..."}
    {"seq": 2, "kind": "transition", "machine": "stream_attempt", "attempt": 1,
     "source": "awaiting_created", "dest": "streaming", "trigger": "created"}
    {"seq": 3, "kind": "effect", "attempt": 1, "effect": "text_delta", "data": "Hel"}
    ...
    {"seq": N, "kind": "result", "outcome": "completed", ...}

or, when the turn was cut short by an exception in the driver (version 2),

    {"seq": N, "kind": "abandoned", "exception": "KeyboardInterrupt"}

A file without either final record is a truncated file, and not a valid trace. An input line is
its observation's record class written field by field (`engine.log.codec`), so every input kind
of every protocol has one name (`machines.records.InputKind`) and one codec: `chunk`, `http_error`,
`fault`, `eof`, `idle_timeout`, `turn_timeout` and `interrupt` for stream attempts; `line` (one
stdout line), `stderr`, `eof`, `exit`, `spawn_failed`, `turn`, `approval`, `request_timeout`,
`idle_timeout`, `turn_timeout`, `interrupt` and `interrupt_timeout` for app-server turns. Each entry says which of them its
traces hold.

Secrets (version 2). Inputs that are pieces of one byte stream (each attempt's network reads,
an app-server turn's stdout lines) are masked as one stream, the pieces joined and cut again
where they were cut, so a secret split across two reads (or inside a read stored as base64) is
masked all the same; every other line is scrubbed as it is written
(`engine.log.redaction.Scrubber`). Masking keeps lengths (each byte becomes `*`), so a replay of
the masked inputs decides what the turn decided; a replay compares a run of four or more `*` in
a string as "masked text" that matches any text of the same length, because text the machines
assemble from several deltas (the output text, a tool call's arguments) can hold a secret no
single delta held whole. Version 1 files (secrets replaced by `[redacted]` line by line) are
still read and replayed.

Writing never raises: a value orjson cannot write (nested 255 levels or more, a lone surrogate,
an integer beyond 64 bits) is written by a slower encoder that can; anything else that goes wrong
leaves no file (and no `.partial` file), is logged, and `write` returns False. Reading is line by
line (`TraceReader`, from blocks of the file): memory is bounded by the longest line, and every
line is checked as it is read, but for lines a replay rendered itself from records that pass
every check (`TraceReader.skip`, `accept`).

The writer's hot path is a long answer: a text effect per delta and a chunk per read. A chunk's
line is formatted around the one `orjson` call that writes its string (`record_line`). The text
effects a read brought were decided together, and the event log notes where each such list lies
in its records (`EventLog.effect_runs`): the writer makes the lines of such a run at once, one
`orjson` call for all its seq numbers and texts (`text_effect_lines`, byte for byte what
`text_effect_line` makes of each; the runs of a window of records, when they are all of one
kind, in one call, `text_effect_runs`), and any record the run does not fit (another effect, a
lone surrogate) is written on its own. A text effect's line, whose only field names are the
writer's own, is scrubbed without a search for credential-named fields.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import IO, Any, Callable, Final, Iterable, Iterator, Sequence, cast

import attrs
import orjson

from engine.log.codec import (
    INPUTS,
    TEXT_EFFECTS,
    TraceError,
    abandoned_to_json,
    check_record,
    decode_input,
    record_to_json,
    result_to_json,
    type_name,
)
from engine.log.eventlog import Input, InputRecord, Record, RecordedInput
from engine.log.logs import log
from engine.log.masking import TextChannels, mask_text
from engine.log.redaction import Scrubber, redact_fields, scrub_line
from machines.app_records import APP_INPUT_KINDS, AppTurnResult, SessionConfig
from machines.app_session import AppSession
from machines.records import Chunk, Effect, InputKind, TurnPolicy, TurnResult

__all__ = [
    "APP_SERVER",
    "APP_SERVER_ENTRY",
    "ENTRIES",
    "FORMAT",
    "KINDS",
    "RESPONSES",
    "VERSION",
    "VERSIONS",
    "EntryFormat",
    "Trace",
    "TraceError",
    "TraceReader",
    "TraceWriter",
    "app_header",
    "dumps",
    "equal",
    "header_for",
    "input_from_json",
    "is_stream_record",
    "loads",
    "policy_from_header",
    "read_trace",
    "record_line",
    "record_to_json",
    "result_to_json",
    "scrubber_for",
    "stretches",
    "text_effect_line",
    "text_effect_lines",
    "text_effect_runs",
]

FORMAT = "streamfsm-trace"
#: The version this streamfsm writes.
VERSION = 2
#: The versions it reads.
VERSIONS = (1, 2)
#: The record kinds of each version; `result` and `abandoned` end a trace.
KINDS = {
    1: frozenset({"input", "transition", "effect", "result"}),
    2: frozenset({"input", "transition", "effect", "result", "abandoned"}),
}
_FINAL_KINDS = frozenset({"result", "abandoned"})
#: The names of the input kinds whose records are pieces of a stream (see `is_stream_record`).
_STREAM_NAMES = frozenset(kind.value for kind, format_ in INPUTS.items() if format_.stream)


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _trace_error(text: str) -> TraceError:
    return TraceError(_one_line(text))


# -- JSON that never fails on what a turn recorded ------------------------------------------------


def _json_default(value: Any) -> Any:
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return repr(value)


def dumps(value: Any) -> bytes:
    """`value` as one line of compact JSON (no newline). orjson when it can; otherwise (nesting
    255 levels or deeper, a lone surrogate, an integer beyond 64 bits, a key that is not a
    string) the standard library with room to recurse, which writes what `_dumps_anything`
    writes ten times faster; and for what neither writes (a number that is not finite, a key
    that is no JSON key) `_dumps_anything`, an encoder without recursion that writes any value:
    never raises."""
    try:
        return orjson.dumps(value, default=_json_default)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    try:
        with _recursion_room():
            text = json.dumps(value, separators=(",", ":"), allow_nan=False, default=_json_default)
        return text.encode("ascii")
    except (TypeError, ValueError, RecursionError):
        return _dumps_anything(value)


class _Text(str):
    """Literal JSON text on `_dumps_anything`'s work stack."""


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return "null" if key is None else ("true" if key else "false")
    if isinstance(key, (int, float)):
        return repr(key)
    return str(key)


def _dumps_anything(value: Any) -> bytes:
    out: list[str] = []
    work: list[Any] = [value]
    while work:
        item = work.pop()
        if type(item) is _Text:
            out.append(item)
            continue
        if item is None or item is True or item is False:
            out.append("null" if item is None else ("true" if item else "false"))
        elif isinstance(item, str):
            out.append(json.dumps(str(item)))  # ASCII, lone surrogates escaped
        elif isinstance(item, int):
            out.append(int.__repr__(int(item)))
        elif isinstance(item, float):
            out.append(float.__repr__(item) if math.isfinite(item) else "null")
        elif isinstance(item, dict):
            pieces: list[Any] = []
            for index, (key, inner) in enumerate(item.items()):
                pieces.append(_Text(("," if index else "") + json.dumps(_json_key(key)) + ":"))
                pieces.append(inner)
            out.append("{")
            work.append(_Text("}"))
            work.extend(reversed(pieces))
        elif isinstance(item, (list, tuple)):
            pieces = []
            for index, inner in enumerate(item):
                if index:
                    pieces.append(_Text(","))
                pieces.append(inner)
            out.append("[")
            work.append(_Text("]"))
            work.extend(reversed(pieces))
        else:
            try:
                work.append(_json_default(item))
            except Exception:  # an object whose repr raises
                work.append(f"<{type(item).__name__}>")
    return "".join(out).encode("ascii")


#: How deep the standard library's JSON may recurse when orjson's 1024 levels are not enough.
_DEEP = 6000


@contextlib.contextmanager
def _recursion_room(depth: int = _DEEP) -> Iterator[None]:
    """Raise the interpreter's recursion limit to at least `depth` for the block (deeply nested
    data: parsing it with the standard library, comparing it)."""
    before = sys.getrecursionlimit()
    if before < depth:
        sys.setrecursionlimit(depth)
    try:
        yield
    finally:
        if before < depth:
            sys.setrecursionlimit(before)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(line: bytes) -> Any:
    """One JSON text; `ValueError` when it is not one. orjson when it can; the standard library
    for what orjson refuses but a trace may hold (nesting deeper than 1024 levels, an escaped lone
    surrogate)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as error:
        first = error
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(str(first)) from None
    try:
        with _recursion_room():
            return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError:
        raise ValueError(str(first)) from None


def equal(mine: Any, theirs: Any) -> bool:
    """`mine == theirs` for JSON values of any depth."""
    try:
        return bool(mine == theirs)
    except RecursionError:
        with _recursion_room():
            return bool(mine == theirs)


# -- headers --------------------------------------------------------------------------------------

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
            "turn_timeout_s": policy.turn_timeout_s,
        },
        "seed": seed,
        "request": redact_fields(request) if request is not None else None,
    }


def app_header(config: SessionConfig, snapshot: dict[str, Any]) -> dict[str, Any]:
    """The header of an app-server turn's trace: the session's config and the snapshot of the
    session machine the turn starts from (so the turn replays on its own)."""
    return {"format": FORMAT, "version": VERSION, "entry": APP_SERVER_ENTRY,
            "config": config.to_json(), "session": snapshot}


def input_from_json(record: dict[str, Any]) -> RecordedInput:
    """The Responses-API input a trace line describes (raises `TraceError` when it is not one)."""
    return cast(RecordedInput, decode_input(record, RESPONSES.inputs))


def is_stream_record(record: dict[str, Any]) -> bool:
    """Whether a record (JSON) is a stream input (a chunk, a stdout line): in a version 2 trace
    its data was masked with the rest of its stream, so its line is not scrubbed again."""
    return record.get("kind") == "input" and record.get("input") in _STREAM_NAMES


def scrubber_for(version: int, secrets: Iterable[str] = ()) -> Callable[[bytes], bytes]:
    """How the lines of a trace of `version` were scrubbed (replay scrubs what it renders the
    same way before comparing)."""
    if version == 1:
        listed = list(secrets)
        return lambda line: scrub_line(line, listed)
    return Scrubber(secrets).scrub


# -- writing --------------------------------------------------------------------------------------

#: How much of a trace is read at a time.
_READ_BLOCK = 1 << 18

#: Lines scrubbed together (one pass of the scrubber over many short lines).
_WINDOW = 2048


class TraceWriter:
    """Writes one trace file, of any protocol: header, records, and the result (or the abandoned
    record), secrets masked."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        secrets: Iterable[str] = (),
        *,
        text: TextChannels | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.secrets = list(secrets)
        #: how the protocol's streams carry the text its machines deliver (masked alike in every
        #: attempt), if it says
        self.text = text

    def write(
        self,
        header: dict[str, Any],
        records: list[Record],
        result: dict[str, Any] | None,
        *,
        abandoned: str | None = None,
        effect_runs: Sequence[tuple[int, int]] = (),
    ) -> bool:
        """Write the header, every record and the result (its JSON; None: a turn cut short by the
        exception named `abandoned`) to the path, via a `.partial` file renamed at the end.
        `effect_runs` says where `records` holds effects decided together (`EventLog.effect_runs`):
        a run of text effects there is written at once (the same bytes, made faster).

        Never raises for what the turn recorded: returns False, logs a warning and leaves neither
        file when the trace could not be written (a full disk, a vanished directory)."""
        tmp = self.path + ".partial"
        try:
            with open(tmp, "wb") as out:
                self._write(out, header, records, result, abandoned, effect_runs)
            os.replace(tmp, self.path)
            return True
        except Exception as error:
            _remove_quietly(tmp)
            log.warning("trace not written", path=self.path, error=type(error).__name__)
            return False
        except BaseException:
            _remove_quietly(tmp)
            raise

    def _write(
        self,
        out: IO[bytes],
        header: dict[str, Any],
        records: list[Record],
        result: dict[str, Any] | None,
        abandoned: str | None,
        effect_runs: Sequence[tuple[int, int]] = (),
    ) -> None:
        scrubber = Scrubber(self.secrets)
        streams, effects = _masked_streams(records, scrubber, self.text)
        lines: list[bytes] = [dumps(header)]
        # How each entry of `lines` is scrubbed (`_flush`): the lines of text effects (`texts`;
        # an entry is one line, or a run of them joined by `\n`), those scrubbed in full
        # (`fulls`), by index in `lines`; the others are stream inputs. `lines` holds a window's
        # lines (fewer than twice `_WINDOW` records') until they are written.
        texts: list[int] = []
        fulls: list[int] = [0]
        add_line = lines.append
        effect_line = text_effect_line
        for window in _windows(stretches(len(records), effect_runs, _WINDOW)):
            blocks = iter(_run_blocks(records, window, effects))
            for start, end, together in window:
                block = next(blocks) if together else None
                if block is not None:
                    texts.append(len(lines))
                    add_line(block)
                    continue
                for seq, record in enumerate(records[start:end], start + 1):
                    if effects:
                        record = effects.get(seq - 1, record)
                    if type(record) is Effect:
                        line = effect_line(record, seq)
                        if line is not None:
                            texts.append(len(lines))
                        else:  # not a text effect `text_effect_line` writes: the general way
                            line = dumps(record_to_json(record, seq))
                            text = record.kind in TEXT_EFFECTS and type(record.data) is str
                            (texts if text else fulls).append(len(lines))
                        add_line(line)
                    elif type(record) is InputRecord and seq - 1 in streams:
                        written = streams[seq - 1]
                        if written is not record.input:
                            record = InputRecord(record.attempt, record.t, written)
                        add_line(record_line(record, seq))
                    else:
                        fulls.append(len(lines))
                        add_line(record_line(record, seq))
            if window[-1][1] < len(records):  # the last window's lines go with the result's
                _flush(out, lines, texts, fulls, scrubber)
                lines.clear()
                texts.clear()
                fulls.clear()
        fulls.append(len(lines))
        if result is not None:
            add_line(dumps(result_to_json(result, len(records) + 1)))
        else:
            add_line(dumps(abandoned_to_json(abandoned or "Exception", len(records) + 1)))
        _flush(out, lines, texts, fulls, scrubber)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _masked_streams(
    records: list[Record], scrubber: Scrubber, text: TextChannels | None
) -> tuple[dict[int, Input], dict[int, Effect]]:
    """Every stream input, by index in `records`, as it is written (the same object when masking
    left it alone): each attempt's pieces of a stream (its chunks; its stdout lines) are masked
    as one stream (a secret split across two pieces is found) and cut again where they were
    cut. With `text`, and more than one attempt, the text the machines decode from the streams
    is masked the same way in every attempt too (`engine.log.masking`); the effects that
    delivered text and are written masked are returned, by index."""
    streams: dict[tuple[int, type], list[int]] = {}
    for index, record in enumerate(records):
        if type(record) is InputRecord:
            kind = type(record.input)
            if kind in _STREAM_FORMATS:
                streams.setdefault((record.attempt, kind), []).append(index)
    bodies: dict[tuple[int, type], tuple[bytes, bytearray | bytes]] = {}
    for (attempt, kind), indices in streams.items():
        payload = _STREAM_FORMATS[kind].payload
        body = _STREAM_FORMATS[kind].separator.join([payload(records[i].input) for i in indices])  # type: ignore[union-attr]
        bodies[attempt, kind] = body, scrubber.scrub(body)
    effects: dict[int, Effect] = {}
    if text is not None:
        decoded = INPUTS[text.kind].cls
        attempts = [attempt for attempt, kind in bodies if kind is decoded]
        if len(attempts) > 1:  # (a copy of each masked body, to mask further in place)
            mine = {attempt: (bodies[attempt, decoded][0], bytearray(bodies[attempt, decoded][1]))
                    for attempt in attempts}
            effects = mask_text(records, mine, scrubber, text)
            bodies.update(((attempt, decoded), pair) for attempt, pair in mine.items())
    written: dict[int, Input] = {}
    for (attempt, kind), indices in streams.items():
        stream = _STREAM_FORMATS[kind]
        body, masked = bodies[attempt, kind]
        changed = masked is not body and masked != body
        offset = 0
        for index in indices:
            item = records[index].input  # type: ignore[union-attr]
            piece = stream.payload(item)
            new = masked[offset : offset + len(piece)] if changed else piece
            written[index] = stream.rebuild(bytes(new)) if new != piece else item
            offset += len(piece) + len(stream.separator)
    return written, effects


_STREAM_FORMATS = {format_.cls: format_.stream for format_ in INPUTS.values() if format_.stream}


def _flush(
    out: IO[bytes], lines: list[bytes], texts: list[int], fulls: list[int], scrubber: Scrubber
) -> None:
    """Write `lines`, scrubbing the entries at `texts` as text effects' lines (their only
    strings are their effect's name and their text, so no field of theirs is named like a
    credential and the scrubber need not look for such fields; an entry may be a run of such
    lines) and those at `fulls` in full; the others are stream inputs, masked with their
    stream. The entries scrubbed alike are scrubbed in one pass, joined by `\n` (a mask never
    covers a line end, and keeps lengths: each entry is cut out again where it was)."""
    for positions, fields in ((texts, False), (fulls, True)):
        if positions:
            joined = b"\n".join([lines[index] for index in positions])
            masked = scrubber.scrub(joined, fields=fields)
            if masked is not joined:
                at = 0
                for index in positions:
                    size = len(lines[index])
                    lines[index] = masked[at : at + size]
                    at += size + 1
    lines.append(b"")
    out.write(b"\n".join(lines))


def _windows(
    parts: Iterable[tuple[int, int, bool]]
) -> Iterator[list[tuple[int, int, bool]]]:
    """`stretches` gathered into windows of about `_WINDOW` records each: the lines the writer
    holds, makes and scrubs together before it writes them."""
    window: list[tuple[int, int, bool]] = []
    held = 0
    for part in parts:
        window.append(part)
        held += part[1] - part[0]
        if held >= _WINDOW:
            yield window
            window = []
            held = 0
    if window:
        yield window


def _run_blocks(
    records: list[Record], window: list[tuple[int, int, bool]], effects: dict[int, Effect]
) -> Sequence[bytes | None]:
    """The lines of each run of effects decided together in `window` (its `together`
    stretches), in order: one block each (`text_effect_runs`, at once; `effects` are those
    written masked alike in every attempt), or None for a run that is not text effects that
    fit, whose records are then written one by one."""
    runs: list[list[Record]] = []
    firsts: list[int] = []
    for start, end, together in window:
        if together:
            run = records[start:end]
            if effects:
                run = list(map(effects.get, range(start, end), run))
            runs.append(run)
            firsts.append(start + 1)
    if not runs:
        return ()
    blocks = text_effect_runs(runs, firsts)  # type: ignore[arg-type]
    if blocks is None:  # some run is not text of the first run's kind: each run on its own
        return [text_effect_lines(run, first) for run, first in zip(runs, firsts)]  # type: ignore[arg-type]
    return blocks


def stretches(
    count: int, effect_runs: Iterable[tuple[int, int]], longest: int | None = None
) -> Iterator[tuple[int, int, bool]]:
    """`count` records cut at the runs of effects decided together (`EventLog.effect_runs`, in
    order): `(start, end, together)` for each stretch `records[start:end]`, in order,
    `together` saying whether it is such a run; a stretch holds at most `longest` records (a
    longer one comes in pieces: a turn of one delta a read has no runs, and its records are
    still written a window at a time)."""
    at = 0
    for start, end in effect_runs:
        if at < start:
            yield from _pieces(at, start, False, longest)
        yield from _pieces(start, end, True, longest)
        at = end
    if at < count:
        yield from _pieces(at, count, False, longest)


def _pieces(
    start: int, end: int, together: bool, longest: int | None
) -> Iterator[tuple[int, int, bool]]:
    """`(start, end, together)` cut into stretches of at most `longest` records."""
    if longest is not None:
        while end - start > longest:
            yield start, start + longest, together
            start += longest
    yield start, end, together


def record_line(record: Record, seq: int) -> bytes:
    """`dumps(record_to_json(record, seq))`, byte for byte: a record's trace line before masking.

    The records of a long answer are nearly all a text effect per delta and a chunk per network
    read; their lines are formatted around one `orjson` call for their one string (the same call
    that writes it inside the object), with no dict built. Anything else goes the general way."""
    line = text_effect_line(record, seq)
    if line is not None:
        return line
    if type(record) is InputRecord:
        item = record.input
        if type(item) is Chunk and type(record.attempt) is int:
            try:
                text = orjson.dumps(item.data.decode("utf-8"))
            except UnicodeDecodeError:  # written as base64: the general way
                pass
            else:
                return _CHUNK_LINE % (seq, record.attempt, orjson.dumps(record.t), text)
    return dumps(record_to_json(record, seq))


def text_effect_line(record: Record, seq: int) -> bytes | None:
    """The trace line of a text effect whose every field fits (`fits_at_a_glance` holds for
    its JSON) when one `orjson` call writes its text; None for any other record (a replay
    compares a long answer's lines so)."""
    if type(record) is not Effect:
        return None
    name = _TEXT_EFFECT_NAMES.get(record.kind)
    data, attempt = record.data, record.attempt
    if name is None or type(data) is not str or type(attempt) is not int or attempt < 0:
        return None
    try:
        return _EFFECT_LINE % (seq, attempt, name, orjson.dumps(data))
    except TypeError:  # a lone surrogate: the general way writes it
        return None


def text_effect_lines(effects: Sequence[Effect], seq: int) -> bytes | None:
    """The trace lines of `effects`, numbered from `seq`, joined by `\n`: byte for byte
    `text_effect_line` of each, made at once when all are text effects of one kind and one
    attempt whose every field fits; None when they are not (or a text holds a lone surrogate:
    the general way writes it), and then each is written on its own.

    A long answer is runs of text effects (one per delta, those of a network read decided
    together). One `orjson` call writes a run's seq numbers and texts, interleaved in one list
    and indented (`[\n  5,\n  "Hel",\n  6,\n  "lo"\n]`): orjson writes a line end inside a
    string escaped, so every raw one is the list's own, `",\n  ` ends a text and `,\n  "`
    starts one, and two replacements put the line's fields there. (Without the indent, `",`
    would not do: a text's escaped quote followed by a comma is those bytes too.) The checks
    that every effect fits take the run's kinds, attempts and texts in three comprehensions and
    count them in C (`list.count`): none is a step per record of Python calls."""
    return _numbered_text_lines(effects, range(seq, seq + len(effects)))


def text_effect_runs(runs: Sequence[Sequence[Effect]], firsts: Sequence[int]) -> list[bytes] | None:
    """`text_effect_lines` of each run of `runs`, the one at `i` numbered from `firsts[i]`,
    made in one go when all are text effects of one kind and one attempt (None when they are
    not: then each run is made on its own). A network read brings a run of a score of deltas;
    making a window's runs at once pays the calls and checks once, and each run is cut out of
    the block where its first line begins (a raw line end followed by its seq number, which
    no text holds: a text's line ends are escaped)."""
    effects: list[Effect] = []
    numbers: list[int] = []
    for run, first in zip(runs, firsts):
        if not run:
            return None
        effects += run
        numbers += range(first, first + len(run))
    block = _numbered_text_lines(effects, numbers)
    if block is None:
        return None
    cut = block.find
    blocks: list[bytes] = []
    at = 0
    for first in firsts[1:]:
        end = cut(b'\n{"seq":%d,' % first, at)
        blocks.append(block[at:end])
        at = end + 1
    blocks.append(block[at:])
    return blocks


def _numbered_text_lines(effects: Sequence[Effect], numbers: Sequence[int]) -> bytes | None:
    """`text_effect_lines` of `effects` numbered `numbers` (one each, in order)."""
    count = len(effects)
    if not count:
        return None
    try:
        kinds = [effect.kind for effect in effects]
        attempts = [effect.attempt for effect in effects]
        texts = [effect.data for effect in effects]
    except AttributeError:  # not effects
        return None
    kind, attempt = kinds[0], attempts[0]
    name = _TEXT_EFFECT_NAMES.get(kind)
    if (name is None or type(attempt) is not int or attempt < 0
            or kinds.count(kind) != count or attempts.count(attempt) != count
            or list(map(type, attempts)).count(int) != count  # 1 == True == 1.0
            or list(map(type, texts)).count(str) != count):
        return None
    numbered: list[int | str] = [0] * (2 * count)
    numbered[::2] = numbers
    numbered[1::2] = texts
    try:
        listed = orjson.dumps(numbered, option=orjson.OPT_INDENT_2)
    except TypeError:  # a lone surrogate
        return None
    fields = _EFFECT_FIELDS % (attempt, name)
    return b"".join((
        b'{"seq":',
        listed[4:-3].replace(b'",\n  ', b'"}\n{"seq":').replace(b',\n  "', fields),
        b'"}',
    ))


_EFFECT_LINE: Final = b'{"seq":%d,"kind":"effect","attempt":%d,"effect":%s,"data":%s}'
#: What comes between a text effect's seq number and its text (`text_effect_lines`).
_EFFECT_FIELDS: Final = b',"kind":"effect","attempt":%d,"effect":%s,"data":"'
_CHUNK_LINE: Final = b'{"seq":%d,"kind":"input","attempt":%d,"t":%s,"input":"chunk","data":%s}'
#: Each text effect's name as a JSON string.
_TEXT_EFFECT_NAMES: Final = {name: orjson.dumps(name) for name in TEXT_EFFECTS}


# -- reading --------------------------------------------------------------------------------------


def policy_from_header(policy: Any) -> TurnPolicy:
    """The `TurnPolicy` a header's `policy` object records; `ValueError` naming the field when it
    is not one (each field is checked for its type, unknown fields are refused)."""
    if not isinstance(policy, dict):
        raise ValueError(f"header field 'policy' is {type_name(policy)}, not an object")
    names = {field.name for field in attrs.fields(TurnPolicy)}
    for name, value in policy.items():
        if name not in names:
            raise ValueError(f"unknown policy field {name!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"policy field {name!r} is {value!r}, not a finite number")
    arguments = dict(policy)
    if "retry_failed_codes" in arguments:
        codes = arguments["retry_failed_codes"]
        if codes is None:
            arguments["retry_failed_codes"] = ()
        elif not isinstance(codes, list) or not all(isinstance(code, str) for code in codes):
            raise ValueError(
                f"policy field 'retry_failed_codes' is {type_name(codes)}, not a list of strings"
            )
    try:
        return TurnPolicy(**arguments)
    except Exception as error:  # the policy's own validators: wrong type or range
        raise ValueError(f"bad policy in header ({error})") from None


def _check_turn_header(header: dict[str, Any]) -> None:
    """The header fields of a `run_turn` / `arun_turn` / `consume` trace."""
    policy_from_header(header.get("policy"))
    request = header.get("request")
    if request is not None and not isinstance(request, dict):
        raise ValueError(f"header field 'request' is {type_name(request)}, not an object or null")
    if "seed" in header and type(header["seed"]) is not int:
        raise ValueError(f"header field 'seed' is {type_name(header['seed'])}, not a whole number")
    if "compat" in header and not isinstance(header["compat"], str):
        raise ValueError(f"header field 'compat' is {type_name(header['compat'])}, not a string")


def _check_app_header(header: dict[str, Any]) -> None:
    """The header fields of a `codex_app_server` trace: the config, and a session snapshot the
    session machine can start from."""
    config = SessionConfig.from_json(header.get("config"))
    session = header.get("session")
    if not isinstance(session, dict):
        raise TypeError(f"header field 'session' is {type_name(session)}, not an object")
    AppSession.restore(config, session)


@attrs.frozen
class EntryFormat:
    """What the traces of one entry point hold besides the common fields: `check_header(header)`
    raises `ValueError` or `TypeError` (one line, naming the field) for a header it cannot start
    from; `inputs` are the input kinds its traces record; `result` the class whose fields its
    result record holds."""

    check_header: Callable[[dict[str, Any]], None]
    inputs: frozenset[InputKind]
    result: type


#: The entry of an app-server turn's trace.
APP_SERVER_ENTRY = "codex_app_server"
#: Traces of Responses-API turns (`run_turn`, `arun_turn`, `consume`).
RESPONSES = EntryFormat(
    _check_turn_header,
    frozenset({InputKind.CHUNK, InputKind.HTTP_ERROR, InputKind.FAULT, InputKind.EOF,
               InputKind.IDLE_TIMEOUT, InputKind.TURN_TIMEOUT, InputKind.INTERRUPT}),
    TurnResult,
)
#: Traces of codex app-server turns.
APP_SERVER = EntryFormat(_check_app_header, APP_INPUT_KINDS, AppTurnResult)
#: Entry points, by the header's `entry`: how their traces are checked. Replay has its own table
#: of how they are replayed (`engine.drivers.replay.REPLAYERS`).
ENTRIES: dict[str, EntryFormat] = {
    "run_turn": RESPONSES,
    "arun_turn": RESPONSES,
    "consume": RESPONSES,
    APP_SERVER_ENTRY: APP_SERVER,
}


class TraceReader:
    """Reads and checks a trace file line by line (memory bounded by the longest line).

    Opening reads and checks the header (`header`, `version`, `entry`, and the entry's own
    fields). Iterating yields each record as `(line, record, input)`: the line's bytes (trailing
    whitespace removed), its JSON object, checked, and for an input record the input it
    describes, decoded once here (None for other records); at the end of the file, a trace
    without its final record (`result`, or `abandoned`) raises `TraceError`. Every problem is a
    `TraceError` with one line of text.

    Checked, for every record: its kind and `seq`, and every field of its kind
    (`engine.log.codec`: an input's, a transition's, an effect's, the result's); an input's
    clock reading `t` is null or a finite number >= 0 that never goes backwards within its
    attempt."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = name = os.fspath(path)
        #: records read so far
        self.records = 0
        self._number = 0
        self._final = False
        #: what was read of the file and not taken yet: `_buffer[_at:]`
        self._buffer = b""
        self._at = 0
        #: the latest clock reading of each attempt's inputs
        self._clocks: dict[int, float] = {}
        try:
            self._file: IO[bytes] = open(name, "rb")
        except OSError as error:
            raise _trace_error(f"{name}: cannot read ({error.strerror or error})") from None
        try:
            self.header = self._read_header()
        except BaseException:
            self._file.close()
            raise
        self.version: int = self.header["version"]
        self.entry: str = self.header["entry"]
        self._format = ENTRIES[self.entry]
        self._kinds = KINDS[self.version]

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        next_line = self._next_line
        while True:
            try:
                line = next_line()
            except MemoryError:
                raise _trace_error(f"{self.path}: line {self._number + 1} is too long to read") from None
            if line is None:
                return
            self._number += 1
            line = line.rstrip()
            if line:
                yield self._number, line

    def _block(self) -> bytes:
        """The next block of the file (empty at its end)."""
        try:
            return self._file.read(_READ_BLOCK)
        except OSError as error:
            raise _trace_error(f"{self.path}: cannot read ({error.strerror or error})") from None

    def _next_line(self) -> bytes | None:
        """The next line with its line end (the last one may have none); None at the end."""
        buffer, at = self._buffer, self._at
        end = buffer.find(b"\n", at)
        if end >= 0:
            self._at = end + 1
            return buffer[at : end + 1]
        pieces = [buffer[at:]]  # a line longer than what is buffered: its pieces, joined once
        while True:
            block = self._block()
            if not block:
                self._buffer, self._at = b"", 0
                return b"".join(pieces) or None
            end = block.find(b"\n")
            if end >= 0:
                pieces.append(block[: end + 1])
                self._buffer, self._at = block, end + 1
                return b"".join(pieces)
            pieces.append(block)

    def skip(self, expected: bytes, count: int) -> bool:
        """Take the next `count` lines without parsing them when they are, with their line ends,
        byte for byte `expected`: lines the caller rendered itself from records that pass every
        check of their kind and are neither inputs nor final records (`accept`, for a whole run
        at once: a replay's text effects). False, and nothing taken, when they are not."""
        buffer, at = self._buffer, self._at
        if len(buffer) - at < len(expected):
            pieces, have = [buffer[at:]], len(buffer) - at
            while have < len(expected):
                block = self._block()
                if not block:
                    break
                pieces.append(block)
                have += len(block)
            buffer, at = self._buffer, self._at = b"".join(pieces), 0
        if not buffer.startswith(expected, at):
            return False
        self._at = at + len(expected)
        self._number += count
        self.records += count
        return True

    def _parse(self, number: int, line: bytes) -> dict[str, Any]:
        try:
            value = loads(line)
        except ValueError:
            raise _trace_error(f"{self.path}: line {number} is not JSON") from None
        except MemoryError:
            raise _trace_error(f"{self.path}: line {number} is too large to read") from None
        if not isinstance(value, dict):
            raise _trace_error(f"{self.path}: line {number} is not a JSON object")
        return value

    def _read_header(self) -> dict[str, Any]:
        name = self.path
        first = next(self._lines(), None)
        if first is None:
            raise _trace_error(f"{name}: empty file, not a trace")
        number, line = first
        header = self._parse(number, line)
        if header.get("format") != FORMAT:
            raise _trace_error(f"{name}: line {number} is not a {FORMAT} header")
        version = header.get("version")
        if type(version) is not int or version not in VERSIONS:
            raise _trace_error(
                f"{name}: trace format version {version!r} is not supported "
                f"(this streamfsm reads versions {', '.join(map(str, VERSIONS))})"
            )
        entry = header.get("entry")
        if not isinstance(entry, str) or entry not in ENTRIES:
            raise _trace_error(f"{name}: unknown entry {entry!r} in header")
        try:
            ENTRIES[entry].check_header(header)
        except (TypeError, ValueError) as error:
            raise _trace_error(f"{name}: line {number}: {error}") from None
        return header

    def __iter__(self) -> Iterator[tuple[bytes, dict[str, Any], Input | None]]:
        for number, line in self.lines():
            record, item = self.read(number, line)
            yield line, record, item
        self.finish()

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """The record lines as they are (numbered), not yet parsed: each is then `read`, or
        `accept`ed; `finish` at the end. (Iterating does all three.)"""
        return self._lines()

    def read(self, number: int, line: bytes) -> tuple[dict[str, Any], Input | None]:
        """Line `number`, parsed and checked: its JSON object and, for an input record, the
        input it describes."""
        record = self._parse(number, line)
        item = self._check(number, record)
        self.records += 1
        return record, item

    def accept(self, count: int = 1) -> None:
        """Count lines without parsing them, because each is byte for byte what `dumps` wrote
        of a record that passes every check of its kind and is neither an input nor a final
        record (`engine.log.codec.fits_at_a_glance`): what `read` would find, known already."""
        self.records += count

    def finish(self) -> None:
        """At the end of the file: a trace without its final record (`result`, `abandoned`) is
        a truncated file (`TraceError`)."""
        if not self._final:
            where = f"after line {self._number}" if self.records else "after its header"
            raise _trace_error(
                f"{self.path}: the trace ends {where} without its final result record "
                "(a truncated file)"
            )

    def _check(self, number: int, record: dict[str, Any]) -> Input | None:
        """Check one record; the input it describes, for an input record."""
        name = self.path
        kind = record.get("kind")
        if not isinstance(kind, str) or kind not in self._kinds:
            raise _trace_error(f"{name}: line {number} has unknown kind {kind!r}")
        # Only the type of `seq` is checked here: a record missing, added or moved is a valid
        # file whose seq numbers replay will not reproduce, so it is reported as a divergence.
        seq = record.get("seq")
        if type(seq) is not int or seq < 1:
            raise _trace_error(f"{name}: line {number} has no valid seq number ({seq!r})")
        if kind in _FINAL_KINDS:
            self._final = True
        if kind == "input":
            attempt = record.get("attempt")
            if type(attempt) is not int or attempt < 1:
                raise _trace_error(f"{name}: line {number} input has no valid attempt number")
            self._check_clock(number, attempt, record.get("t"))
            try:
                return decode_input(record, self._format.inputs)
            except TraceError as error:
                raise _trace_error(f"{name}: line {number}: {error}") from None
        try:
            check_record(record, self._format.result)
        except TraceError as error:
            raise _trace_error(f"{name}: line {number}: {error}") from None
        return None

    def _check_clock(self, number: int, attempt: int, t: Any) -> None:
        """An input's clock reading: null, or a finite number >= 0 not below the attempt's
        previous reading."""
        if t is None:
            return
        name = self.path
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise _trace_error(f"{name}: line {number} input has a clock reading that is not a number ({t!r})")
        if not math.isfinite(t) or t < 0:
            raise _trace_error(f"{name}: line {number} input has a clock reading that is not a finite number >= 0 ({t!r})")
        before = self._clocks.get(attempt)
        if before is not None and t < before:
            raise _trace_error(
                f"{name}: line {number} input's clock reading {t!r} goes back from {before!r} "
                f"within attempt {attempt}"
            )
        self._clocks[attempt] = t


@attrs.frozen(slots=True)
class Trace:
    """A trace file as read whole: its path, header and records (JSON objects)."""

    path: str
    header: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def policy(self) -> TurnPolicy:
        """The `TurnPolicy` the header recorded (raises `TraceError` if it is not valid)."""
        try:
            return policy_from_header(self.header.get("policy"))
        except ValueError as error:
            raise _trace_error(f"{self.path}: {error}") from None

    @property
    def version(self) -> int:
        """The trace format version of the file."""
        version: int = self.header.get("version", VERSION)
        return version

    @property
    def entry(self) -> str:
        """The entry point that recorded the turn (the header's `entry`)."""
        entry: str = self.header["entry"]
        return entry

    def inputs(self) -> list[dict[str, Any]]:
        """The recorded input records, in order."""
        return [r for r in self.records if r.get("kind") == "input"]


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read and check a whole trace file; any problem raises `TraceError` with one line of text.
    (`TraceReader` reads one record at a time.)"""
    with TraceReader(path) as reader:
        records = [record for _, record, _ in reader]
        return Trace(reader.path, reader.header, records)
