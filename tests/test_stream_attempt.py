"""The stream-attempt machine fed input records by hand, its decisions kept in a list: every row of
its TABLE, what it ignores, how it routes text, and how it rebuilds output."""

from __future__ import annotations

import email.utils
import weakref
from typing import Any

import pytest

from engine.simulator.shapes import (
    completed,
    created,
    function_call,
    in_progress,
    incomplete,
    output_items,
    failed,
    rate_limits_frame,
    text_message,
)
from machines.records import (
    AttemptKind,
    EndOfStream,
    EventTooLarge,
    HttpError,
    IdleTimeout,
    InputKind,
    Interrupt,
    MachineInput,
    Reason,
    ReasonCode,
    SseEvent,
    TransportFault,
    TurnTimeout,
)
from machines.stream_attempt import (
    FINAL,
    TABLE,
    DeliveryLedger,
    Ending,
    State,
    StreamAttempt,
    Trigger,
    demanded_wait_s,
    provider_error,
)
from transitions import MachineError

from support import Decisions, sse


#: Where each attempt's decisions are kept (`feed` appends to it).
_DECISIONS: weakref.WeakKeyDictionary[StreamAttempt, Decisions] = weakref.WeakKeyDictionary()


def make(
    *, hands_over: bool = False, retry_codes: frozenset[str] = frozenset(),
    ledger: DeliveryLedger | None = None, number: int = 1, http_retry_left: bool = False,
    kind: AttemptKind = "stream", tracks_sequence: bool = False,
) -> tuple[StreamAttempt, Decisions]:
    attempt = StreamAttempt(
        number, kind, ledger=ledger or DeliveryLedger(),
        hands_over_to_fallback=hands_over, retry_failed_codes=retry_codes,
        http_retry_left=http_retry_left, tracks_sequence=tracks_sequence,
    )
    sink = _DECISIONS[attempt] = Decisions()
    return attempt, sink


def feed(attempt: StreamAttempt, *items: MachineInput | dict[str, Any] | list[dict[str, Any]]) -> None:
    """Feed each input; keep the decisions `receive()` returns."""
    for item in items:
        for one in item if isinstance(item, list) else [item]:
            _DECISIONS[attempt].take(attempt.receive(sse(one) if isinstance(one, dict) else one))


def delta(text: str, index: int = 0) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "output_index": index, "content_index": 0,
            "item_id": f"msg_{index:02d}", "delta": text}


def call_added(index: int) -> dict[str, Any]:
    return function_call("f", "{}", output_index=index)[0]


def call_done(index: int) -> dict[str, Any]:
    return function_call("f", "{}", output_index=index)[-1]


def shell(index: int, *, done: bool) -> dict[str, Any]:
    """A shell call with call_id `call_shell` at `index`, announced or finished."""
    item = {"id": "sh_1", "type": "shell_call", "call_id": "call_shell",
            "action": {"commands": ["ls"]}, "status": "completed" if done else "in_progress"}
    kind = "done" if done else "added"
    return {"type": f"response.output_item.{kind}", "output_index": index, "item": item}


def shell_output(index: int) -> dict[str, Any]:
    """The output item that shows the `call_shell` shell call was run by the server."""
    item = {"id": "sho_1", "type": "shell_call_output", "call_id": "call_shell", "output": [],
            "status": "completed"}
    return {"type": "response.output_item.added", "output_index": index, "item": item}


# -- every row of the table -----------------------------------------------------------------------

#: Inputs that drive a fresh attempt into each live state.
REACH: dict[str, list[Any]] = {
    State.AWAITING_CREATED: [],
    State.STREAMING: [created()],
    State.TOOL_CALL: [created(), call_added(0)],
}

#: The `response.failed` code the table rows are fired with: retryable exactly when the row's
#: guard asks for it (the policy lists it), so which codes are retryable by default is the
#: business of the failure tests below, not of every row's.
FAILURE_CODE = "processing_error"

