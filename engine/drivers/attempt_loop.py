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

The loop decides everything else: an interrupt or an idle timeout (`Watchdog`) ends the attempt
between observations, even before the response headers; every observation is fed to the attempt
with the clock reading; the attempt's final state ends the loop. So the two drivers cannot drift
apart, and an interrupt is honoured within one poll interval. The loop's return value
(`StopIteration.value`) tells the driver whether the watchdog stopped the attempt (the body will
not end by itself: abort the request now) or an observation ended it.

Idle time is server silence, judged by arrival stamps: the idle clock restarts when bytes
*arrive*, not when the driver gets round to them, and it only runs while the reader could
really see bytes come in. A reader thread sees them while the caller's thread runs callbacks;
a reader task on the driver's own event loop does not, so for it (`Watchdog(...,
blind_while_busy=True)`) time the loop spent elsewhere (feeding the machine, callbacks, other
tasks making a wait end late) is not counted, and once the idle time seems to be up the loop
takes a few zero-length looks, giving the reader the loop to itself for a moment, before it
declares the silence. A busy event loop never turns into a false idle timeout.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Generator

import attrs

from engine.drivers.arguments import check_turn_call
from engine.drivers.recording import AttemptFeed, TurnRecording
from engine.log.redaction import client_secrets
from engine.log.eventlog import RecordedInput
from machines.records import Chunk, IdleTimeout, Interrupt, TurnPolicy

__all__ = [
    "Observation",
    "POLL_S",
    "Stamped",
    "Watchdog",
    "attempt_loop",
    "http_policy",
    "pause_slices",
    "stamped",
    "TurnStart",
    "start_turn",
    "turn_clock",
]

#: How often a waiting driver looks at the interrupt while the socket is silent (seconds).
POLL_S = 0.02

#: Zero-length looks a reader on the driver's event loop gets before its silence is declared:
#: enough loop iterations for bytes already in the socket to travel up to the driver.
SETTLE_LOOKS = 8

#: What a reader hands over: an input record, or an exception to re-raise on the driver's side.
Observation = RecordedInput | BaseException

#: An observation with the `time.monotonic()` reading of its arrival.
Stamped = tuple[float, Observation]


def stamped(observation: Observation) -> Stamped:
    """`observation` stamped with the time it arrived (now)."""
    return (time.monotonic(), observation)


class Watchdog:
    """Decides, for a driver waiting on a body, when silence or the caller ends the attempt.

    The driver waits at most `wait_s()` for the next item (0: one zero-length look); after a
    silent wait it asks `after_silence()`, before using an item `before_item()`: either returns
    the input record that ends the attempt (an `Interrupt` or an `IdleTimeout`) or None to go on;
    after the item was fed it calls `after_item()`.

    Silence runs from `_quiet_since`: the arrival of the latest bytes, the attempt's start
    before any, moved later by every span in which a reader that shares the driver's event loop
    (`blind_while_busy`) could not look."""

    __slots__ = (
        "_clock",
        "_interrupted",
        "_idle_s",
        "_poll_s",
        "_blind",
        "_settle",
        "_looks",
        "_quiet_since",
        "_wait_end",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        interrupted: Callable[[], bool],
        idle_timeout_s: float | None,
        poll_s: float = POLL_S,
        *,
        blind_while_busy: bool = False,
    ) -> None:
        """`clock`: monotonic seconds, the clock the reader's arrival stamps are read on
        (`time.monotonic` for `stamped` observations)."""
        self._clock = clock
        self._interrupted = interrupted
        self._idle_s = idle_timeout_s
        self._poll_s = poll_s
        self._blind = blind_while_busy
        self._settle = SETTLE_LOOKS if blind_while_busy else 0
        self._looks = 0
        self._quiet_since = clock()
        self._wait_end = self._quiet_since

    def _silence(self, now: float) -> float:
        return now - self._quiet_since

    def wait_s(self) -> float:
        """How long the driver may wait for the next item."""
        now = self._clock()
        if self._idle_s is None:
            wait = self._poll_s
        else:
            wait = max(0.0, min(self._poll_s, self._idle_s - self._silence(now)))
        self._wait_end = now + wait
        return wait

    def after_silence(self) -> Interrupt | IdleTimeout | None:
        """After a wait with nothing to read: the record that ends the attempt, or None."""
        if self._interrupted():
            return Interrupt()
        if self._idle_s is None:
            return None
        now = self._clock()
        if self._blind and now > self._wait_end:
            # The wait ended late: the loop was busy elsewhere and the reader could not look.
            self._quiet_since = min(now, self._quiet_since + (now - self._wait_end))
            self._wait_end = now
        if self._silence(now) < self._idle_s:
            return None
        if self._looks < self._settle:
            self._looks += 1
            return None
        return IdleTimeout(self._idle_s)

    def before_item(self, is_bytes: bool, arrived: float | None = None) -> Interrupt | None:
        """Before an item is used: an `Interrupt` if the caller asked to stop, else None. Bytes
        restart the silence from their arrival (`arrived`, default now)."""
        if self._interrupted():
            return Interrupt()
        if is_bytes:
            self._looks = 0
            arrival = self._clock() if arrived is None else arrived
            if arrival > self._quiet_since:
                self._quiet_since = arrival
        return None

    def after_item(self) -> None:
        """The item was fed: for a reader on the driver's event loop, the silence starts again
        now, since it could not look while the item was being fed."""
        if self._blind:
            self._looks = 0
            self._quiet_since = self._clock()


def turn_clock() -> Callable[[], float]:
    """Monotonic seconds since the turn began, rounded to microseconds (the trace's `t`)."""
    start = time.monotonic()

    def now() -> float:
        return round(time.monotonic() - start, 6)

    return now


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
