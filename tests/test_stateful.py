"""Stateful test: the stream-attempt machine, fed one input at a time, against the reference model.

Hypothesis drives a `StreamAttempt` (the real machine, as the drivers build it) with frames,
faults and interrupts chosen step by step, and feeds the same inputs to
`engine.fuzz.reference.ReferenceAttempt`, the contract's rules stated apart from the machine. After
every step the two must agree on the state, the reason an attempt ended and the text delivered
(answer text, commentary, refusals, reasoning),
and the machine's own records must obey the rules: only transitions of its table, one final
state per attempt and nothing after it, at most one first delta, no answer text after a tool
call. When an attempt has ended, a rule may open the next one on the same delivery ledger, as a
retry does, so catching up with already delivered text is exercised too.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.fuzz.reference import ReferenceAttempt, ReferenceLedger
from machines.records import (
    Effect,
    EndOfStream,
    HttpError,
    IdleTimeout,
    Interrupt,
    SseEvent,
    Stall,
    Transition,
    TransportFault,
    TurnPolicy,
)
from machines.stream_attempt import FINAL, TABLE, DeliveryLedger, StreamAttempt

ALLOWED = {(source, row.label, row.dest) for row in TABLE.rows for source in row.source}

INDEXES = st.integers(0, 2)
TEXTS = st.sampled_from(["Hi", " there", "é", "東", ""])
CODES = st.sampled_from(["server_error", "rate_limit_exceeded", "insufficient_quota"])
ABSENT = object()  # a message item without a `phase`
PHASES = st.sampled_from([ABSENT, "commentary", "final_answer", None, 3])


class Sink:
    """The machine's decisions, as the event log would keep them."""

    def __init__(self) -> None:
        self.transitions: list[tuple[int, str, str, str]] = []
        self.effects: list[tuple[str, int, Any]] = []

    def take(self, decisions: list[Transition | Effect]) -> None:
        for d in decisions:
            if isinstance(d, Transition):
                self.transitions.append((d.attempt, d.source, d.trigger, d.dest))
            else:
                self.effects.append((d.kind, d.attempt, d.data))


class StreamAttemptAgainstReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sink = Sink()
        self.ledger = DeliveryLedger()
        self.reference_ledger = ReferenceLedger()
        self.number = 0
        self.hands_over = False
        self.retry_codes: frozenset[str] = frozenset()
        self.tool_seen_at: int | None = None  # effects count when this attempt saw a tool frame
        self.ended_with: str | None = None

    @initialize(hands_over=st.booleans(),
                retry_codes=st.sampled_from([frozenset(), frozenset({"server_error"})]))
    def open_first_attempt(self, hands_over: bool, retry_codes: frozenset[str]) -> None:
        self.hands_over = hands_over
        self.retry_codes = retry_codes
        self._open()

    def _open(self) -> None:
        self.number += 1
        self.machine = StreamAttempt(
            self.number, "stream", ledger=self.ledger,
            hands_over_to_fallback=self.hands_over, retry_failed_codes=self.retry_codes,
        )
        self.model = ReferenceAttempt(
            self.number, "stream", hands_over=self.hands_over, ledger=self.reference_ledger,
            policy=TurnPolicy(retry_failed_codes=self.retry_codes),
        )
        self.tool_seen_at = None
        self.ended_with = None

    # -- inputs ------------------------------------------------------------------------------
    def _event(self, payload: Any, name: str = "message") -> None:
        data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
        self.sink.take(self.machine.receive(SseEvent(name, data)))
        self.model.event(name, data)
        if self.machine.tool_call_seen and self.tool_seen_at is None:
            self.tool_seen_at = len(self.sink.effects)

    @rule()
    def created(self) -> None:
        self._event({"type": "response.created", "response": {"status": "in_progress"}})

    @rule()
    def in_progress(self) -> None:
        self._event({"type": "response.in_progress", "response": {"status": "in_progress"}})

    @rule(index=INDEXES, delta=TEXTS)
    def text_delta(self, index: int, delta: str) -> None:
        self._event({"type": "response.output_text.delta", "output_index": index,
                     "content_index": 0, "delta": delta})

    @rule(index=INDEXES, delta=TEXTS)
    def reasoning_delta(self, index: int, delta: str) -> None:
        self._event({"type": "response.reasoning_summary_text.delta", "output_index": index,
                     "summary_index": 0, "delta": delta})

    @rule(index=INDEXES, done=st.booleans(), phase=PHASES)
    def message_item(self, index: int, done: bool, phase: Any) -> None:
        kind = "response.output_item.done" if done else "response.output_item.added"
        labelled = {} if phase is ABSENT else {"phase": phase}
        self._event({"type": kind, "output_index": index,
                     "item": {"type": "message", "id": f"msg_{index}", "role": "assistant",
                              "content": [{"type": "output_text", "text": "Hi"}], **labelled}})

    @rule(index=INDEXES, delta=TEXTS, done=st.booleans())
    def refusal_frame(self, index: int, delta: str, done: bool) -> None:
        field = {"refusal": delta} if done else {"delta": delta}
        self._event({"type": f"response.refusal.{'done' if done else 'delta'}",
                     "output_index": index, "content_index": 0, **field})

    @rule(index=INDEXES, done=st.booleans())
    def function_call_item(self, index: int, done: bool) -> None:
        kind = "response.output_item.done" if done else "response.output_item.added"
        self._event({"type": kind, "output_index": index,
                     "item": {"type": "function_call", "id": f"fc_{index}", "call_id": f"call_{index}",
                              "name": "get_weather", "arguments": "{}" if done else ""}})

    @rule(index=INDEXES, delta=st.sampled_from(['{"ci', 'ty":"P"}', ""]))
    def arguments_delta(self, index: int, delta: str) -> None:
        self._event({"type": "response.function_call_arguments.delta", "output_index": index,
                     "delta": delta})

    @rule(index=INDEXES)
    def arguments_done(self, index: int) -> None:
        self._event({"type": "response.function_call_arguments.done", "output_index": index,
                     "arguments": "{}"})

    @rule()
    def some_other_function_call_frame(self) -> None:
        self._event({"type": "response.function_call.in_progress"})

    @rule()
    def completed(self) -> None:
        self._event({"type": "response.completed", "response": {"status": "completed", "output": []}})

    @rule()
    def incomplete(self) -> None:
        self._event({"type": "response.incomplete",
                     "response": {"status": "incomplete", "output": None}})

    @rule(code=CODES)
    def failed(self, code: str) -> None:
        self._event({"type": "response.failed", "response": {
            "status": "failed", "error": {"code": code, "message": f"it failed: {code}"}}})

    @rule(nested=st.booleans())
    def error_frame(self, nested: bool) -> None:
        error = {"code": "permission_denied", "message": "not entitled"}
        self._event({"type": "error", "error": error} if nested else {"type": "error", **error})

    @rule(frame=st.sampled_from([
        ('{"type":"codex.rate_limits","rate_limits":{}}', "message"),
        ('{"type":"codex.unknown"}', "message"),
        ("[DONE]", "message"),
        ("{not json", "response.output_text.delta"),
        ('{"no_type":1}', "response.completed"),
        ("[1]", "error"),
    ]))
    def prelude_or_noise(self, frame: tuple[str, str]) -> None:
        self._event(frame[0], frame[1])

    @rule(step=st.sampled_from([TransportFault("drop"), TransportFault("read_timeout"), TransportFault("connect_error"),
                                EndOfStream(), Stall(5.0), Interrupt(), HttpError(503)]))
    def the_body_ends(self, step: Any) -> None:
        if isinstance(step, TransportFault):
            item: Any = TransportFault(step.kind)
        elif isinstance(step, EndOfStream):
            item = EndOfStream()
        elif isinstance(step, Stall):
            item = IdleTimeout(step.seconds)
        elif isinstance(step, Interrupt):
            item = Interrupt()
        else:
            item = HttpError(step.status, None)
        self.sink.take(self.machine.receive(item))
        self.model.end(step)

    @precondition(lambda self: self.machine.state in FINAL and self.number < 4)
    @rule()
    def retry_on_the_same_ledger(self) -> None:
        self._open()

    # -- after every step ----------------------------------------------------------------------
    @invariant()
    def same_state_as_the_reference(self) -> None:
        assert self.machine.state == self.model.state
        if self.model.state in FINAL:
            assert self.machine.reason == str(self.model.reason)

    @invariant()
    def same_text_delivered_as_the_reference(self) -> None:
        for channel in ("text", "reasoning", "commentary", "refusal"):
            mine = [d for k, a, d in self.sink.effects
                    if k == f"{channel}_delta" and a == self.number]
            assert mine == getattr(self.model, f"delivered_{channel}"), channel

    @invariant()
    def first_delta_at_most_once_and_before_any_text_whatever_the_routing(self) -> None:
        for not_first, commentary_is_text in (("commentary_apart", True),
                                              ("commentary_joined", False)):
            texts = ("text_delta", "commentary_delta") if commentary_is_text else ("text_delta",)
            kinds = [k for k, _, d in self.sink.effects
                     if k in texts or (k == "first_delta" and d != not_first)]
            assert kinds.count("first_delta") <= 1
            if len(kinds) > kinds.count("first_delta"):
                assert kinds[0] == "first_delta"

    @invariant()
    def no_text_after_a_tool_call(self) -> None:
        if self.tool_seen_at is not None:
            later = self.sink.effects[self.tool_seen_at:]
            assert not [e for e in later if e[0] in ("text_delta", "commentary_delta")
                        and e[1] == self.number]

    @invariant()
    def transitions_follow_the_table_and_end_once(self) -> None:
        mine = [t for t in self.sink.transitions if t[0] == self.number]
        state = "awaiting_created"
        for _, source, trigger, dest in mine:
            assert (source, trigger, dest) in ALLOWED
            assert source == state and source not in FINAL
            state = dest
        assert state == self.machine.state
        assert sum(1 for t in mine if t[3] in FINAL) <= 1


# The profile's example budget (tests/conftest.py), with enough steps for a retry or two.
StreamAttemptAgainstReference.TestCase.settings = settings(settings(), stateful_step_count=40)
TestStreamAttemptAgainstReference = StreamAttemptAgainstReference.TestCase