#: The input that fires each trigger.
FIRE: dict[str, Any] = {
    "created": created(),
    "in_progress": in_progress(),
    "content": delta("Hi"),
    "commentary": {"type": "response.output_item.added", "output_index": 4,
                   "item": {"id": "msg_04", "type": "message", "role": "assistant",
                            "status": "in_progress", "content": [], "phase": "commentary"}},
    "refusal": {"type": "response.refusal.delta", "output_index": 4, "content_index": 0,
                "item_id": "msg_04", "delta": "I can't help with that."},
    "tool_call_started": call_added(3),
    "tool_calls_done": call_done(0),
    "tool_call_withdrawn": shell_output(5),
    "completed": completed([]),
    "incomplete": incomplete("max_output_tokens"),
    "failed": failed(FAILURE_CODE),
    "error_frame": {"type": "error", "code": "x", "message": "no", "param": None},
    "http_error": HttpError(500, {"error": {"message": "boom", "type": "server_error", "code": None}}),
    "drop": TransportFault("drop", "RemoteProtocolError"),
    "read_timeout": TransportFault("read_timeout", "ReadTimeout"),
    "connect_error": TransportFault("connect_error", "ConnectError"),
    "idle_timeout": IdleTimeout(0.3),
    "eof": EndOfStream(),
    "interrupt": Interrupt(),
    "event_too_large": EventTooLarge(64),
    "turn_timeout": TurnTimeout(30.0),
    # a text delta whose sequence number (7) is not above the last one seen (`SEEN_7`)
    "stale_event": {**delta("again"), "sequence_number": 7},
}

#: A frame every live state absorbs, carrying sequence number 7.
SEEN_7: dict[str, Any] = {"type": "response.queued", "sequence_number": 7}

#: The `http_error` that a resume is refused with.
REFUSED = HttpError(404, {"error": {"message": "No response found", "type": "invalid_request_error",
                                    "code": None}})


def _rows() -> list[tuple[str, str, str | None, tuple[str, ...]]]:
    """(trigger, source, dest, guard names) for every row and each of its sources, in order."""
    rows: list[tuple[str, str, str | None, tuple[str, ...]]] = []
    for row in TABLE.rows:
        conditions = tuple(guard.__name__ for guard in row.guards)
        rows.extend(
            (row.trigger, source, row.dest, conditions)
            for source in sorted(row.source, key=list(State).index)
        )
    return rows


ROWS = _rows()

#: For each `tool_call_withdrawn` row: a path to its source where the shell call `call_shell` is
#: counted as the client's and the rows above it do not fire when its output item arrives.
WITHDRAWN_REACH: dict[tuple[str, str | None, tuple[str, ...]], list[Any]] = {
    (State.STREAMING, State.STREAMING, ("no_client_call_left",)): [
        created(), shell(0, done=False), shell(0, done=True)],
    (State.TOOL_CALL, State.STREAMING, ("no_client_call_left",)): [created(), shell(0, done=False)],
    (State.TOOL_CALL, State.STREAMING, ("every_call_done",)): [
        created(), call_added(0), call_done(0), shell(1, done=False)],
    (State.STREAMING, None, ()): [created(), call_added(0), call_done(0), shell(1, done=False),
                                  shell(1, done=True)],
    (State.TOOL_CALL, None, ()): [created(), call_added(0), shell(1, done=False)],
}


def test_fire_covers_every_trigger_of_the_table() -> None:
    assert {trigger for trigger, *_ in ROWS} == set(FIRE)
    assert {source for _, source, _, _ in ROWS} <= set(REACH)
    assert set(State) == set(REACH) | FINAL


@pytest.mark.parametrize(
    ("trigger", "source", "dest", "conditions"), ROWS,
    ids=[f"{t}:{s}->{d}{'?' if c else ''}" for t, s, d, c in ROWS],
)
def test_table_row(trigger: str, source: str, dest: str | None, conditions: tuple[str, ...]) -> None:
    """Each row fires from its source with its conditions met (and the rows above it not); a
    `dest: None` row (a stay) records nothing and keeps the state."""
    attempt, sink = make(
        hands_over="hands_over_to_fallback" in conditions,
        retry_codes=frozenset({FAILURE_CODE}) if "failure_is_retryable" in conditions else frozenset(),
        http_retry_left="http_retry_left" in conditions,
        kind="resume" if "resume_is_refused" in conditions else "stream",
        tracks_sequence=trigger == "stale_event",
    )
    reach = REACH[source]
    fire = REFUSED if "resume_is_refused" in conditions else FIRE[trigger]
    if trigger == "stale_event":
        reach = [*reach, SEEN_7]
    if trigger == "tool_calls_done" and dest is None:
        reach = [*reach, call_added(1)]  # a second call still open: not every call is done
    if trigger == "tool_call_withdrawn":
        reach = WITHDRAWN_REACH[(source, dest, conditions)]
    feed(attempt, *reach)
    assert attempt.state == source
    before = len(sink.transitions)
    feed(attempt, fire)
    if dest is None:
        assert sink.transitions[before:] == []
        assert attempt.state == source
    else:
        assert sink.transitions[before:] == [(source, dest, trigger)]
        assert attempt.state == dest


