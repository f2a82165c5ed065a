"""Property tests: every rule of `engine.fuzz.invariants` on generated sessions (engine.strategies).

Example counts come from the Hypothesis profile (tests/conftest.py, HYPOTHESIS_PROFILE). The
long campaign over the same property is `streamfsm fuzz`.
"""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import attrs
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from engine import Callbacks, TurnPolicy, replay
from engine.fuzz.campaign import save_finding
from engine.fuzz.invariants import (
    InvariantViolation,
    check_session,
    reference_events,
    session_violations,
)
from engine.simulator.shapes import completed, created, encode_part, text_message
from engine.drivers.sse import SseDecoder
from engine.strategies import CallbackRaised, Session, attempt_scripts, mangled, policies, responses, retyped, run_session, session_from_trace, sessions, sse_bytes, tool_call_answers, well_formed_sessions
from machines.records import Chunk, EndOfStream, Fault, Stall, TransportFault
from machines import stream_attempt
from machines.stream_attempt import StreamAttempt

from support import patch_rows, text_keeps_flowing_after_tool_calls

FIXTURES = Path(__file__).resolve().parent.parent / "replay_fixtures"


def _check(session: Session) -> None:
    """check_session, saving the session as a trace when STREAMFSM_SAVE_FINDINGS names a folder."""
    result, found = session_violations(session)
    if found:
        folder = os.environ.get("STREAMFSM_SAVE_FINDINGS")
        if folder:
            save_finding(session, found, folder)
        raise InvariantViolation(found, session)


# --------------------------------------------------------------------------------------------
# The invariants, on every kind of session


@given(sessions())
def test_every_rule_holds_on_adversarial_sessions(session: Session) -> None:
    _check(session)


@given(well_formed_sessions())
def test_every_rule_holds_on_well_formed_sessions(session: Session) -> None:
    _check(session)


@given(sessions(policy=TurnPolicy(max_stream_retries=2, fallback=True, idle_timeout_s=1.0,
                                  retry_failed_codes={"server_error"})))
def test_every_rule_holds_when_every_retry_path_is_open(session: Session) -> None:
    _check(session)


#: Policies with a wall-clock limit for the turn (CONTRACT v3): the sessions' servers then drip
#: their answers against it, and their HTTP errors demand waits shorter or longer than what is
#: left (`engine.fuzz.strategies.deadline_plans`).
_LIMITED = st.builds(lambda policy, limit: attrs.evolve(policy, turn_timeout_s=limit),
                     policies(), st.sampled_from([0.05, 0.3, 1.0, 4.0]))


@pytest.mark.slow
@given(sessions(policy=_LIMITED))
def test_every_rule_holds_against_a_turn_limit(session: Session) -> None:
    _check(session)


_COMPLETES = responses(terminals=("completed", "completed_output_empty", "completed_output_null"))


@given(_COMPLETES.flatmap(lambda parts: st.tuples(st.just(parts),
                                                  attempt_scripts(st.just(parts), adversarial=False))))
def test_a_well_formed_completed_stream_completes_with_everything_it_streamed(case) -> None:
    parts, script = case
    result = run_session(Session([script]))
    assert result.outcome == "completed"
    assert [a.final_state for a in result.attempts] == ["terminal"]
    messages = {}  # output index -> (phase, text parts, refusal parts) of each finished message
    calls = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "response.output_item.done":
            item = part["item"]
            if item["type"] == "message":
                content = item["content"]
                messages[part["output_index"]] = (
                    item.get("phase"),
                    "".join(p["text"] for p in content if p["type"] == "output_text"),
                    [p["refusal"] for p in content if p["type"] == "refusal"],
                )
        if isinstance(part, dict) and part.get("type") == "response.output_item.added":
            if part["item"]["type"] == "function_call":
                calls.append(part["item"]["call_id"])
    ordered = [messages[i] for i in sorted(messages)]
    assert result.output_text == "".join(text for _, text, _ in ordered)
    assert result.answer_text == "".join(text for phase, text, _ in ordered if phase != "commentary")
    assert result.commentary == [text for phase, text, _ in ordered if phase == "commentary"]
    refusals = [refusal for _, _, some in ordered for refusal in some]
    assert result.refusal == ("".join(refusals) if refusals else None)
    assert sorted(c["call_id"] for c in result.tool_calls) == sorted(calls)


# --------------------------------------------------------------------------------------------
# The tools themselves: decoding reference, traces back into sessions, shrinking


