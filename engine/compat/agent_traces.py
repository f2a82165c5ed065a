"""Where a compat call writes its trace: the file the caller names, else one new file per call in
the directory the agent names (`TRACE_DIR_ATTRIBUTE`), so a host records every call by setting
one attribute, without changing the seed's signatures."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from engine.drivers.arguments import check_trace

__all__ = ["TRACE_DIR_ATTRIBUTE", "trace_path"]

#: An agent attribute naming a directory: every compat call made with that agent writes its trace
#: there (`<function>-<ns>-<n>.jsonl`) unless the call passes `trace=`.
TRACE_DIR_ATTRIBUTE = "streamfsm_trace_dir"

_trace_numbers = itertools.count(1)


def trace_path(
    agent: Any, trace: str | os.PathLike[str] | None, function: str
) -> str | os.PathLike[str] | None:
    """The trace file of one call of `function`: `trace` (checked: `TypeError`/`ValueError` for
    one that cannot be written), else a new file in the agent's trace directory, else None."""
    if trace is not None:
        check_trace(trace)
        return trace
    directory = getattr(agent, TRACE_DIR_ATTRIBUTE, None)
    if isinstance(directory, (str, os.PathLike)) and os.fspath(directory):
        name = f"{function}-{time.time_ns()}-{next(_trace_numbers)}.jsonl"
        return os.path.join(os.fspath(directory), name)
    return None