def test_a_trigger_the_table_has_no_row_for_raises() -> None:
    """An impossible transition is a bug that surfaces, never a silently ignored call."""
    attempt, _ = make()
    feed(attempt, created())
    with pytest.raises(MachineError):
        TABLE.feed(attempt, Trigger.TOOL_CALLS_DONE)  # only a tool_call state has rows for it


def test_the_final_row_carries_the_outcome_and_the_reason() -> None:
    attempt, _ = make(retry_codes=frozenset({"server_error"}))
    feed(attempt, created(), failed("server_error"))
    assert attempt.ending == Ending(State.RETIRE, Trigger.FAILED, "failed", "stream",
                                   Reason(ReasonCode.RETRYABLE_FAILURE, failure_code="server_error"))
    assert attempt.reason == "failed:server_error"
    attempt, _ = make()
    feed(attempt, HttpError(429))
    assert attempt.ending == Ending(State.TERMINAL, InputKind.HTTP_ERROR, "error", None,
                                   Reason(ReasonCode.HTTP_STATUS, status=429))
    assert attempt.reason == "http_429"
    attempt, _ = make(http_retry_left=True)
    feed(attempt, HttpError(429, None, {"retry-after": "3"}))
    assert attempt.ending == Ending(State.RETIRE, InputKind.HTTP_ERROR, "error", "http",
                                   Reason(ReasonCode.HTTP_STATUS, status=429), 3.0)
    attempt, _ = make()
    feed(attempt, created(), Interrupt())
    assert attempt.ending == Ending(State.RETIRE, InputKind.INTERRUPT, "interrupted", None,
                                   Reason(ReasonCode.INTERRUPTED))
    assert attempt.reason == "interrupted"


@pytest.mark.parametrize("final", sorted(FINAL))
def test_final_states_ignore_everything(final: str) -> None:
    reach = {
        State.TERMINAL: [created(), completed([])],
        State.FALLBACK: [created(), TransportFault("drop")],
        State.RETIRE: [created(), TransportFault("drop")],
    }[final]
    attempt, sink = make(hands_over=final == State.FALLBACK)
    feed(attempt, *reach)
    assert attempt.state == final
    records = list(sink.records)
    events = [created(), delta("late"), call_added(1), completed([]), failed("server_error"),
              {"type": "error", "message": "late", "code": None}]
    feed(attempt, *events, HttpError(500), TransportFault("drop"), IdleTimeout(1.0),
         EndOfStream(), Interrupt())
    assert sink.records == records  # no transition, no effect
    assert attempt.state == final
    assert attempt.ignored == len(events)


# -- state paths ------------------------------------------------------------------------------


def test_tool_call_and_streaming_alternate() -> None:
    attempt, sink = make()
    feed(attempt, created(), delta("a"), call_added(1), call_done(1), delta("b", 2),
         call_added(3), call_done(3), completed([]))
    assert sink.transitions == [
        (State.AWAITING_CREATED, State.STREAMING, "created"),
        (State.STREAMING, State.TOOL_CALL, "tool_call_started"),
        (State.TOOL_CALL, State.STREAMING, "tool_calls_done"),
        (State.STREAMING, State.TOOL_CALL, "tool_call_started"),
        (State.TOOL_CALL, State.STREAMING, "tool_calls_done"),
        (State.STREAMING, State.TERMINAL, "completed"),
    ]
    assert sink.effects("text_delta") == ["a"]  # text after a tool call is kept, not delivered


def test_parallel_calls_return_to_streaming_after_the_last_done() -> None:
    attempt, sink = make()
    feed(attempt, created(), call_added(0), call_added(1), call_done(0))
    assert attempt.state == State.TOOL_CALL
    feed(attempt, call_done(1))
    assert attempt.state == State.STREAMING
    assert sink.transitions.count((State.STREAMING, State.TOOL_CALL, "tool_call_started")) == 1


