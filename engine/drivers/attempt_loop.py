"""The attempt loop the sync and async drivers share: only how they wait differs.

A driver sends each attempt's request and reads its body on a reader (a thread, or a task) that
hands over *observations* in the shared vocabulary: `Chunk`s, then `EndOfStream`, or the
`HttpError` / `TransportFault` an exception stands for (`engine.drivers.transport`), or an
exception that is not the network's doing (re-raised on the caller's side). The driver's own
thread or task runs `attempt_loop`, a generator:

    loop = attempt_loop(feed, watchdog, now)
    wait_s = next(loop)                      # how long to wait for the next observation
    while True:
        item = <the next observation within wait_s, or None after a silent wait>
        wait_s = loop.send(item)             # StopIteration: the attempt is over

The loop decides everything else: an interrupt or an idle timeout (`Watchdog`) ends the attempt
between observations, even before the response headers; every observation is fed to the attempt
with the clock reading; the attempt's final state ends the loop. So the two drivers cannot drift
apart, and an interrupt is honoured within one poll interval.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generator

import attrs

from engine.drivers.recording import AttemptFeed
from engine.log.eventlog import RecordedInput
from machines.records import Chunk, IdleTimeout, Interrupt, TurnPolicy

__all__ = [
    "Observation",
    "POLL_S",
    "Watchdog",
    "attempt_loop",
    "http_policy",
    "pause_slices",
    "turn_clock",
]

#: How often a waiting driver looks at the interrupt while the socket is silent (seconds).
POLL_S = 0.02

#: What a reader hands over: an input record, or an exception to re-raise on the driver's side.
Observation = RecordedInput | BaseException


class Watchdog:
    """Decides, for a driver waiting on a body, when silence or the caller ends the attempt.

    The driver waits at most `wait_s()` for the next item; after a silent wait it asks
    `after_silence()`, before using an item `before_item()`: either returns the input record that
    ends the attempt (an `Interrupt` or an `IdleTimeout`) or None to go on."""

    __slots__ = ("_now", "_interrupted", "_idle_s", "_last_byte", "_poll_s")

    def __init__(
        self,
        now: Callable[[], float],
        interrupted: Callable[[], bool],
        idle_timeout_s: float | None,
        poll_s: float = POLL_S,
    ) -> None:
        self._now = now
        self._interrupted = interrupted
        self._idle_s = idle_timeout_s
        self._poll_s = poll_s
        self._last_byte = now()

    def wait_s(self) -> float:
        """How long the driver may wait for the next item."""
        if self._idle_s is None:
            return self._poll_s
        return max(0.0, min(self._poll_s, self._idle_s - (self._now() - self._last_byte)))

    def after_silence(self) -> Interrupt | IdleTimeout | None:
        """After a wait with nothing to read: the record that ends the attempt, or None."""
        if self._interrupted():
            return Interrupt()
        if self._idle_s is not None and self._now() - self._last_byte >= self._idle_s:
            return IdleTimeout(self._idle_s)
        return None

    def before_item(self, is_bytes: bool) -> Interrupt | None:
        """Before an item is used: an `Interrupt` if the caller asked to stop, else None."""
        if self._interrupted():
            return Interrupt()
        if is_bytes:
            self._last_byte = self._now()
        return None


def turn_clock() -> Callable[[], float]:
    """Monotonic seconds since the turn began, rounded to microseconds (the trace's `t`)."""
    start = time.monotonic()

    def now() -> float:
        return round(time.monotonic() - start, 6)

    return now


def attempt_loop(
    feed: AttemptFeed, watchdog: Watchdog, now: Callable[[], float]
) -> Generator[float, Observation | None, None]:
    """Run one attempt from observations: yields how long to wait for the next one, receives it
    (None after a silent wait), and returns once the attempt is final."""
    while True:
        item = yield watchdog.wait_s()
        if item is None:
            stop: Interrupt | IdleTimeout | None = watchdog.after_silence()
            if stop is not None:
                feed.fail(stop, now())
                return
            continue
        if isinstance(item, BaseException):
            raise item
        stop = watchdog.before_item(type(item) is Chunk)
        t = now()
        if stop is not None:
            feed.fail(stop, t)
            return
        if feed.observe(item, t):
            return


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
