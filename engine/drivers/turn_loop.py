"""The turn loop every network driver shares, as steps: the drivers differ only in how they carry
them out (sleep, read, send).

Theory of operation
===================

A turn is a sequence of attempts the turn machine decides (`TurnRecording.attempts()`), each
after the first announced to the caller (`Callbacks.on_retry`, with the wait to come) and
preceded by the pause an HTTP retry asks for, and followed, at the end of the turn, by the
cancels of background responses it gave up. All of that, and everything inside an attempt, is decided
here, by one generator, `turn_steps`; a driver only carries out the steps it yields and sends
back what came of each:

    step                  the driver                                         sends back
    float                 waits at most that long for the reader's next      the observation, or
                          observation                                         None after silence
    Pause(seconds)        sleeps (one slice of an HTTP retry's pause)         None
    Open(feed)            sends the attempt's request on a new reader         None
    Close(grace_s)        ends the reader: `grace_s` to read its body to      None
                          the end, then aborts the request
    Cancel(response_id)   cancels a background response (best effort)        None

and, for any step, the exception it raised instead. `advance` hands over the next step, or the
turn's result (`Finished`) once it is over. `drive` carries the steps out on a thread
(`run_turn`, the seed's functions in `engine.compat`), `engine.drivers.asynchronous` on an event
loop; both are the same few lines around their own `wait`, `pause`, `open`, `close` and `cancel`
(`carry_out`).

Readers (a thread, or a task) hand over *observations* in the shared vocabulary: `Chunk`s, then
`EndOfStream`, or the `HttpError` / `TransportFault` an exception stands for
(`engine.drivers.transport`), or an exception that is not the network's doing (raised in the
turn). A reader stamps each one with the monotonic time it arrived (`stamped`).

The turn's wall-clock limit (`TurnPolicy.turn_timeout_s`) is one `TurnDeadline` for all its
attempts and waits: when the wait before an attempt would reach it, the attempt is retired at
once with a `TurnTimeout` (nothing is sent, nothing waited for, no retry announced), and the
watchdog of every attempt looks at it.

Inside an attempt (`attempt_steps`): an interrupt, or the turn's time up, before anything is
sent retires it at once; otherwise its request is opened, then `attempt_loop` runs it from
observations: an interrupt, the turn's deadline or an idle timeout
(`engine.drivers.watchdog.Watchdog`) ends it between observations, even before the response
headers, and the first two also before an observation is used (a server that never stops
sending cannot keep the turn past its deadline); every observation is fed to the attempt with
the clock reading; the attempt's final state ends the loop. The reader is always closed: when what the server sent
ended the attempt, its body should end by itself and the reader gets `FINISH_GRACE_S` to read
it to its end (the connection goes back to the client's pool); when the watchdog stopped it, the
body will not end by itself and the request is aborted at once.

An exception anywhere (a step's, or one a reader handed over) closes the open reader, writes
what was recorded as an abandoned trace, and propagates to the caller.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable, Generator, Protocol, Sequence, TypeVar

import attrs

from engine.drivers.arguments import TurnOptions, check_turn_call
from engine.drivers.recording import AttemptFeed, TurnRecording
from engine.drivers.watchdog import POLL_S, TurnDeadline, Watchdog, turn_clock
from engine.log.eventlog import RecordedInput
from engine.log.redaction import client_secrets
from machines.records import (
    Chunk,
    IdleTimeout,
    Interrupt,
    RetryNotice,
    TurnPolicy,
    TurnResult,
    TurnTimeout,
)

__all__ = [
    "Cancel",
    "Close",
    "FINISH_GRACE_S",
    "Finished",
    "Observation",
    "Open",
    "Pause",
    "Reply",
    "Stamped",
    "Step",
    "StepDriver",
    "SyncStepDriver",
    "TurnStart",
    "advance",
    "attempt_loop",
    "attempt_steps",
    "carry_out",
    "drive",
    "http_policy",
    "pause_slices",
    "stamped",
    "start_turn",
    "turn_steps",
]

#: How long a reader may take to read the rest of a body after its terminal event (seconds).
FINISH_GRACE_S = 0.1

#: What a reader hands over: an input record, or an exception to raise in the turn.
Observation = RecordedInput | BaseException

#: An observation with the `time.monotonic()` reading of its arrival.
Stamped = tuple[float, Observation]

#: What a driver sends back for a step: an observation (stamped or bare, "arrived now") for a
#: wait, None after a silent wait or for any other step, or the exception the step raised.
Reply = Stamped | Observation | None


def stamped(observation: Observation) -> Stamped:
    """`observation` stamped with the time it arrived (now)."""
    return (time.monotonic(), observation)


# -- the steps -------------------------------------------------------------------------------
R = TypeVar("R", covariant=True)


class StepDriver(Protocol[R]):
    """How a driver carries out the steps other than waiting: a thread's methods return None,
    an event loop's awaitables."""

    def pause(self, seconds: float) -> R:
        """Sleep `seconds` (one slice of an HTTP retry's pause)."""
        ...

    def open(self, feed: AttemptFeed) -> R:
        """Send `feed`'s request (its kind: stream, resume, fallback) on a new reader."""
        ...

    def close(self, grace_s: float) -> R:
        """End the reader: after `grace_s` for it to read its body to the end, abort it."""
        ...

    def cancel(self, response_id: str) -> R:
        """Cancel the background response `response_id` (best effort: never raises for what
        the network or the server does)."""
        ...


