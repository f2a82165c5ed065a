"""streamfsm's structlog pipeline.

Log lines go to the standard-library logger named "streamfsm", so a library user sees nothing
unless they configure logging (`logging.basicConfig(level="DEBUG")`, or the CLI's `--log`). The
logger holds a `NullHandler`: with no logging configured at all, Python's last-resort handler
does not print its warnings and errors to stderr either.
Processors, in order: drop below the logger's level (cheap when filtered out), add the level,
scrub anything shaped like a secret, render one JSON line.

`log_to(stream)` is for a program that is streamfsm (the `streamfsm` command's `--log`): every
line it writes to the stream is one of these JSON objects, and nothing else reaches it: the
records of other libraries (the `transitions` library logs every trigger at DEBUG) and Python's
warnings are dropped instead of falling through to the last-resort handler.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog

from engine.log.redaction import scrub

__all__ = ["log", "log_to"]


def _scrub_secrets(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> Mapping[str, Any]:
    return {key: scrub(value) for key, value in event_dict.items()}


def _render(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


_logger = logging.getLogger("streamfsm")
if not any(isinstance(handler, logging.NullHandler) for handler in _logger.handlers):
    _logger.addHandler(logging.NullHandler())

#: The library's structlog logger: `log.info("event", key=value)` writes one scrubbed JSON line
#: to the "streamfsm" stdlib logger at that level.
log = structlog.wrap_logger(
    _logger,
    processors=[
        structlog.stdlib.filter_by_level,
        structlog.stdlib.add_log_level,
        _scrub_secrets,
        structlog.processors.JSONRenderer(serializer=_render),
    ],
    wrapper_class=structlog.stdlib.BoundLogger,
)


def log_to(stream: TextIO) -> None:
    """Write streamfsm's log lines (all levels, one JSON object each) to `stream`, and no other
    library's: their records and Python's warnings go nowhere."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(handler)
    _logger.setLevel(logging.DEBUG)
    _logger.propagate = False
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())  # nothing falls through to the last resort
    logging.captureWarnings(True)