def test_unknown_function_call_frame_counts_as_a_tool_call() -> None:
    attempt, sink = make()
    feed(attempt, created(), {"type": "response.custom_function_call.progress", "output_index": 0})
    assert attempt.state == State.TOOL_CALL and attempt.tool_call_seen


def test_a_second_created_or_in_progress_changes_nothing() -> None:
    attempt, sink = make()
    feed(attempt, in_progress(), created(), in_progress(), delta("x"))
    assert sink.transitions == [(State.AWAITING_CREATED, State.STREAMING, "in_progress")]


@pytest.mark.parametrize(
    "first",
    [delta("x"), text_message("x")[0], {"type": "response.reasoning_summary_text.delta",
                                        "output_index": 0, "summary_index": 0, "delta": "r"}],
    ids=["text-delta", "item-added", "reasoning-delta"],
)
def test_content_without_any_lifecycle_frame_starts_streaming(first: dict[str, Any]) -> None:
    attempt, sink = make()
    feed(attempt, first)
    assert sink.transitions == [(State.AWAITING_CREATED, State.STREAMING, "content")]


def test_prelude_frames_are_absorbed_before_created() -> None:
    attempt, sink = make()
    frames = [
        {"type": "response.queued", "response": {}},
        rate_limits_frame()[0],
        {"type": "codex.response.metadata", "headers": {}},
    ]
    feed(attempt, *frames)
    feed(attempt, SseEvent("message", "[DONE]"))
    feed(attempt, SseEvent("message", "{not json"))
    feed(attempt, SseEvent("message", "[1, 2]"))
    assert attempt.state == State.AWAITING_CREATED
    assert sink.transitions == []
    assert sink.effects("rate_limits") == rate_limits_frame()
    assert attempt.rate_limits == rate_limits_frame()
    assert attempt.undecodable == 2  # "[DONE]" is not counted as undecodable
    feed(attempt, created())
    assert attempt.state == State.STREAMING


def test_event_name_stands_in_for_a_missing_type() -> None:
    attempt, sink = make()
    feed(attempt, SseEvent("response.created", "{}"))
    feed(attempt, SseEvent("response.output_text.delta", '{"delta": "hi"}'))
    assert attempt.state == State.STREAMING
    assert sink.effects("text_delta") == ["hi"]


def test_error_without_type_is_an_error_frame() -> None:
    attempt, sink = make()
    feed(attempt, SseEvent("message", '{"error": {"message": "nope", "code": "c", "type": "t"}}'))
    assert attempt.state == State.TERMINAL
    assert attempt.error == {"message": "nope", "code": "c", "type": "t"}


def test_receive_rejects_what_is_not_an_input() -> None:
    attempt, _ = make()
    with pytest.raises(TypeError, match="not a machine input: str"):
        attempt.receive("data: x")  # type: ignore[arg-type]


# -- failures and their words ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("hands_over", "codes", "state", "reason"),
    [
        (False, frozenset(), State.TERMINAL, "failed"),
        (False, frozenset({"server_error"}), State.RETIRE, "failed:server_error"),
        (True, frozenset({"server_error"}), State.FALLBACK, "failed:server_error"),
        (True, frozenset({"rate_limit_exceeded"}), State.TERMINAL, "failed"),
    ],
)
def test_failed_is_an_outcome_unless_its_code_is_retryable(
    hands_over: bool, codes: frozenset[str], state: str, reason: str
) -> None:
    attempt, _ = make(hands_over=hands_over, retry_codes=codes)
    feed(attempt, created(), failed("server_error", "Try again."))
    assert (attempt.state, attempt.reason) == (state, reason)
    assert attempt.error == {"code": "server_error", "message": "Try again.", "type": "response.failed"}