@given(responses().flatmap(mangled).flatmap(sse_bytes),
       st.lists(st.integers(1, 4000), max_size=8))
def test_the_sse_decoder_agrees_with_the_reference_reader(body: bytes, cuts: list[int]) -> None:
    points = sorted({c for c in cuts if c < len(body)})
    decoder = SseDecoder()
    events = []
    for a, b in zip([0, *points], [*points, len(body)]):
        events += decoder.feed(body[a:b])
    assert [(e.event, e.data) for e in events] == reference_events(body, ended=True)


@settings(max_examples=max(10, settings().max_examples // 3))
@given(session=sessions())
def test_a_trace_reads_back_as_the_same_session(tmp_path_factory, session: Session) -> None:
    path = tmp_path_factory.mktemp("roundtrip") / "turn.jsonl"
    from engine.drivers.replay import _masked_equal
    from engine.log.trace import read_trace

    first = run_session(session, trace=path)
    again = run_session(session_from_trace(path))
    assert (again.outcome, again.attempts, again.transitions) == (
        first.outcome, first.attempts, first.transitions)
    # secrets the server echoed were masked in the trace (length for length), where the caller's
    # result has them redacted
    recorded = read_trace(path).records[-1]
    assert _masked_equal([recorded["output_text"], recorded["error"]], [again.output_text, again.error])


def _lines(session: Session) -> int:
    return len(session.describe().splitlines())


def test_a_failure_shrinks_to_a_short_readable_session() -> None:
    """Asked for a completed turn with a tool call, Hypothesis shrinks to the shortest such
    session: one attempt, one read of six compact events, a clean end (and the line naming the
    client's secret)."""
    from hypothesis import find

    found = find(
        sessions(),
        lambda s: (r := run_session(s)).outcome == "completed" and r.tool_calls != [],
        settings=settings(max_examples=300, database=None, derandomize=True),
    )
    assert _lines(found) == 5, found.describe()
    (read, end), = found.attempts
    assert isinstance(read, Chunk) and end == EndOfStream()
    assert [e for _, e in reference_events(read.data, ended=True)] and read.data.count(b"\n\n") == 6
    assert len(read.data) < 1500


# --------------------------------------------------------------------------------------------
# run_session, as users call it


def _frames(*parts) -> bytes:
    return b"".join(encode_part(p) for group in parts for p in group)


def test_run_session_gives_attempts_beyond_the_scripts_a_connect_error() -> None:
    result = run_session(Session([[TransportFault("drop")]], TurnPolicy(max_stream_retries=1, fallback=False)))
    assert [(a.final_state, a.reason) for a in result.attempts] == [
        ("retire", "drop"), ("retire", "connect_error")]
    assert result.outcome == "error" and result.error["code"] == "connect_error"


def test_a_stall_is_a_pause_without_an_idle_timeout_and_a_fault_with_one() -> None:
    body = _frames(created(), text_message("Hi", deltas=2), completed([]))
    script = [Chunk(body[:40]), Stall(30.0), Chunk(body[40:]), EndOfStream()]
    assert run_session(Session([script], TurnPolicy())).outcome == "completed"
    patient = run_session(Session([script], TurnPolicy(idle_timeout_s=10.0, max_stream_retries=0,
                                                       fallback=False)))
    assert patient.outcome == "error" and patient.attempts[0].reason == "idle_timeout"


def test_a_callback_that_raises_is_reported_after_the_turn() -> None:
    body = _frames(created(), text_message("Grüße", deltas=2), completed([]))

    def ascii_only(delta: str) -> None:
        delta.encode("ascii")

    with pytest.raises(CallbackRaised) as caught:
        run_session(Session([[Chunk(body), EndOfStream()]]), Callbacks(on_text_delta=ascii_only))
    assert caught.value.callback == "on_text_delta"
    assert isinstance(caught.value.__cause__, UnicodeEncodeError)
    result = run_session(Session([[Chunk(body)]]), Callbacks(on_text_delta=ascii_only), reraise=False)
    assert result.outcome == "completed" and result.output_text == "Grüße"


def test_run_session_refuses_a_wrong_call() -> None:
    with pytest.raises(TypeError):
        run_session([[Chunk(b"")]])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        run_session(Session([[EndOfStream()]]), callbacks=print)  # type: ignore[arg-type]


def test_fuzzing_your_own_callbacks_in_ten_lines() -> None:
    """The example of docs/fuzzing.md, run: a screen that cannot print non-ASCII text is found
    out, and the session that shows it is short."""

    class Screen:
        def __init__(self) -> None:
            self.text = ""

        def show(self, delta: str) -> None:
            self.text += delta.encode("ascii").decode()  # the bug: any non-ASCII text

    @settings(database=None)
    @given(sessions())
    def test_screen(session: Session) -> None:
        run_session(session, Callbacks(on_text_delta=Screen().show))

    with pytest.raises(CallbackRaised) as caught:
        test_screen()
    assert isinstance(caught.value.__cause__, UnicodeEncodeError)


# --------------------------------------------------------------------------------------------
# The invariants can fail: a machine with one rule broken is caught within the profile


def _first_failure(strategy, budget: int | None = None) -> InvariantViolation:
    """Run the property under the profile's example budget, or `budget` examples for a rarer
    kind of input (no shrinking: only *whether* and *how soon* a broken rule is found matters
    here) and return the violation."""
    calls = []
    most = max(budget or 0, settings().max_examples)

    @settings(database=None, phases=[Phase.generate], max_examples=most)
    @given(strategy)
    def prop(session: Session) -> None:
        calls.append(session)
        check_session(session, replay=False)

    with pytest.raises(InvariantViolation) as caught, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Generating overly large repr")  # the session shown
        prop()
    assert len(calls) <= most
    return caught.value


def test_text_let_through_after_a_tool_call_is_caught(monkeypatch) -> None:
    text_keeps_flowing_after_tool_calls(monkeypatch)
    # the first session that shows it may be a retry that then repeats the text let through
    # (which seed Hypothesis starts from depends on the tests run before this one)
    assert {"no_text_after_tool_call", "delivered_once"} & set(_first_failure(sessions()).rules)


def test_a_retried_incomplete_response_is_caught(monkeypatch) -> None:
    def incomplete_as_fault(self, payload):  # response.incomplete taken for a broken stream
        stream_attempt.TABLE.feed(self, Fault.DROP)

    monkeypatch.setitem(stream_attempt._HANDLERS, "response.incomplete", incomplete_as_fault)
    ending_incomplete = sessions(response=responses(terminals=("incomplete", "completed")))
    assert "attempts_as_reference" in _first_failure(ending_incomplete).rules


def test_a_dropped_unfinished_function_call_is_caught(monkeypatch) -> None:
    from machines.output import OutputAssembly

    original = OutputAssembly.items

    def items_without_unfinished_calls(self, status="completed"):  # calls never `done` are lost
        done = list(self._done.values())
        return [item for item in original(self, status)
                if item.get("type") != "function_call" or item in done]

    monkeypatch.setattr(OutputAssembly, "items", items_without_unfinished_calls)
    assert "tool_calls_once" in _first_failure(sessions()).rules


_TOOL_SESSIONS = sessions(response=tool_call_answers())


def _with_deltas_retyped(case) -> list:
    parts, dice = case
    return [
        retyped(part, dice, ("delta",))
        if isinstance(part, dict) and part.get("type") == "response.output_text.delta"
        else part
        for part in parts
    ]


_RETYPED_DELTAS = st.tuples(responses(), st.binary(min_size=36, max_size=36)).map(
    _with_deltas_retyped
)


def test_text_held_back_for_a_call_the_server_ran_and_never_released_is_caught(
    monkeypatch,
) -> None:
    def resume_without_the_held_text(self):  # text flows again, what was held is lost
        self.tool_call_seen = False
        self._withheld = []

    monkeypatch.setattr(StreamAttempt, "release_withheld", resume_without_the_held_text)
    assert {"nothing_lost", "delivered_once"} & set(_first_failure(_TOOL_SESSIONS, budget=600).rules)


def test_a_call_the_server_ran_listed_in_tool_calls_is_caught(monkeypatch) -> None:
    from machines import output

    def every_call_kind_is_the_clients(facts, *, custom_tools, outputs):
        return facts[0] in output.CLIENT_CALL_TYPES

    monkeypatch.setattr(output, "is_client_call", every_call_kind_is_the_clients)
    assert "tool_calls_once" in _first_failure(_TOOL_SESSIONS).rules


def test_text_delivered_after_a_custom_tool_call_is_caught(monkeypatch) -> None:
    from machines import output

    def custom_calls_are_the_servers(facts, *, custom_tools, outputs):
        return facts[0] != "custom_tool_call" and output.is_client_call(
            facts, custom_tools=custom_tools, outputs=outputs
        )

    monkeypatch.setattr(stream_attempt, "is_client_call", custom_calls_are_the_servers)
    assert "no_text_after_tool_call" in _first_failure(_TOOL_SESSIONS, budget=600).rules


def test_a_delta_that_is_not_a_string_taken_for_text_is_caught(monkeypatch) -> None:
    original = stream_attempt._HANDLERS["response.output_text.delta"]

    def text_of_any_delta(self, payload):
        delta = payload.get("delta")
        if delta is not None and type(delta) is not str:
            payload = {**payload, "delta": str(delta)[:20]}
        original(self, payload)

    monkeypatch.setitem(stream_attempt._HANDLERS, "response.output_text.delta", text_of_any_delta)
    # sessions() retype one field of many at a time; here every text delta's `delta` is retyped
    assert {"nothing_lost", "delivered_once", "no_text_after_tool_call"} & set(
        _first_failure(sessions(response=_RETYPED_DELTAS)).rules
    )


def test_an_event_over_max_event_bytes_retried_is_caught(monkeypatch) -> None:
    def retried(row):  # taken for a broken stream: tried again
        if row.trigger != "event_too_large":
            return row
        return attrs.evolve(row, decides=attrs.evolve(row.decides, retry="stream"))

    patch_rows(monkeypatch, stream_attempt, retried)
    assert "attempts_as_reference" in _first_failure(sessions(), budget=600).rules


@pytest.mark.slow
def test_json_read_only_under_a_raised_recursion_limit_is_caught(monkeypatch) -> None:
    """The standard library's reader, with no bound of its own, reads JSON nested deeper than
    1024 levels only when the recursion limit allows it (Hypothesis raises it)."""
    import json

    def whatever_the_limit_allows(data):
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            return None

    monkeypatch.setattr(stream_attempt, "_lenient_loads", whatever_the_limit_allows)
    assert _first_failure(sessions(), budget=5000).rules


def test_a_turn_limit_taken_for_a_broken_stream_is_caught(monkeypatch) -> None:
    """The limit passed, yet another attempt is made: the attempt's row allows a retry and the
    turn's row that ends a turn out of time never fires."""
    from machines import turn

    def retried(row):
        if row.trigger != "turn_timeout":
            return row
        return attrs.evolve(row, decides=attrs.evolve(row.decides, retry="stream"))

    def never(machine) -> bool:
        return False

    patch_rows(monkeypatch, stream_attempt, retried)
    patch_rows(monkeypatch, turn, lambda row: attrs.evolve(row, guards=never)
               if turn.attempt_ran_out_of_time in row.guards else row)
    assert "attempts_as_reference" in _first_failure(sessions(policy=_LIMITED)).rules


def test_a_wait_too_large_to_represent_taken_for_no_wait_is_caught(monkeypatch) -> None:
    """The old reading: a Retry-After of hundreds of digits dropped as not finite, and the
    request sent again at once."""
    import math

    demanded = stream_attempt.demanded_wait_s

    def dropped(item):
        wait = demanded(item)
        return wait if wait is None or math.isfinite(wait) else None

    monkeypatch.setattr(stream_attempt, "demanded_wait_s", dropped)
    assert "attempts_as_reference" in _first_failure(sessions(), budget=3000).rules


def test_a_secret_written_escaped_and_left_in_the_trace_is_caught(monkeypatch) -> None:
    """The old scrubber: the bytes as they are only, never what a reader decodes of them."""
    from engine.log.redaction import Scrubber

    monkeypatch.setattr(Scrubber, "escaped_edits", lambda self, data, spans=None: [])
    found: set[str] = set()

    @settings(database=None, phases=[Phase.generate], max_examples=3000)
    @given(sessions())
    def prop(session: Session) -> None:
        _, violations = session_violations(session)
        found.update(v.rule for v in violations)
        assert "secrets_masked" not in found

    with pytest.raises(AssertionError), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Generating overly large repr")
        prop()
    assert "secrets_masked" in found


# --------------------------------------------------------------------------------------------
# Every regression fixture holds every rule


_FIXTURES = sorted(glob.glob(str(FIXTURES / "*.jsonl")))


@pytest.mark.parametrize("path", _FIXTURES, ids=[Path(p).stem for p in _FIXTURES])
def test_every_replay_fixture_holds_every_rule(path: str) -> None:
    assert replay(path).identical
    _check(session_from_trace(path))
