"""streamfsm's structlog pipeline.

Log lines go to the standard-library logger named "streamfsm", so a library user sees nothing
unless they configure logging (`logging.basicConfig(level="DEBUG")`, or the CLI's `--log`).
Processors, in order: drop below the logger's level (cheap when filtered out), add the level,
scrub anything shaped like a secret, render one JSON line.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import structlog

from engine.log.redaction import scrub

__all__ = ["log"]


def _scrub_secrets(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {key: scrub(value) for key, value in event_dict.items()}


def _render(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


log = structlog.wrap_logger(
    logging.getLogger("streamfsm"),
    processors=[
        structlog.stdlib.filter_by_level,
        structlog.stdlib.add_log_level,
        _scrub_secrets,
        structlog.processors.JSONRenderer(serializer=_render),
    ],
    wrapper_class=structlog.stdlib.BoundLogger,
)
