"""Replay: feed a trace's recorded inputs to today's machines and compare every record.

One replay for every protocol. The recorded inputs (chunks with their boundaries, faults,
interrupts, an app-server's lines, the approval answers, clock readings) are fed, attempt by
attempt, exactly as the drivers fed them; the machines decide anew. Every record they produce is
compared with the recorded one at the same place, as the file is read: a missing, extra,
reordered or altered record is a divergence, reported as the first differing record (seq,
recorded, replayed), the way Temporal's replayer names the first mismatching history event.

Data flows one way, one step at a time: the reader (`TraceReader`) reads a line; the comparison
hands an input to the replayer, whose recording feeds the machines through the event log; the
records the log made are rendered once and compared with the lines, then dropped. So memory is
bounded by the longest record (or one step's records), not the file, and nothing here writes a
trace or calls back into the reader. A line is parsed and checked as the reader checks every
line, and compared as JSON, unless it is byte for byte what the replay rendered of a record
that passes those checks by construction (`fits_at_a_glance`: a text effect, a transition);
then it is that record and is only counted. A long answer is nearly all text effects, a run of
them for each network read: the replay renders such a run at once (`text_effect_lines`, the
lines joined), and when the file holds it as it is, takes it in one comparison of bytes
(`TraceReader.skip`); when it does not, the run comes apart into its lines, compared one by
one as every other line is, so a divergence inside it is reported as any other.
A file that is not a valid trace raises `TraceError`, even when a divergence came first: the
whole file is always read and checked.

How a trace is replayed depends on its header's `entry`: `REPLAYERS` maps each entry to a
`Replayer`, a function of the header returning a generator that yields, step by step, the
records today's code produces (numbered from 1; each its JSON, or its trace line for a text
effect that fits at a glance, or the lines of a run of them joined by `\n`) and, when it
needs the next recorded input, yields `NeedInput` and is sent that input (an `InputRecord`),
or None when the trace holds no further input for it. A protocol brings its replayer; the
comparison is the same for all.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Generator, Iterator, Protocol, cast

import attrs
import orjson

from engine.drivers.app_recording import AppTurnRecording
from engine.drivers.recording import TurnRecording
from engine.drivers.replay_report import Divergence, ReplayReport
from engine.log.codec import decode_input, fits_at_a_glance
from engine.log.eventlog import EventLog, Input, InputRecord, RecordedInput, Record
from engine.log.redaction import MASK
from engine.log.trace import (
    APP_SERVER_ENTRY,
    ENTRIES,
    Trace,
    TraceError,
    TraceReader,
    dumps,
    equal,
    is_stream_record,
    loads,
    policy_from_header,
    record_to_json,
    result_to_json,
    scrubber_for,
    stretches,
    text_effect_line,
    text_effect_lines,
)
from machines.app_records import AppInput, SessionConfig
from machines.app_session import AppSession

__all__ = [
    "REPLAYERS",
    "Divergence",
    "NeedInput",
    "ReplayReport",
    "Replayer",
    "replay",
    "replay_app_turn",
    "replay_trace",
    "replay_turn",
]


# -- replayers, by entry ----------------------------------------------------------------------------


@attrs.frozen(slots=True)
class NeedInput:
    """What a replayer yields when it needs the next recorded input of attempt `attempt`."""

    attempt: int


#: A replay in progress: yields the records (numbered from 1) each step made, as a list (one
#: yield per step, not per record: a long answer is a record per delta), each its JSON or, for
#: one that fits at a glance (`fits_at_a_glance`: `_Handover` renders text effects so), its
#: trace line, or for a run of them decided together their lines joined by `\n` (one item for
#: several records); and `NeedInput`; is sent the recorded input asked for, or None.
ReplaySession = Generator["list[dict[str, Any] | bytes] | NeedInput", "InputRecord | None", None]
#: Starts the replay of a trace from its (checked) header.
Replayer = Callable[[dict[str, Any]], ReplaySession]


class _Handover:
    """The records a replay's event log made since the last `take()`, numbered: a run of text
    effects decided together whose fields all fit as their trace lines (`text_effect_lines`,
    joined by `\n`: what the comparison compares, nearly every record of a long answer), a text
    effect alone that fits as its line, any other record as JSON. The log keeps none of them
    (a replay holds one step's records at a time)."""

    __slots__ = ("made", "runs", "seq")

    def __init__(self, log: EventLog) -> None:
        self.made = log.records
        self.runs = log.effect_runs
        self.seq = 0

    def take(self) -> list[dict[str, Any] | bytes]:
        made, seq = self.made, self.seq
        out: list[dict[str, Any] | bytes] = []
        for start, end, together in stretches(len(made), self.runs):
            first = seq + start + 1
            # effects only: a run when they are text effects of one kind
            run = text_effect_lines(made[start:end], first) if together else None  # type: ignore[arg-type]
            if run is not None:
                out.append(run)
            else:
                out += _each(made[start:end], first)
        self.runs.clear()
        self.seq = seq + len(made)
        made.clear()
        return out


def _each(records: list[Record], seq: int) -> list[dict[str, Any] | bytes]:
    """`records`, numbered from `seq`, each on its own: a text effect that fits as its line (a
    line is never empty), any other as JSON."""
    return [text_effect_line(record, number) or record_to_json(record, number)
            for number, record in enumerate(records, seq)]


def replay_turn(header: dict[str, Any]) -> ReplaySession:
    """Replay a `run_turn`, `arun_turn` or `consume` trace: the turn machine opens each attempt,
    and each attempt is fed its recorded inputs until it is final."""
    seed = header.get("seed", 0)
    recording = TurnRecording(
        policy_from_header(header.get("policy")), None, entry=header["entry"],
        request=header.get("request"), seed=seed if type(seed) is int else 0, observed=False,
    )
    made = _Handover(recording.log)
    for feed in recording.attempts():
        yield made.take()
        while not feed.final:
            record = yield NeedInput(feed.number)
            if record is None:  # today's machines want more than was recorded
                yield made.take()
                return
            feed.observe(cast(RecordedInput, record.input), record.t)
            yield made.take()
    yield made.take()
    yield [result_to_json(recording.result().to_json(), made.seq + 1)]


def replay_app_turn(header: dict[str, Any]) -> ReplaySession:
    """Replay a `codex_app_server` trace: the session machine starts from the header's snapshot
    and is fed the recorded inputs (lines, the turn request, approval answers, timeouts, ...)
    until the turn ends. Nothing is written and no callback is called: the answers are inputs."""
    session = AppSession.restore(SessionConfig.from_json(header["config"]), header["session"])
    recording = AppTurnRecording(session, None, observed=False)
    made = _Handover(recording.log)
    while not recording.finished:
        record = yield NeedInput(recording.number)
        if record is None:
            yield made.take()
            return
        recording.feed(cast(AppInput, record.input), record.t)
        yield made.take()
    yield [result_to_json(recording.result().to_json(), made.seq + 1)]


#: How each entry point's traces are replayed (the header's `entry`).
REPLAYERS: dict[str, Replayer] = {
    "run_turn": replay_turn,
    "arun_turn": replay_turn,
    "consume": replay_turn,
    APP_SERVER_ENTRY: replay_app_turn,
}


# -- comparing ------------------------------------------------------------------------------------

#: A run of this many mask characters in a recorded string is masked text (see `_masked_equal`).
_MASKED_RUN = 4


def _masked_equal(mine: Any, theirs: Any) -> bool:
    """Equal but for masked text: where either string holds a run of `_MASKED_RUN` or more mask
    characters, the other may hold anything of the same length there (a secret the replay
    assembled from pieces the trace kept, each too short to be masked)."""
    work = [(mine, theirs)]
    while work:
        a, b = work.pop()
        if isinstance(a, str) and isinstance(b, str):
            if a != b and not _strings_match(a, b):
                return False
        elif isinstance(a, dict) and isinstance(b, dict):
            if a.keys() != b.keys():
                return False
            work.extend((a[key], b[key]) for key in a)
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return False
            work.extend(zip(a, b))
        elif type(a) is not type(b) or a != b:
            return False
    return True


def _masked(text: str) -> list[bool]:
    flags = [False] * len(text)
    at = text.find(MASK * _MASKED_RUN)
    while at >= 0:
        end = at
        while end < len(text) and text[end] == MASK:
            end += 1
        flags[at:end] = [True] * (end - at)
        at = text.find(MASK * _MASKED_RUN, end)
    return flags


def _strings_match(a: str, b: str) -> bool:
    if len(a) != len(b) or MASK * _MASKED_RUN not in a and MASK * _MASKED_RUN not in b:
        return False
    masked_a, masked_b = _masked(a), _masked(b)
    return all(x == y or masked_a[i] or masked_b[i] for i, (x, y) in enumerate(zip(a, b)))


#: A recorded record, parsed and checked: its JSON and, for an input, the input it describes.
_Read = tuple["dict[str, Any]", "Input | None"]


class _Comparison:
    """One replay session checked against recorded records, one at a time.

    The session is advanced only as far as its next yield (`peek`): the records of a step, taken
    one by one, or a request for an input, which is then found among the recorded records
    (`next_replayed`)."""

    def __init__(self, session: ReplaySession, version: int) -> None:
        self._session = session
        self._version = version
        self._scrub = scrubber_for(version)
        self._done = False
        self._send: InputRecord | None = None
        self._started = False
        #: the records of the session's latest step, and how many of them were taken
        self._batch: list[dict[str, Any] | bytes] = []
        self._at = 0
        #: the session's request for an input, not taken yet
        self._need: NeedInput | None = None
        #: the step whose lines are compared one by one (`no_run`)
        self._no_run: list[dict[str, Any] | bytes] | None = None

    def close(self) -> None:
        self._session.close()

    def peek(self) -> dict[str, Any] | bytes | NeedInput | None:
        """What the session yields next (None: it has ended), without taking it: a record (a
        machine that raised is a record `{"raised": ...}`; a text effect as its line, a run of
        them as their lines joined), or `NeedInput`."""
        if self._at < len(self._batch):
            return self._batch[self._at]
        while self._need is None:
            if self._done:
                return None
            try:
                if self._started:
                    made = self._session.send(self._send)
                else:
                    self._started = True
                    made = next(self._session)
            except StopIteration:
                self._done = True
                return None
            except Exception as error:  # today's machines cannot take these inputs at all
                self._done = True
                made = [{"raised": f"{type(error).__name__}: {error}"}]
            self._send = None
            if isinstance(made, NeedInput):
                self._need = made
            elif made:
                self._batch, self._at = made, 0
                return made[0]
        return self._need

    def line_run(self) -> list[bytes]:
        """The records the session made next that are lines already (text effects that fit,
        rendered by `_Handover`: runs of them, each its lines joined by `\n`), as many as
        follow one another in its current step; empty when the next is anything else, or when
        a run of this step was not found as it is (`no_run`: its lines are then compared one by
        one)."""
        if self._at >= len(self._batch):
            self.peek()
        batch, at = self._batch, self._at
        if batch is self._no_run:
            return []
        end = at
        while end < len(batch) and type(batch[end]) is bytes:
            end += 1
        return batch[at:end]  # type: ignore[return-value]

    def took_run(self, count: int) -> None:
        """The `count` items `line_run` gave (lines, runs of lines) were found as they are."""
        self._at += count

    def no_run(self) -> None:
        """The run `line_run` gave is not what the file holds next, or a run meets a recorded
        line compared the general way: compare the rest of this step's lines one by one (each
        run comes apart into its lines: the rare way)."""
        rest: list[dict[str, Any] | bytes] = []
        for made in self._batch[self._at :]:
            if type(made) is bytes:
                rest.extend(made.split(b"\n"))
            else:
                rest.append(made)
        self._batch, self._at = rest, 0
        self._no_run = rest

    def takes_line(self, line: bytes) -> bool:
        """Whether the session's next record is `line`, byte for byte, and a record that fits
        at a glance (`fits_at_a_glance`): then it is taken, and the line needs no parsing. (The
        comparison's hot path: one call per line of a long answer.)"""
        if self._at < len(self._batch):
            made = self._batch[self._at]
        else:
            peeked = self.peek()
            if peeked is None or isinstance(peeked, NeedInput):
                return False
            made = peeked
        if isinstance(made, bytes):  # a text effect whose fields fit, as its line
            if made == line:
                self._at += 1
                return True
            return False
        try:
            rendered = orjson.dumps(made)  # what `dumps` writes of JSON values
        except TypeError:  # not JSON values: compared the general way
            return False
        if rendered == line and fits_at_a_glance(made):
            self._at += 1
            return True
        return False

    def take(self) -> None:
        """What `peek` returned was used."""
        if self._at < len(self._batch):
            self._at += 1
        else:
            self._need = None

    def next_replayed(
        self, head: dict[str, Any] | None, item: Input | None, ahead: Iterator[_Read]
    ) -> dict[str, Any] | None:
        """The replay's next record, to compare with the recorded `head` (None at the end of the
        file). When the replay needs an input and `head` is not one, the records diverge here;
        the next recorded input is then found further on (`ahead`) so the report can say what
        the replay made of it. `item` is the input `head` describes (decoded by the reader)."""
        while True:
            made = self.peek()
            if isinstance(made, bytes):  # a line of ours: its JSON, for the general comparison
                if b"\n" in made:  # a run's lines: compared one by one from here
                    self.no_run()
                    made = cast(bytes, self._batch[self._at])
                self.take()
                parsed: dict[str, Any] = loads(made)
                return parsed
            self.take()
            if made is None or not isinstance(made, NeedInput):
                return made
            found: tuple[dict[str, Any], Input] | None = None
            if head is not None and item is not None:
                found = head, item
                head = item = None  # fed once
            elif head is not None:
                found = next(((record, input_) for record, input_ in ahead if input_ is not None), None)
            if found is not None and found[0].get("attempt") == made.attempt:
                record, input_ = found
                self._send = InputRecord(made.attempt, record.get("t"), input_)

    def as_recorded(self, replayed: dict[str, Any]) -> dict[str, Any]:
        """A replayed record as a trace of this version would hold it (scrubbed, JSON types)."""
        rendered = dumps(replayed)
        if self._version == 1 or not is_stream_record(replayed):
            rendered = self._scrub(rendered)
        parsed: dict[str, Any] = loads(rendered)
        return parsed

    def same(self, line: bytes | None, recorded: dict[str, Any], replayed: dict[str, Any]) -> dict[str, Any] | None:
        """None when `replayed` is the `recorded` record (read from `line`); else the replayed
        record as the trace would hold it."""
        rendered = dumps(replayed)
        if line is not None and rendered == line:  # the common case: byte for byte
            return None
        if self._version == 1 or not is_stream_record(replayed):
            rendered = self._scrub(rendered)
            if line is not None and rendered == line:
                return None
        theirs: dict[str, Any] = loads(rendered)
        if equal(recorded, theirs):
            return None
        if self._version >= 2 and _masked_equal(recorded, theirs):
            return None
        return theirs


class _Recorded(Protocol):
    """The recorded records as the comparison reads them: numbered lines (None: records read
    whole before), each then parsed and checked (`read`) or, when it is byte for byte a record
    the replay made that fits at a glance, only counted (`accept`, how many such lines there
    were, once at the end); a run of such lines is taken whole when the file holds it as it is
    (`skip`); `records` counts them all; `finish` checks, after the last line, that the file
    was whole."""

    @property
    def records(self) -> int: ...

    def lines(self) -> Iterator[tuple[int, bytes | None]]: ...

    def read(self, number: int, line: bytes | None) -> _Read: ...

    def accept(self, count: int) -> None: ...

    def skip(self, expected: bytes, count: int) -> bool: ...

    def finish(self) -> None: ...


def _compare(path: str, header: dict[str, Any], version: int, recorded_records: _Recorded) -> ReplayReport:
    """Replay the trace and compare as the lines come.

    A line that is byte for byte what the replay made of a text effect or a transition that
    fits at a glance (`fits_at_a_glance`: every field of it passes the reader's checks) is
    that record: it is counted without being parsed, the common case of a long answer, and a
    run of text effects the file holds as they are is taken in one comparison of bytes. Every
    other line is parsed and checked as the reader does, and compared as JSON."""
    replayer = REPLAYERS.get(header.get("entry"))  # type: ignore[arg-type]
    if replayer is None:
        raise TraceError(f"{path}: no replay for entry {header.get('entry')!r}")
    try:
        session = replayer(header)
    except ValueError as error:  # a header its replayer cannot use
        raise TraceError(f"{path}: {error}") from None
    comparison = _Comparison(session, version)
    divergence: Divergence | None = None
    abandoned: str | None = None
    position = 0
    read, takes_line, skip = recorded_records.read, comparison.takes_line, recorded_records.skip
    accepted = 0  # lines counted without being parsed (`accept`)
    stream = recorded_records.lines()
    ahead = (read(number, line) for number, line in stream)
    try:
        while True:
            if divergence is None and abandoned is None:
                run = comparison.line_run()
                if run:
                    expected = b"\n".join(run)
                    count = expected.count(b"\n") + 1
                    if skip(expected + b"\n", count):  # the run as it is: taken whole
                        comparison.took_run(len(run))
                        position += count
                        continue
                    comparison.no_run()
            following = next(stream, None)
            if following is None:
                break
            number, line = following
            position += 1
            if divergence is not None:
                read(number, line)  # read on: a file that turns out invalid is reported as such
                continue
            if abandoned is not None:  # the recording stopped at its abandoned record
                divergence = Divergence(position, read(number, line)[0], None)
                continue
            if line is not None and takes_line(line):
                accepted += 1
                continue
            recorded, item = read(number, line)
            if recorded.get("kind") == "abandoned":
                abandoned = str(recorded.get("exception", "Exception"))
                comparison.close()
                continue
            replayed = comparison.next_replayed(recorded, item, ahead)
            if replayed is None:
                divergence = Divergence(position, recorded, None)
                continue
            theirs = comparison.same(line, recorded, replayed)
            if theirs is not None:
                divergence = Divergence(position, recorded, theirs)
        if divergence is None and abandoned is None:
            extra = comparison.next_replayed(None, None, iter(()))
            if extra is not None:
                divergence = Divergence(position + 1, None, comparison.as_recorded(extra))
        recorded_records.accept(accepted)
        recorded_records.finish()
    finally:
        comparison.close()
    return ReplayReport(path, recorded_records.records, divergence, abandoned)


class _ReadWhole:
    """The records of a trace already read whole (`Trace`), as the comparison reads records."""

    def __init__(self, trace: Trace) -> None:
        self._trace = trace
        self._kinds = ENTRIES[trace.entry].inputs

    @property
    def records(self) -> int:
        return len(self._trace.records)

    def lines(self) -> Iterator[tuple[int, bytes | None]]:
        return ((index, None) for index in range(len(self._trace.records)))

    def read(self, number: int, line: bytes | None) -> _Read:
        record = self._trace.records[number]
        return record, decode_input(record, self._kinds) if record.get("kind") == "input" else None

    def accept(self, count: int) -> None:
        """No line was compared as it is (there are none): `count` is 0."""

    def skip(self, expected: bytes, count: int) -> bool:
        """There are no lines to find a run in."""
        return False

    def finish(self) -> None:
        """Nothing to check: `read_trace` checked the whole file."""


def replay_trace(trace: Trace) -> ReplayReport:
    """Replay an already read trace and compare it record by record."""
    return _compare(trace.path, trace.header, trace.version, _ReadWhole(trace))


class _ReadLines:
    """A trace file's records as the comparison reads them, from its `TraceReader`; the end of
    the lines is where the reader checks the file is whole."""

    def __init__(self, reader: TraceReader) -> None:
        self._reader = reader
        self.accept = reader.accept
        self.skip = reader.skip

    def read(self, number: int, line: bytes | None) -> _Read:
        assert line is not None  # every line of a file is there
        return self._reader.read(number, line)

    @property
    def records(self) -> int:
        return self._reader.records

    def lines(self) -> Iterator[tuple[int, bytes | None]]:
        return self._reader.lines()

    def finish(self) -> None:
        self._reader.finish()


def replay(path: str | os.PathLike[str]) -> ReplayReport:
    """Read a trace file and replay it as it is read (raises `TraceError` for an unreadable or
    invalid file)."""
    with TraceReader(path) as reader:
        return _compare(reader.path, reader.header, reader.version, _ReadLines(reader))
