"""What a replay found: the first record where it differs from the recording, if any.

Shared by every protocol's replay (`engine.drivers.replay`).
"""

from __future__ import annotations

from typing import Any

import attrs

from engine.log.trace import dumps

__all__ = ["Divergence", "ReplayReport"]


@attrs.frozen(slots=True)
class Divergence:
    """The first record where a replay differs from the recording: its seq, the recorded record and the replayed one (None where one side has no record)."""
    seq: int
    recorded: dict[str, Any] | None
    replayed: dict[str, Any] | None

    def describe(self) -> str:
        """One line: `seq N: recorded {...}; replayed {...}`."""
        return f"seq {self.seq}: recorded {_show(self.recorded)}; replayed {_show(self.replayed)}"


def _show(record: dict[str, Any] | None) -> str:
    if record is None:
        return "nothing"
    return dumps(record).decode()


@attrs.frozen(slots=True)
class ReplayReport:
    """The outcome of replaying one trace: its path, how many records it holds, the first
    divergence (None when identical) and, for a turn cut short by an exception in its driver, that
    exception's class name (`abandoned`: the records up to that point were compared)."""
    path: str
    records: int
    divergence: Divergence | None
    abandoned: str | None = None

    @property
    def identical(self) -> bool:
        """True when every replayed record equals the recorded one."""
        return self.divergence is None