class SyncStepDriver(StepDriver[None], Protocol):
    """A driver that carries out the steps on its own thread (`drive`)."""

    def wait(self, seconds: float) -> Reply:
        """The reader's next observation within `seconds`, or None."""
        ...


@attrs.frozen(slots=True)
class Pause:
    """Sleep: one slice of the pause an HTTP retry asks for."""

    seconds: float


@attrs.frozen(slots=True)
class Open:
    """Send the attempt's request on a new reader. A driver may feed the attempt while it
    opens it (a request refused before anything was read, a whole response at once)."""

    feed: AttemptFeed


@attrs.frozen(slots=True)
class Close:
    """End the reader, and with it the request: `grace_s` for it to read the body to its end
    first (0 when the attempt was stopped and the body will not end by itself)."""

    grace_s: float


@attrs.frozen(slots=True)
class Cancel:
    """Cancel the background response the turn gave up."""

    response_id: str


#: A step: a float is a wait for the reader's next observation (the hot path, kept bare).
Step = float | Pause | Open | Close | Cancel


def carry_out(step: Pause | Open | Close | Cancel, driver: StepDriver[R]) -> R:
    """Have `driver` carry out a step other than a wait."""
    if isinstance(step, Open):
        return driver.open(step.feed)
    if isinstance(step, Close):
        return driver.close(step.grace_s)
    if isinstance(step, Pause):
        return driver.pause(step.seconds)
    return driver.cancel(step.response_id)


@attrs.frozen(slots=True)
class Finished:
    """The turn is over: its result."""

    result: TurnResult


def advance(steps: Generator[Step, Reply, TurnResult], reply: Reply) -> Step | Finished:
    """The turn's next step, given what came of the last one (None to begin)."""
    try:
        return steps.send(reply)
    except StopIteration as finished:
        return Finished(finished.value)


def _raised(reply: Reply) -> None:
    """Raise the exception a step raised instead of completing."""
    if isinstance(reply, BaseException):
        raise reply


# -- the turn --------------------------------------------------------------------------------
def turn_steps(
    recording: TurnRecording,
    interrupted: Callable[[], bool],
    now: Callable[[], float],
    *,
    idle_timeout_s: float | None,
    trace: str | os.PathLike[str] | None,
    secrets: Sequence[str],
    blind_while_busy: bool = False,
    turn_timeout_s: float | None = None,
) -> Generator[Step, Reply, TurnResult]:
    """The whole turn as steps (see the module docstring); returns its result, its trace
    written. `blind_while_busy`: the reader shares the driver's event loop (`Watchdog`);
    `turn_timeout_s`: the turn's wall-clock limit (None: none)."""
    try:
        deadline = TurnDeadline.of(turn_timeout_s, now())
        previous: AttemptFeed | None = None
        for feed in recording.attempts():
            late = _waits_past(deadline, recording.wait_s)
            if late is not None:  # the turn ends now rather than wait past its limit
                feed.fail(late, now())
                continue
            if previous is not None:  # the caller hears of every attempt after the first
                reason, wait_s = previous.attempt.reason, float(recording.wait_s)
                recording.log.retry(RetryNotice(feed.number, feed.kind, reason, wait_s))
            previous = feed
            for pause in pause_slices(recording.wait_s, interrupted, now):
                _raised((yield Pause(pause)))
            watchdog = Watchdog(
                time.monotonic, interrupted, idle_timeout_s, blind_while_busy=blind_while_busy,
                deadline=deadline,
            )
            yield from attempt_steps(feed, watchdog, now)
        for response_id in recording.cancels:
            _raised((yield Cancel(response_id)))
    except BaseException:
        recording.abandon(trace, list(secrets))
        raise
    return recording.finish(trace, list(secrets))


def _waits_past(deadline: TurnDeadline | None, wait_s: float) -> TurnTimeout | None:
    """The `TurnTimeout` that ends the turn now when waiting `wait_s` before its next attempt
    would reach its deadline (or it has passed already), else None."""
    if deadline is not None and time.monotonic() + wait_s >= deadline.at:
        return deadline.timeout()
    return None


def attempt_steps(
    feed: AttemptFeed, watchdog: Watchdog, now: Callable[[], float]
) -> Generator[Step, Reply, None]:
    """One attempt as steps: retired at once on an interrupt, or with the turn's time up,
    before anything is sent, else opened, run by `attempt_loop` until final, and closed (see
    the module docstring)."""
    unsent = watchdog.before_sending()
    if unsent is not None:
        feed.fail(unsent, now())
        return
    try:
        _raised((yield Open(feed)))
        stopped = False
        if not feed.final:  # a driver may feed it while opening (an error, a whole response)
            stopped = yield from attempt_loop(feed, watchdog, now)
    except GeneratorExit:
        raise
    except BaseException:
        _raised((yield Close(0.0)))
        raise
    _raised((yield Close(0.0 if stopped else FINISH_GRACE_S)))


