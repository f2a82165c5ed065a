"""When silence or the caller ends what a driver waits on: one watchdog for every driver.

Theory of operation
===================

Every driver waits on something that may never come: a stream driver on the body of a response,
`CodexSession` on the lines of a `codex app-server`. It waits a little at a time (at most one
poll interval, `POLL_S`), and between waits asks the `Watchdog` whether to stop:

* the caller: its interrupt check (`caller_stopped()`), looked at after every wait, so an
  interrupt is honoured within one poll interval whatever the other side does;
* silence: the time since the other side was last heard (`heard(at)`), against a limit (the
  idle timeout; None: silence never ends anything). It can be paused (`pause_silence()`: the
  driver waits on its own caller, e.g. an approval, not on the other side) and starts again from
  the moment it resumes;
* deadlines: named moments by which something must have happened (`Deadlines`: a request
  unanswered for its timeout, a grace period after an interrupt); a stream turn's wall-clock
  limit (`TurnDeadline`, `TurnPolicy.turn_timeout_s`) is one the watchdog itself looks at, after
  every wait and before every item, so a server that keeps the silence from ever lasting (a byte
  now and then) or never stops sending still cannot keep the turn past it.

`wait_s()` is how long the driver may wait before it must look again: the poll interval, or less
when the silence or the turn's time runs out sooner.

Silence is judged by arrival stamps: a reader hands each observation over with the
`time.monotonic()` reading of its arrival, and the silence restarts from there, not from when the
driver got round to it. It only counts while the reader could really see data come in. A reader
thread sees it while the driver's thread runs callbacks; a reader task on the driver's own event
loop does not, so for it (`blind_while_busy=True`) time the loop spent elsewhere (feeding the
machine, callbacks, other tasks making a wait end late) is not counted, and once the silence
seems to be up the watchdog asks for a few zero-length looks, giving the reader the loop to
itself for a moment, before it declares the silence. A busy event loop never turns into a false
idle timeout.

The stream drivers use it through `before_sending()`, `after_silence()` / `before_item()` /
`after_item()` (the shared attempt loop, `engine.drivers.turn_loop`); `CodexSession` through
`caller_stopped()`, `silence_over()`, `pause_silence()` and its `Deadlines`. What ends an attempt
is an input record (`Interrupt`, `TurnTimeout`, `IdleTimeout`, in that order when several hold at
once: the caller's word first, then the turn's limit, which ends the turn, then the silence,
which only ends the attempt).
"""

from __future__ import annotations

import queue
import time
from typing import Callable, Hashable, TypeVar

import attrs

from machines.records import IdleTimeout, Interrupt, TurnTimeout

__all__ = [
    "Deadlines",
    "POLL_S",
    "SETTLE_LOOKS",
    "TurnDeadline",
    "Watchdog",
    "next_within",
    "turn_clock",
]

T = TypeVar("T")

#: How often a waiting driver looks at the interrupt while the other side is silent (seconds).
POLL_S = 0.02

#: Zero-length looks a reader on the driver's event loop gets before its silence is declared:
#: enough loop iterations for bytes already in the socket to travel up to the driver.
SETTLE_LOOKS = 8


class Deadlines:
    """Named moments by which something must have happened, on one monotonic clock.

    A deadline is set when the wait it bounds begins (`set`, or `start` to keep one already
    running), asked about (`passed`) while it matters, and forgotten once it no longer does."""

    __slots__ = ("_clock", "_due")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._due: dict[Hashable, float] = {}

    def set(self, key: Hashable, seconds: float) -> None:
        """`key` is due `seconds` from now (replacing any earlier deadline of that name)."""
        self._due[key] = self._clock() + seconds

    def start(self, key: Hashable, seconds: float) -> None:
        """`key` is due `seconds` from now unless it is running already."""
        if key not in self._due:
            self.set(key, seconds)

    def forget(self, key: Hashable) -> None:
        self._due.pop(key, None)

    def passed(self, key: Hashable) -> bool:
        """True once the deadline named `key` (if set) has come. A driver asks while it waits,
        at least once per poll interval (`Watchdog.wait_s`), so a deadline is noticed at most
        that late."""
        due = self._due.get(key)
        return due is not None and self._clock() >= due


@attrs.frozen(slots=True)
class TurnDeadline:
    """A turn's wall-clock limit: the moment `at` (on the watchdog's clock, `time.monotonic`)
    by which it must have ended, and the limit itself (`seconds`, what its `TurnTimeout` says).
    `None` where a turn has no limit."""

    at: float
    seconds: float

    @classmethod
    def of(cls, seconds: float | None, elapsed: float = 0.0) -> TurnDeadline | None:
        """The deadline of a turn limited to `seconds` that has run for `elapsed` seconds."""
        if seconds is None:
            return None
        return cls(time.monotonic() + seconds - elapsed, seconds)

    def timeout(self) -> TurnTimeout:
        """The record that says the turn reached it."""
        return TurnTimeout(self.seconds)


