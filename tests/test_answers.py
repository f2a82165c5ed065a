"""What an answer is made of (contract v3): commentary, the final answer and refusals, each on its
own channel, over real HTTP (the openai client against the loopback simulator) and through
`engine.consume`; nothing delivered twice across retries, resumes and the fallback; bad data
never raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

import engine
from engine.log.eventlog import EventLog
from engine.simulator import shapes
from engine.simulator.replies import Script
from engine.simulator.shapes import (
    SHAPES,
    assemble,
    completed,
    created,
    encode_part,
    output_items,
    refusal_message,
    split_text,
    text_message,
    to_reply,
    without_item_added,
)
from machines.records import Effect, TransportFault

from support import run_over_http, trace_lines

PREAMBLE = shapes._PREAMBLE
ANSWER = shapes._ANSWER
REFUSAL = shapes._REFUSAL
BEGUN = shapes._BEGUN_ANSWER


class Heard:
    """Everything the callbacks were told, in one ordered list. `apart`: the caller has a
    commentary callback; `refusals`: a refusal callback."""

    def __init__(self, *, apart: bool = True, refusals: bool = True) -> None:
        self.events: list[tuple[str, Any]] = []
        self.apart = apart
        self.refusals = refusals

    def callbacks(self) -> engine.Callbacks:
        note = self.events.append
        return engine.Callbacks(
            on_first_delta=lambda: note(("first", None)),
            on_text_delta=lambda s: note(("text", s)),
            on_reasoning_delta=lambda s: note(("reasoning", s)),
            on_commentary_delta=(lambda s: note(("commentary", s))) if self.apart else None,
            on_refusal_delta=(lambda s: note(("refusal", s))) if self.refusals else None,
        )

    def joined(self, kind: str) -> str:
        return "".join(value for k, value in self.events if k == kind)

    def kinds(self) -> list[str]:
        """The kinds heard, each run of one kind once."""
        out: list[str] = []
        for kind, _ in self.events:
            if not out or out[-1] != kind:
                out.append(kind)
        return out


def _phases(result: engine.TurnResult) -> list[tuple[str, Any]]:
    assert result.response is not None
    return [(item["type"], item.get("phase")) for item in result.response["output"]]


# -- commentary ----------------------------------------------------------------------------------


def test_commentary_reaches_its_own_callback_and_never_the_answers(tmp_path: Path) -> None:
    heard = Heard()
    run = run_over_http(SHAPES["commentary_then_answer"], tmp_path, callbacks=heard.callbacks())
    result = run.result
    assert heard.kinds() == ["commentary", "first", "text"]
    assert heard.joined("commentary") == PREAMBLE
    assert heard.joined("text") == ANSWER
    assert result.output_text == PREAMBLE + ANSWER  # the SDK's join, unchanged
    assert result.answer_text == ANSWER
    assert result.commentary == [PREAMBLE]
    assert result.refusal is None
    assert _phases(result) == [("message", "commentary"), ("message", "final_answer")]


def test_without_a_commentary_callback_commentary_is_text_as_before(tmp_path: Path) -> None:
    heard = Heard(apart=False)
    run = run_over_http(SHAPES["commentary_then_answer"], tmp_path, callbacks=heard.callbacks())
    assert heard.kinds() == ["first", "text"]
    assert heard.joined("text") == PREAMBLE + ANSWER
    assert run.result.answer_text == ANSWER and run.result.commentary == [PREAMBLE]


def test_commentary_before_a_tool_call_is_delivered_and_no_answer_follows(tmp_path: Path) -> None:
    heard = Heard()
    run = run_over_http(SHAPES["commentary_then_tool_call"], tmp_path, callbacks=heard.callbacks())
    assert heard.kinds() == ["commentary"]  # no answer text: on_first_delta never fires
    assert run.result.commentary == [PREAMBLE]
    assert run.result.answer_text == ""
    assert [call["name"] for call in run.result.tool_calls] == ["get_weather"]


@pytest.mark.parametrize("shape", ["commentary_phase_only_on_done", "commentary_without_item_added"])
def test_a_phase_stated_only_when_the_message_is_done_streams_as_answer_text(
    shape: str, tmp_path: Path
) -> None:
    """While the commentary streams its phase is unknown, so it is answer text; the result is
    built from the finished items and files it as commentary."""
    heard = Heard()
    run = run_over_http(SHAPES[shape], tmp_path, callbacks=heard.callbacks())
    assert heard.kinds() == ["first", "text"]
    assert heard.joined("text") == PREAMBLE + ANSWER
    assert run.result.commentary == [PREAMBLE] and run.result.answer_text == ANSWER
    assert _phases(run.result) == [("message", "commentary"), ("message", "final_answer")]


def test_an_item_renamed_mid_stream_keeps_its_phase(tmp_path: Path) -> None:
    heard = Heard()
    run = run_over_http(SHAPES["commentary_rotating_item_ids"], tmp_path,
                        callbacks=heard.callbacks())
    assert heard.kinds() == ["commentary", "first", "text"]
    assert heard.joined("commentary") == PREAMBLE and heard.joined("text") == ANSWER
    assert run.result.commentary == [PREAMBLE]


def test_a_relay_that_drops_an_item_and_addresses_the_next_by_id_builds_one_message() -> None:
    """The relay leaves out the reasoning item at output index 0 and sends the commentary's
    frames by `item_id` only; its finished item says output index 1. One message, not two."""
    preamble = without_item_added(text_message(PREAMBLE, output_index=1, phase="commentary"))
    heard = Heard()
    result = engine.consume([_body(created(), preamble, completed([]))],
                            callbacks=heard.callbacks())
    assert heard.joined("text") == PREAMBLE  # its phase was unknown while it streamed
    assert result.output_text == PREAMBLE and result.commentary == [PREAMBLE]
    assert _phases(result) == [("message", "commentary")]


def test_a_backfilled_output_keeps_each_messages_phase(tmp_path: Path) -> None:
    run = run_over_http(SHAPES["commentary_completed_output_empty"], tmp_path)
    assert _phases(run.result) == [("message", "commentary"), ("message", "final_answer")]
    assert run.result.commentary == [PREAMBLE] and run.result.answer_text == ANSWER


def test_a_done_item_without_a_phase_keeps_its_announcements() -> None:
    """A relay that drops the phase from `output_item.done`: the rebuilt output keeps the phase the
    announcement stated (a follow-up request must resend it)."""
    message = text_message(PREAMBLE, output_index=0, phase="commentary")
    done = message[-1]
    message[-1] = {**done, "item": {k: v for k, v in done["item"].items() if k != "phase"}}
    result = engine.consume([_body(created(), message, completed([]))])
    assert _phases(result) == [("message", "commentary")]
    assert result.commentary == [PREAMBLE]


@pytest.mark.parametrize("apart", [True, False])
@pytest.mark.parametrize(
    "policy", [engine.TurnPolicy(), engine.TurnPolicy(max_stream_retries=0)],
    ids=["retry", "fallback"],
)
def test_commentary_is_never_delivered_twice_across_attempts(
    apart: bool, policy: engine.TurnPolicy, tmp_path: Path
) -> None:
    heard = Heard(apart=apart)
    run = run_over_http(SHAPES["commentary_drop_then_retry"], tmp_path,
                        callbacks=heard.callbacks(), policy=policy)
    assert [a.kind for a in run.result.attempts] == ["stream", "stream" if
                                                     policy.max_stream_retries else "fallback"]
    if apart:
        assert heard.joined("commentary") == PREAMBLE and heard.joined("text") == ANSWER
    else:
        assert heard.joined("text") == PREAMBLE + ANSWER
    assert [kind for kind, _ in heard.events].count("first") == 1
    assert run.result.commentary == [PREAMBLE] and run.result.answer_text == ANSWER


def test_a_resumed_background_response_goes_on_with_the_commentary(tmp_path: Path) -> None:
    preamble = text_message(PREAMBLE, deltas=3, output_index=0, phase="commentary")
    final = text_message(ANSWER, deltas=3, output_index=1, phase="final_answer")
    whole = to_reply(assemble(created(), preamble, final, completed(output_items(preamble, final))))
    # cut after created, the announcement and two of the commentary's deltas
    script = Script(replies=(attrs.evolve(whole, background_drop_after_events=5),))
    heard = Heard()
    run = run_over_http(script, tmp_path, request={**shapes_request(), "background": True},
                        callbacks=heard.callbacks())
    assert [a.kind for a in run.result.attempts] == ["stream", "resume"]
    assert heard.joined("commentary") == PREAMBLE and heard.joined("text") == ANSWER
    assert run.result.commentary == [PREAMBLE]


def shapes_request() -> dict[str, Any]:
    return {"model": "gpt-5", "input": "What is the weather in Paris?"}


def test_what_the_user_saw_survives_an_error_on_every_channel(tmp_path: Path) -> None:
    """The last attempt streams less than the first delivered, then breaks: each field keeps what
    reached the user on its channel (`output_text` in the order it was delivered)."""
    preamble = text_message(PREAMBLE, deltas=3, output_index=0, phase="commentary")
    final = text_message(ANSWER, deltas=3, output_index=1, phase="final_answer", finished=False)
    first = to_reply([*assemble(created(), preamble, final), TransportFault("drop")])
    second = to_reply([*assemble(created(), preamble[:3]), TransportFault("drop")])
    heard = Heard()
    run = run_over_http(Script(replies=(first, second)), tmp_path, callbacks=heard.callbacks(),
                        policy=engine.TurnPolicy(fallback=False))
    result = run.result
    assert result.outcome == "error"
    assert result.commentary == [PREAMBLE]
    assert result.answer_text == ANSWER
    assert result.output_text == PREAMBLE + ANSWER


# -- refusals ------------------------------------------------------------------------------------


def test_a_refusal_reaches_only_its_own_callback(tmp_path: Path) -> None:
    heard = Heard()
    run = run_over_http(SHAPES["refusal"], tmp_path, callbacks=heard.callbacks())
    assert heard.kinds() == ["refusal"]
    assert heard.joined("refusal") == REFUSAL
    assert run.result.outcome == "completed"
    assert run.result.refusal == REFUSAL
    assert run.result.output_text == "" and run.result.answer_text == ""


def test_a_refusal_after_answer_text_is_kept_apart(tmp_path: Path) -> None:
    heard = Heard()
    run = run_over_http(SHAPES["refusal_after_text"], tmp_path, callbacks=heard.callbacks())
    assert heard.kinds() == ["first", "text", "refusal"]
    assert heard.joined("text") == BEGUN and heard.joined("refusal") == REFUSAL
    assert run.result.output_text == BEGUN and run.result.refusal == REFUSAL


def test_without_a_refusal_callback_the_refusal_is_in_the_result_only(tmp_path: Path) -> None:
    heard = Heard(refusals=False)
    run = run_over_http(SHAPES["refusal_after_text"], tmp_path, callbacks=heard.callbacks())
    assert heard.joined("text") == BEGUN  # never the refusal
    assert run.result.refusal == REFUSAL


def test_a_refusal_is_not_delivered_twice_across_a_retry(tmp_path: Path) -> None:
    refused = refusal_message(REFUSAL, deltas=4)
    cut = to_reply([*assemble(created(), refused[:4]), TransportFault("drop")])
    whole = to_reply(assemble(created(), refused, completed(output_items(refused))))
    heard = Heard()
    run = run_over_http(Script(replies=(cut, whole)), tmp_path, callbacks=heard.callbacks())
    assert [value for kind, value in heard.events if kind == "refusal"] == split_text(REFUSAL, 4)
    assert run.result.refusal == REFUSAL


def test_refusals_of_several_messages_are_joined_in_output_order() -> None:
    one = refusal_message("No. ", output_index=0)
    two = refusal_message("Still no.", output_index=1, text="Well: ")
    result = engine.consume([_body(created(), one, two, completed(output_items(one, two)))])
    assert result.refusal == "No. Still no."
    assert result.output_text == "Well: "


# -- the first delta, under either routing -------------------------------------------------------


def test_the_first_delta_effect_names_the_routing_it_is_first_under(tmp_path: Path) -> None:
    preamble = text_message(PREAMBLE, deltas=2, output_index=0, phase="commentary")
    final = text_message(ANSWER, deltas=2, output_index=1)
    effects = _effects(tmp_path, created(), preamble, final,
                       completed(output_items(preamble, final)))
    kinds = [(e.kind, e.data if e.kind == "first_delta" else None) for e in effects]
    assert kinds == [("first_delta", "commentary_joined"), *[("commentary_delta", None)] * 2,
                     ("first_delta", "commentary_apart"), *[("text_delta", None)] * 2]
    effects = _effects(tmp_path, created(), final, completed(output_items(final)))
    assert [e.data for e in effects if e.kind == "first_delta"] == [None]


@pytest.mark.parametrize("apart", [True, False])
def test_the_event_log_routes_each_effect_by_the_callbacks_given(apart: bool) -> None:
    heard = Heard(apart=apart)
    log = EventLog(heard.callbacks())
    log.decide([
        Effect("first_delta", 1, "commentary_joined"), Effect("commentary_delta", 1, "Let me "),
        Effect("commentary_delta", 1, "look."), Effect("first_delta", 1, "commentary_apart"),
        Effect("text_delta", 1, "Found."), Effect("refusal_delta", 1, "No."),
    ])
    if apart:
        assert heard.events == [("commentary", "Let me "), ("commentary", "look."),
                                ("first", None), ("text", "Found."), ("refusal", "No.")]
    else:
        assert heard.events == [("first", None), ("text", "Let me "), ("text", "look."),
                                ("text", "Found."), ("refusal", "No.")]


# -- bad data ------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [5, True, {"phase": "commentary"}, ["commentary"], "Commentary",
                                   "", "final_answer"])
def test_a_phase_other_than_the_string_commentary_is_answer_text(phase: Any) -> None:
    message = text_message(PREAMBLE, output_index=0)
    for event in message:
        if "item" in event:
            event["item"]["phase"] = phase
    heard = Heard()
    result = engine.consume([_body(created(), message, completed(output_items(message)))],
                            callbacks=heard.callbacks())
    assert heard.kinds() == ["first", "text"]
    assert result.answer_text == PREAMBLE and result.commentary == []


def test_a_null_phase_says_nothing_and_a_later_phase_replaces_an_earlier_one() -> None:
    message = text_message(PREAMBLE, output_index=0, phase="commentary")
    message[-1]["item"]["phase"] = None  # the done item: null leaves the announcement's
    again = text_message(ANSWER, output_index=1, phase="commentary")
    again[-1]["item"]["phase"] = "final_answer"  # the done item says otherwise: it wins
    result = engine.consume([_body(created(), message, again, completed([]))])
    assert result.commentary == [PREAMBLE] and result.answer_text == ANSWER


@pytest.mark.parametrize("refusal", [5, None, ["no"], {"text": "no"}, 1e300])
def test_refusal_frames_and_parts_that_carry_no_string_are_ignored(refusal: Any) -> None:
    where = {"item_id": "msg_00", "output_index": 0, "content_index": 0}
    item = {"id": "msg_00", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "refusal", "refusal": refusal},
                        {"type": "refusal", "refusal": "I can't."}, {"type": "refusal"}]}
    heard = Heard()
    result = engine.consume([_body(
        created(),
        [{"type": "response.refusal.delta", **where, "delta": refusal},
         {"type": "response.refusal.done", **where, "refusal": refusal},
         {"type": "response.output_item.done", "output_index": 0, "item": item}],
        completed([item]),
    )], callbacks=heard.callbacks())
    assert result.outcome == "completed"
    assert heard.events == []
    assert result.refusal == "I can't."


# -- the trace -----------------------------------------------------------------------------------


def test_the_result_record_holds_the_new_fields_only_where_they_say_something(
    tmp_path: Path,
) -> None:
    plain = run_over_http(SHAPES["happy_text"], tmp_path)
    assert set(trace_lines(plain.trace)[-1]) == {
        "seq", "kind", "outcome", "response", "output_text", "tool_calls", "error", "attempts",
        "rate_limits",
    }
    assert plain.result.answer_text == plain.result.output_text and plain.result.commentary == []
    phased = run_over_http(SHAPES["commentary_then_answer"], tmp_path)
    record = trace_lines(phased.trace)[-1]
    assert (record["answer_text"], record["commentary"]) == (ANSWER, [PREAMBLE])
    refused = run_over_http(SHAPES["refusal"], tmp_path)
    assert trace_lines(refused.trace)[-1]["refusal"] == REFUSAL


# -- helpers -------------------------------------------------------------------------------------


def _body(*pieces: Any) -> bytes:
    return b"".join(encode_part(part) for part in assemble(*pieces))


def _effects(folder: Path, *pieces: Any) -> list[Effect]:
    """The effects `engine.consume` of the pieces records in its trace."""
    trace = folder / f"consumed-{len(list(folder.iterdir()))}.jsonl"
    engine.consume([_body(*pieces)], trace=trace)
    return [Effect(line["effect"], line["attempt"], line["data"])
            for line in trace_lines(trace) if line.get("kind") == "effect"]