def test_failed_without_an_error_object_still_has_message_code_type() -> None:
    attempt, _ = make()
    feed(attempt, created(), {"type": "response.failed", "response": {"status": "failed", "error": None}})
    assert attempt.error == {"message": None, "code": None, "type": "response.failed"}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"type": "error", "code": "c", "message": "m", "param": "p", "sequence_number": 0},
         {"type": "error", "code": "c", "message": "m", "param": "p"}),
        ({"type": "error", "error": {"type": "t", "code": "c", "message": "m"}},
         {"type": "t", "code": "c", "message": "m"}),
        ({"type": "error", "error": {"message": "m"}}, {"type": "error", "code": None, "message": "m"}),
    ],
    ids=["top-level", "nested", "nested-partial"],
)
def test_error_frame_keeps_the_providers_words(payload: dict[str, Any], expected: dict[str, Any]) -> None:
    attempt, _ = make()
    feed(attempt, payload)
    assert attempt.error == expected
    assert provider_error(payload, "error") == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"message": "m", "type": "t", "code": "c", "param": None}},
         {"message": "m", "type": "t", "code": "c", "param": None, "status": 429}),
        ({"message": "m"}, {"message": "m", "code": None, "type": "http_error", "status": 429}),
        ("Too Many Requests", {"message": "Too Many Requests", "code": None, "type": "http_error", "status": 429}),
        (None, {"message": "HTTP 429", "code": None, "type": "http_error", "status": 429}),
        ("", {"message": "HTTP 429", "code": None, "type": "http_error", "status": 429}),
    ],
    ids=["openai-shape", "flat", "text", "none", "empty"],
)
def test_http_error_words(body: Any, expected: dict[str, Any]) -> None:
    attempt, _ = make()
    feed(attempt, HttpError(429, body))
    assert attempt.state == State.TERMINAL and attempt.reason == "http_429"
    assert attempt.error == expected


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (TransportFault("drop"), "drop"),
        (TransportFault("read_timeout"), "read_timeout"),
        (TransportFault("connect_error"), "connect_error"),
        (IdleTimeout(0.5), "idle_timeout"),
        (EndOfStream(), "eof"),
        (Interrupt(), "interrupted"),
    ],
)
def test_retire_reasons(item: MachineInput, reason: str) -> None:
    attempt, _ = make()
    feed(attempt, created(), delta("partial"), item)
    assert (attempt.state, attempt.reason) == (State.RETIRE, reason)
    assert attempt.final_response() is None
    assert attempt.partial_items()[0]["content"][0]["text"] == "partial"


# -- delivery ---------------------------------------------------------------------------------


def test_first_delta_precedes_the_first_text_only() -> None:
    attempt, sink = make()
    feed(attempt, created(), delta("a"), delta(""), delta("b"))
    kinds = [(r.kind, r.data) for r in sink.records if not hasattr(r, "source")]
    assert kinds == [("first_delta", None), ("text_delta", "a"), ("text_delta", "b")]


def test_reasoning_is_delivered_on_its_own_channel() -> None:
    attempt, sink = make()
    feed(attempt, created(),
         {"type": "response.reasoning_text.delta", "output_index": 0, "content_index": 0, "delta": "r1"},
         {"type": "response.reasoning_summary_text.delta", "output_index": 0, "summary_index": 1, "delta": "r2"},
         delta("t", 1))
    assert sink.effects("reasoning_delta") == ["r1", "r2"]
    assert sink.effects("text_delta") == ["t"]
    assert len(sink.effects("first_delta")) == 1


def _second_attempt(ledger: DeliveryLedger) -> tuple[StreamAttempt, Decisions]:
    return make(ledger=ledger, number=2)


def test_a_retry_repeating_delivered_text_delivers_only_the_rest() -> None:
    ledger = DeliveryLedger()
    first, sink1 = make(ledger=ledger)
    feed(first, created(), delta("Hello "), delta("wor"), TransportFault("drop"))
    second, sink2 = _second_attempt(ledger)
    feed(second, created(), delta("Hel"), delta("lo w"), delta("orld"), delta("!"))
    assert sink1.effects("text_delta") == ["Hello ", "wor"]
    assert sink2.effects("text_delta") == ["ld", "!"]
    assert sink2.effects("first_delta") == []
    assert ledger.delivered("text") == "Hello world!"


def test_a_retry_saying_something_else_delivers_nothing_more() -> None:
    ledger = DeliveryLedger()
    first, _ = make(ledger=ledger)
    feed(first, created(), delta("Hello "), TransportFault("drop"))
    second, sink2 = _second_attempt(ledger)
    feed(second, created(), delta("Goodbye"), delta(" and more"), completed([]))
    assert sink2.effects("text_delta") == []
    assert ledger.delivered("text") == "Hello "
    # the attempt keeps its own text for the result
    assert second.final_response()["output"][0]["content"][0]["text"] == "Goodbye and more"