class Watchdog:
    """Decides, for a driver waiting on the other side, when silence or the caller ends the wait.

    The driver waits at most `wait_s()` for the next item (0: one zero-length look). A stream
    driver asks `before_sending()` before it sends the attempt's request, then, after a silent
    wait, `after_silence()`, and before using an item `before_item()`: each returns the input
    record that ends the attempt (an `Interrupt`, a `TurnTimeout` past the turn's `deadline`, an
    `IdleTimeout`) or None to go on; after the item was fed it calls `after_item()`.

    Silence runs from `_quiet_since`: the arrival of the latest data (`heard`), the watchdog's
    start before any, moved later by every span in which a reader that shares the driver's event
    loop (`blind_while_busy`) could not look; it does not run while paused."""

    __slots__ = (
        "_clock",
        "_interrupted",
        "_idle_s",
        "_poll_s",
        "_blind",
        "_settle",
        "_looks",
        "_quiet_since",
        "_paused",
        "_wait_end",
        "_deadline",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        interrupted: Callable[[], bool],
        idle_timeout_s: float | None,
        poll_s: float = POLL_S,
        *,
        blind_while_busy: bool = False,
        deadline: TurnDeadline | None = None,
    ) -> None:
        """`clock`: monotonic seconds, the clock the reader's arrival stamps are read on
        (`time.monotonic` for stamped observations); `deadline`: the turn's wall-clock limit on
        that clock (None: none)."""
        self._clock = clock
        self._interrupted = interrupted
        self._idle_s = idle_timeout_s
        self._poll_s = poll_s
        self._blind = blind_while_busy
        self._settle = SETTLE_LOOKS if blind_while_busy else 0
        self._looks = 0
        self._quiet_since = clock()
        self._paused = False
        self._wait_end = self._quiet_since
        self._deadline = deadline

    # -- the clocks ------------------------------------------------------------------------
    def wait_s(self) -> float:
        """How long the driver may wait before it must look again: one poll interval, or less
        when the silence runs out sooner."""
        now = self._clock()
        if self._idle_s is None or self._paused:
            wait = self._poll_s
        else:
            wait = max(0.0, min(self._poll_s, self._idle_s - (now - self._quiet_since)))
        if self._deadline is not None:
            wait = max(0.0, min(wait, self._deadline.at - now))
        self._wait_end = now + wait
        return wait

    def out_of_time(self) -> TurnTimeout | None:
        """The `TurnTimeout` that ends the turn once its deadline has come, else None."""
        deadline = self._deadline
        if deadline is not None and self._clock() >= deadline.at:
            return deadline.timeout()
        return None

    def caller_stopped(self) -> bool:
        """The caller asked to stop."""
        return self._interrupted()

    def heard(self, arrived: float | None = None) -> None:
        """The other side was heard at `arrived` (default now): the silence starts again from
        there (never from earlier than it already runs)."""
        self._looks = 0
        arrival = self._clock() if arrived is None else arrived
        if arrival > self._quiet_since:
            self._quiet_since = arrival

    def pause_silence(self) -> None:
        """Stop counting silence: the driver waits on its own caller, not on the other side."""
        self._paused = True

    def resume_silence(self) -> None:
        """Count silence again, from now (no-op unless paused)."""
        if self._paused:
            self._paused = False
            self._looks = 0
            self._quiet_since = self._clock()

    def silence_over(self) -> bool:
        """The silence has lasted the idle timeout (never while paused, or without one)."""
        idle = self._idle_s
        if idle is None or self._paused:
            return False
        now = self._clock()
        if self._blind and now > self._wait_end:
            # The wait ended late: the loop was busy elsewhere and the reader could not look.
            self._quiet_since = min(now, self._quiet_since + (now - self._wait_end))
            self._wait_end = now
        if now - self._quiet_since < idle:
            return False
        if self._looks < self._settle:
            self._looks += 1
            return False
        return True

    # -- a stream attempt ------------------------------------------------------------------
    def before_sending(self) -> Interrupt | TurnTimeout | None:
        """Before the attempt's request is sent: the record that retires it unsent (the caller
        stopped the turn, or its time is up), or None."""
        if self._interrupted():
            return Interrupt()
        return self.out_of_time()

    def after_silence(self) -> Interrupt | TurnTimeout | IdleTimeout | None:
        """After a wait with nothing to read: the record that ends the attempt, or None."""
        if self._interrupted():
            return Interrupt()
        late = self.out_of_time()
        if late is not None:
            return late
        if self.silence_over():
            return IdleTimeout(self._idle_s or 0.0)
        return None

    def before_item(
        self, is_bytes: bool, arrived: float | None = None
    ) -> Interrupt | TurnTimeout | None:
        """Before an item is used: an `Interrupt` if the caller asked to stop, a `TurnTimeout`
        once the turn's time is up (a server that never stops sending does not keep it going),
        else None. Bytes restart the silence from their arrival (`arrived`, default now)."""
        if self._interrupted():
            return Interrupt()
        if self._deadline is not None:
            late = self.out_of_time()
            if late is not None:
                return late
        if is_bytes:
            self.heard(arrived)
        return None

    def after_item(self) -> None:
        """The item was fed: for a reader on the driver's event loop, the silence starts again
        now, since it could not look while the item was being fed."""
        if self._blind:
            self._looks = 0
            self._quiet_since = self._clock()


def next_within(items: queue.SimpleQueue[T] | queue.Queue[T], seconds: float) -> T | None:
    """The next item a reader thread put on `items`, waiting at most `seconds` (the wait a
    watchdog allows), or None after a silent wait."""
    try:
        return items.get(timeout=seconds)
    except queue.Empty:
        return None


def turn_clock() -> Callable[[], float]:
    """Monotonic seconds since the turn began, rounded to microseconds (the trace's `t`)."""
    start = time.monotonic()

    def now() -> float:
        return round(time.monotonic() - start, 6)

    return now