def attempt_loop(
    feed: AttemptFeed, watchdog: Watchdog, now: Callable[[], float]
) -> Generator[float, Reply, bool]:
    """Run one attempt from observations: yields how long to wait for the next one, receives it
    (None after a silent wait; stamped with its arrival, or bare for "arrived now"), and returns
    once the attempt is final: True when the watchdog stopped it (interrupt, the turn's
    deadline, idle timeout), False when an observation ended it."""
    while True:
        item = yield watchdog.wait_s()
        if item is None:
            stop: Interrupt | TurnTimeout | IdleTimeout | None = watchdog.after_silence()
            if stop is not None:
                feed.fail(stop, now())
                return True
            continue
        observation: Observation
        arrived: float | None
        if isinstance(item, tuple):
            arrived, observation = item
        else:
            arrived, observation = None, item
        if isinstance(observation, BaseException):
            raise observation
        stop = watchdog.before_item(type(observation) is Chunk, arrived)
        t = now()
        if stop is not None:
            feed.fail(stop, t)
            return True
        if feed.observe(observation, t):
            return False
        watchdog.after_item()


def drive(steps: Generator[Step, Reply, TurnResult], driver: SyncStepDriver) -> TurnResult:
    """Carry out a turn's steps on this thread and return its result. An exception a step
    raises goes back into the turn, which closes the reader, writes the abandoned trace and
    raises it here."""
    wait = driver.wait
    step = advance(steps, None)
    while not isinstance(step, Finished):
        try:
            reply = wait(step) if isinstance(step, float) else carry_out(step, driver)
        except BaseException as error:  # the turn records it and raises it again
            reply = error
        step = advance(steps, reply)
    return step.result


def pause_slices(
    seconds: float, interrupted: Callable[[], bool], now: Callable[[], float]
) -> Generator[float, None, None]:
    """The sleeps that make up a wait of `seconds` before an HTTP retry, each at most one poll
    interval, ending at once when the caller interrupts (the next attempt then records it)."""
    end = now() + seconds
    while not interrupted():
        left = end - now()
        if left <= 0:
            return
        yield min(POLL_S, left)


# -- starting a turn -------------------------------------------------------------------------
def http_policy(policy: TurnPolicy, client: Any) -> TurnPolicy:
    """The policy with `max_http_retries` resolved: None takes the client's own `max_retries`
    (the engine does the retrying; its requests go out with `max_retries=0`)."""
    if policy.max_http_retries is not None:
        return policy
    own = getattr(client, "max_retries", 0)
    return attrs.evolve(policy, max_http_retries=own if type(own) is int and own >= 0 else 0)


@attrs.frozen
class TurnStart:
    """What `run_turn` and `arun_turn` begin with: the checked call, the policy with its HTTP
    retry budget resolved, the client with its own retries off, the secrets to keep out of the
    trace, the turn's clock and its recording (with the jitter seed drawn)."""

    client: Any
    request: dict[str, Any]
    policy: TurnPolicy
    interrupted: Callable[[], bool]
    secrets: list[str]
    now: Callable[[], float]
    recording: TurnRecording
    trace: str | os.PathLike[str] | None

    def steps(self, *, blind_while_busy: bool = False) -> Generator[Step, Reply, TurnResult]:
        """The turn as steps (`turn_steps`)."""
        return turn_steps(
            self.recording,
            self.interrupted,
            self.now,
            idle_timeout_s=self.policy.idle_timeout_s,
            trace=self.trace,
            secrets=self.secrets,
            blind_while_busy=blind_while_busy,
            turn_timeout_s=self.policy.turn_timeout_s,
        )


def start_turn(client: Any, request: Any, options: TurnOptions, *, entry: str) -> TurnStart:
    """Check a `run_turn` / `arun_turn` call (raising `TypeError`/`ValueError` for a wrong one)
    and set the turn up; nothing is sent yet."""
    checked, chosen, interrupted = check_turn_call(client, request, options, entry=entry)
    secrets = client_secrets(client)
    chosen = http_policy(chosen, client)
    seed = random.SystemRandom().getrandbits(32)  # the retry jitter's seed, kept in the trace
    callbacks = options.get("callbacks")
    return TurnStart(
        client=client.with_options(max_retries=0),  # the engine owns every retry
        request=checked,
        policy=chosen,
        interrupted=interrupted,
        secrets=secrets,
        now=turn_clock(),
        recording=TurnRecording(
            chosen, callbacks, entry=entry, request=checked, seed=seed,
            keep_records=options.get("trace") is not None,
        ),
        trace=options.get("trace"),
    )