# -- output assembly ----------------------------------------------------------------------------


def test_backfilled_output_follows_output_index_not_arrival() -> None:
    second = text_message("World", deltas=2, output_index=1)
    first = text_message("Hello ", deltas=2, output_index=0)
    attempt, _ = make()
    feed(attempt, created(), second, first, completed([]))
    output = attempt.final_response()["output"]
    assert output == output_items(first, second)
    assert [item["id"] for item in output] == ["msg_00_sim", "msg_01_sim"]


def test_partial_items_follow_output_index_when_nothing_is_done() -> None:
    attempt, _ = make()
    feed(attempt, created(), delta("B", 2), delta("A", 0), call_added(1),
         {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": '{"a":'},
         {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "1}"},
         TransportFault("drop"))
    items = attempt.partial_items()
    assert [item["type"] for item in items] == ["message", "function_call", "message"]
    assert items[0]["content"][0]["text"] == "A" and items[2]["content"][0]["text"] == "B"
    assert items[1]["arguments"] == '{"a":1}' and items[1]["status"] == "incomplete"


def test_output_sent_by_the_server_is_used_as_is() -> None:
    message = text_message("streamed", deltas=1)
    sent = output_items(text_message("authoritative", deltas=1))
    attempt, _ = make()
    feed(attempt, created(), message, completed(sent))
    assert attempt.final_response()["output"] == sent


def test_null_output_is_backfilled_from_deltas_without_any_item_event() -> None:
    attempt, _ = make()
    feed(attempt, created(), delta("Hi "), delta("there"), completed(None))
    [item] = attempt.final_response()["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"][0]["text"] == "Hi there"


# -- the wait an HTTP error demands ---------------------------------------------------------------


def test_retry_after_ms_wins_over_retry_after_which_wins_over_the_words() -> None:
    words = {"error": {"message": "Please try again in 250ms.", "code": "rate_limit_exceeded"}}
    assert demanded_wait_s(HttpError(429, words)) == 0.25
    assert demanded_wait_s(HttpError(429, words, {"retry-after": "2"})) == 2.0
    assert demanded_wait_s(HttpError(429, words, {"retry-after": "2", "retry-after-ms": "1500"})) == 1.5
    assert demanded_wait_s(HttpError(429, {"error": {"message": "no hint"}})) is None


def test_an_http_date_is_measured_from_when_the_answer_came() -> None:
    received = 1_795_000_000.0  # the driver's wall clock when the 503 arrived
    date = email.utils.formatdate(received + 10, usegmt=True)
    assert demanded_wait_s(HttpError(503, None, {"retry-after": date}, received)) == 10.0
    assert demanded_wait_s(HttpError(503, None, {"retry-after": date})) is None  # no clock reading
    assert demanded_wait_s(HttpError(503, None, {"retry-after": "soon"}, received)) is None
    assert demanded_wait_s(HttpError(503, None, {"retry-after": "-3"}, received)) is None


@pytest.mark.parametrize(
    "headers",
    [{"retry-after": "9" * 400}, {"retry-after-ms": "9" * 400}, {"retry-after": "1" + "0" * 320}],
    ids=["retry-after 400 digits", "retry-after-ms 400 digits", "retry-after 1e320"],
)
def test_a_wait_too_large_to_represent_is_longer_than_any_limit(headers: dict[str, str]) -> None:
    """`Retry-After` of hundreds of digits reads as infinity: it is a wait longer than
    `max_retry_wait_s`, never no wait at all, so the turn ends with that error instead of
    retrying at once, even when the policy's limit is itself unbounded."""
    assert demanded_wait_s(HttpError(429, None, headers)) == float("inf")
    for limit in (60.0, float("inf")):
        attempt = StreamAttempt(1, "stream", ledger=DeliveryLedger(), http_retry_left=True,
                                max_retry_wait_s=limit)
        attempt.receive(HttpError(429, None, headers))
        assert (attempt.state, attempt.reason) == (State.TERMINAL, "http_429")
        assert attempt.ending is not None and attempt.ending.retry is None
    # garbage and negative waits still say nothing: the back-off applies
    assert demanded_wait_s(HttpError(429, None, {"retry-after": "nan"})) is None
    assert demanded_wait_s(HttpError(429, None, {"retry-after-ms": "-1" + "0" * 400})) is None
