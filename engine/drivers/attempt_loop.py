"""The attempt loop the sync and async drivers share: only how they wait differs.

A driver sends each attempt's request and reads its body on a reader (a thread, or a task) that
hands over *observations* in the shared vocabulary: `Chunk`s, then `EndOfStream`, or the
`HttpError` / `TransportFault` an exception stands for (`engine.drivers.transport`), or an
exception that is not the network's doing (re-raised on the caller's side). The reader stamps
each one with the monotonic time it arrived (`stamped`). The driver's own thread or task runs
`attempt_loop`, a generator:

    loop = attempt_loop(feed, watchdog, now)
    wait_s = next(loop)                      # how long to wait for the next observation
    while True:
        item = <the next stamped observation within wait_s, or None after a silent wait>
        wait_s = loop.send(item)             # StopIteration: the attempt is over

The loop decides everything else: an interrupt or an idle timeout (`engine.drivers.watchdog`)
ends the attempt between observations, even before the response headers; every observation is
fed to the attempt with the clock reading; the attempt's final state ends the loop. So the two drivers cannot drift
apart, and an interrupt is honoured within one poll interval. The loop's return value
(`StopIteration.value`) tells the driver whether the watchdog stopped the attempt (the body will
not end by itself: abort the request now) or an observation ended it.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Generator

import attrs

from engine.drivers.arguments import check_turn_call
from engine.drivers.watchdog import POLL_S, Watchdog, turn_clock
from engine.drivers.recording import AttemptFeed, TurnRecording
from engine.log.redaction import client_secrets
from engine.log.eventlog import RecordedInput
from machines.records import Chunk, IdleTimeout, Interrupt, TurnPolicy

__all__ = [
    "Observation",
    "Stamped",
    "attempt_loop",
    "http_policy",
    "pause_slices",
    "stamped",
    "TurnStart",
    "start_turn",
]

#: What a reader hands over: an input record, or an exception to re-raise on the driver's side.
Observation = RecordedInput | BaseException

#: An observation with the `time.monotonic()` reading of its arrival.
Stamped = tuple[float, Observation]


def stamped(observation: Observation) -> Stamped:
    """`observation` stamped with the time it arrived (now)."""
    return (time.monotonic(), observation)


def attempt_loop(
    feed: AttemptFeed, watchdog: Watchdog, now: Callable[[], float]
) -> Generator[float, Stamped | Observation | None, bool]:
    """Run one attempt from observations: yields how long to wait for the next one, receives it
    (None after a silent wait; stamped with its arrival, or bare for "arrived now"), and returns
    once the attempt is final: True when the watchdog stopped it (interrupt, idle timeout),
    False when an observation ended it."""
    while True:
        item = yield watchdog.wait_s()
        if item is None:
            stop: Interrupt | IdleTimeout | None = watchdog.after_silence()
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


def start_turn(
    client: Any,
    request: Any,
    callbacks: Any,
    policy: Any,
    trace: Any,
    interrupt: Any,
    *,
    entry: str,
) -> TurnStart:
    """Check a `run_turn` / `arun_turn` call (raising `TypeError`/`ValueError` for a wrong one)
    and set the turn up; nothing is sent yet."""
    checked, chosen, interrupted = check_turn_call(
        client, request, callbacks, policy, trace, interrupt, asynchronous=entry == "arun_turn"
    )
    secrets = client_secrets(client)
    chosen = http_policy(chosen, client)
    seed = random.SystemRandom().getrandbits(32)  # the retry jitter's seed, kept in the trace
    return TurnStart(
        client=client.with_options(max_retries=0),  # the engine owns every retry
        request=checked,
        policy=chosen,
        interrupted=interrupted,
        secrets=secrets,
        now=turn_clock(),
        recording=TurnRecording(chosen, callbacks, entry=entry, request=checked, seed=seed),
    )
