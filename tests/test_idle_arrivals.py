"""The idle timeout measures server silence: from the arrival of the last bytes, only while the
reader could see bytes arrive. A slow callback or a busy event loop is not a silent server;
a server that really goes silent still times out, with either driver."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import pytest

import engine
from engine.drivers.watchdog import SETTLE_LOOKS, Deadlines, Watchdog
from engine.simulator import shapes
from engine.simulator.shapes import (
    SHAPES,
    assemble,
    completed,
    created,
    in_progress,
    output_items,
    text_message,
    to_reply,
)
from engine.simulator.server import ResponsesSimulator
from engine.simulator.replies import Script
from machines.records import IdleTimeout, Stall

from support import assert_replays_identically, within

REQUEST = {"model": "m", "input": "hi"}
ANSWER = shapes._ANSWER


def _one_attempt(idle_timeout_s: float) -> engine.TurnPolicy:
    return engine.TurnPolicy(max_stream_retries=0, fallback=False, idle_timeout_s=idle_timeout_s)


def _slow_callbacks(seconds: float) -> engine.Callbacks:
    return engine.Callbacks(on_text_delta=lambda delta: time.sleep(seconds))


def _run(
    asynchronous: bool, script: Script, policy: engine.TurnPolicy, trace: Path, **options: Any
) -> engine.TurnResult:
    with ResponsesSimulator(script) as sim:
        if not asynchronous:
            client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
            return engine.run_turn(client, REQUEST, policy=policy, trace=trace, **options)

        async def run() -> engine.TurnResult:
            aclient = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
            return await engine.arun_turn(aclient, REQUEST, policy=policy, trace=trace, **options)

        return asyncio.run(run())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["run_turn", "arun_turn"])
def test_callbacks_slower_than_the_idle_timeout_are_not_server_silence(
    asynchronous: bool, tmp_path: Path
) -> None:
    """Every delta's callback takes 0.2 s against a 0.1 s idle timeout; the server is never
    silent. arun_turn used to end `error` (idle_timeout) here while run_turn completed."""
    trace = tmp_path / "t.jsonl"
    result = _run(
        asynchronous, SHAPES["happy_text"], _one_attempt(0.1),
        trace, callbacks=_slow_callbacks(0.2),
    )
    assert result.outcome == "completed"
    assert [(a.final_state, a.reason) for a in result.attempts] == [("terminal", "completed")]
    assert result.output_text == ANSWER
    assert_replays_identically(trace)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["run_turn", "arun_turn"])
def test_a_real_stall_after_slow_callbacks_still_times_out(asynchronous: bool, tmp_path: Path) -> None:
    message = text_message(ANSWER, deltas=4)
    stalled = to_reply(assemble(created(), in_progress(), message[:4], Stall(3.0), message[4:],
                                completed(output_items(message))))
    began = time.monotonic()
    result = _run(
        asynchronous, Script((stalled,)), _one_attempt(0.3),
        tmp_path / "t.jsonl", callbacks=_slow_callbacks(0.2),
    )
    elapsed = time.monotonic() - began
    assert [(a.final_state, a.reason) for a in result.attempts] == [("retire", "idle_timeout")]
    assert elapsed < within(1.8, before=3.0)  # two 0.2 s callbacks, then 0.3 s of silence; the stall is 3 s


def test_arun_turn_with_a_blocked_event_loop_is_not_server_silence(tmp_path: Path) -> None:
    """Another task hogs the loop for 0.3 s at a time; the server sends every 50 ms. The reader
    cannot look while the loop is blocked, so that time is not silence."""
    message = text_message(ANSWER, deltas=4)
    paced: list[Any] = []
    for event in assemble(created(), in_progress(), message, completed(output_items(message))):
        paced.extend([event, Stall(0.05)])
    script = Script((to_reply(paced),))

    async def hog(stop: asyncio.Event) -> None:
        while not stop.is_set():
            time.sleep(0.3)  # a blocking call in someone else's task
            await asyncio.sleep(0.01)

    with ResponsesSimulator(script) as sim:

        async def run() -> engine.TurnResult:
            stop = asyncio.Event()
            hogger = asyncio.ensure_future(hog(stop))
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
            try:
                return await engine.arun_turn(
                    client, REQUEST, policy=_one_attempt(0.2)
                )
            finally:
                stop.set()
                await hogger

        result = asyncio.run(run())
    assert [(a.final_state, a.reason) for a in result.attempts] == [("terminal", "completed")]


# -- the watchdog on a fake clock ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_reader_thread_s_silence_runs_from_the_arrival_stamp() -> None:
    clock = Clock()
    dog = Watchdog(clock, lambda: False, 0.3)
    assert dog.before_item(True, arrived=100.0) is None  # bytes that arrived at 100.0
    clock.t = 100.4  # the caller was busy with them (a callback) until now; nothing since
    assert dog.wait_s() == pytest.approx(0.0, abs=1e-9)
    assert dog.after_silence() == IdleTimeout(0.3)  # the reader thread saw 0.4 s of silence


def test_a_reader_on_the_loop_does_not_count_the_time_the_loop_was_busy() -> None:
    clock = Clock()  # binary fractions below, so the arithmetic is exact
    dog = Watchdog(clock, lambda: False, 0.25, poll_s=0.0625, blind_while_busy=True)
    assert dog.before_item(True, arrived=100.0) is None
    clock.t = 100.5  # feeding the item (callbacks) kept the loop for 0.5 s
    dog.after_item()
    assert dog.wait_s() == 0.0625
    clock.t += 0.125  # the wait ended 0.0625 s late: the loop was busy elsewhere
    assert dog.after_silence() is None
    waits = []
    while (stop := dog.after_silence()) is None:
        waits.append(dog.wait_s())
        clock.t += waits[-1]
    # 0.0625 s counted from the late wait, three more on-time waits, then the settling looks
    assert waits == [0.0625] * 3 + [0.0] * SETTLE_LOOKS
    assert stop == IdleTimeout(0.25)
    assert clock.t == 100.5 + 0.125 + 3 * 0.0625


def test_bytes_during_the_settling_looks_restart_the_silence() -> None:
    clock = Clock()
    dog = Watchdog(clock, lambda: False, 0.25, poll_s=0.0625, blind_while_busy=True)
    clock.t = 100.25
    assert dog.wait_s() == 0.0
    assert dog.after_silence() is None  # a look
    assert dog.before_item(True, arrived=100.25) is None  # the reader had bytes after all
    dog.after_item()
    assert dog.wait_s() == 0.0625


def test_without_an_idle_timeout_only_the_interrupt_is_watched() -> None:
    stop = [False]
    dog = Watchdog(Clock(), lambda: stop[0], None, poll_s=0.0625, blind_while_busy=True)
    assert dog.wait_s() == 0.0625 and dog.after_silence() is None
    stop[0] = True
    assert dog.after_silence() is not None


def test_paused_silence_does_not_run_and_starts_again_when_it_resumes() -> None:
    clock = Clock()
    dog = Watchdog(clock, lambda: False, 0.25, poll_s=0.0625)
    dog.pause_silence()  # an approval is pending: the driver waits on its caller
    clock.t += 10.0
    assert dog.wait_s() == 0.0625 and not dog.silence_over()
    dog.resume_silence()  # the silence runs again from now, not from before the pause
    clock.t += 0.1875
    assert dog.wait_s() == 0.0625 and not dog.silence_over()
    dog.heard()  # a line: silence from now
    clock.t += 0.1875
    assert not dog.silence_over()
    clock.t += 0.0625
    assert dog.wait_s() == 0.0 and dog.silence_over()


def test_deadlines_pass_on_their_clock_and_a_running_one_is_kept() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    deadlines.set(7, 1.0)
    deadlines.start("grace", 0.5)
    clock.t += 0.25
    deadlines.start("grace", 0.5)  # already running: not moved
    assert not deadlines.passed(7) and not deadlines.passed("grace")
    clock.t += 0.25
    assert deadlines.passed("grace") and not deadlines.passed(7)
    deadlines.forget("grace")
    assert not deadlines.passed("grace") and not deadlines.passed("never set")
    clock.t += 0.5
    assert deadlines.passed(7)
