"""Checks on what callers pass in: a wrong call raises `TypeError`/`ValueError` with one clear line."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Mapping, TypedDict

from engine.log.eventlog import Callbacks
from machines.records import TurnPolicy


class TurnOptions(TypedDict, total=False):
    """The keyword options of `run_turn` and `arun_turn`, every one optional: `callbacks` (an
    `engine.Callbacks`), `policy` (an `engine.TurnPolicy`, default `TurnPolicy()`), `trace` (a
    path the turn's trace is written to), `interrupt` (a `threading.Event`, or a zero-argument
    callable, that tells when the caller wants the turn stopped)."""

    callbacks: Callbacks | None
    policy: TurnPolicy | None
    trace: str | os.PathLike[str] | None
    interrupt: threading.Event | Callable[[], bool] | None


def check_callbacks(callbacks: Any) -> None:
    """Raise `TypeError` unless `callbacks` is an `engine.Callbacks` or None."""
    if callbacks is not None and not isinstance(callbacks, Callbacks):
        raise TypeError(f"callbacks must be engine.Callbacks or None, not {type(callbacks).__name__}")


def check_policy(policy: Any) -> TurnPolicy:
    """The policy to use: `policy` itself, or the default `TurnPolicy()` for None; `TypeError`
    for anything else."""
    if policy is None:
        return TurnPolicy()
    if not isinstance(policy, TurnPolicy):
        raise TypeError(f"policy must be engine.TurnPolicy or None, not {type(policy).__name__}")
    return policy


def check_trace(trace: Any) -> None:
    """Refuse a trace path that could not be written when the turn ends: `TypeError` for a
    non-path (or a bytes path), `ValueError` for a missing directory or a path that is one."""
    if trace is None:
        return
    if not isinstance(trace, (str, os.PathLike)):
        raise TypeError(f"trace must be a path or None, not {type(trace).__name__}")
    # The trace is written when the turn ends; a path that cannot be written would then lose the
    # result of a turn already paid for, so the obvious mistakes are refused before any request.
    path = os.fspath(trace)
    if isinstance(path, bytes):
        raise TypeError("trace must be a str or os.PathLike of str, not bytes")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"trace directory does not exist: {folder}")
    if os.path.isdir(path):
        raise ValueError(f"trace path is a directory: {path}")


def check_request(request: Any) -> dict[str, Any]:
    """The `responses.create` arguments without `stream` (the engine sets it); `TypeError` for a
    non-dict, `ValueError` when the caller set `stream` to anything but True."""
    if not isinstance(request, dict):
        raise TypeError(f"request must be a dict of responses.create arguments, not {type(request).__name__}")
    if request.get("stream", True) is not True:
        raise ValueError("request sets stream to something other than True; turns always stream")
    return {key: value for key, value in request.items() if key != "stream"}


def interrupt_check(interrupt: Any) -> Callable[[], bool]:
    """A zero-argument function telling whether the caller wants the turn stopped."""
    if interrupt is None:
        return lambda: False
    if isinstance(interrupt, threading.Event):
        return interrupt.is_set
    if callable(interrupt):
        return lambda: bool(interrupt())
    raise TypeError(
        f"interrupt must be a threading.Event, a zero-argument callable or None, "
        f"not {type(interrupt).__name__}"
    )


def check_turn_call(
    client: Any, request: Any, options: Mapping[str, Any], *, entry: str
) -> tuple[dict[str, Any], TurnPolicy, Callable[[], bool]]:
    """Check a `run_turn` / `arun_turn` call (`entry` names it); return (request, policy,
    interrupt check)."""
    import openai

    unknown = sorted(set(options) - TurnOptions.__optional_keys__)
    if unknown:
        raise TypeError(f"{entry}() got an unexpected keyword argument {unknown[0]!r}")
    if entry == "arun_turn" and isinstance(client, openai.OpenAI):
        raise TypeError("arun_turn needs an openai.AsyncOpenAI client; use run_turn")
    if entry != "arun_turn" and isinstance(client, openai.AsyncOpenAI):
        raise TypeError("run_turn needs a synchronous openai.OpenAI client; use arun_turn")
    if not hasattr(client, "responses"):
        raise TypeError(f"client must be an openai client, not {type(client).__name__}")
    checked = check_request(request)
    check_callbacks(options.get("callbacks"))
    checked_policy = check_policy(options.get("policy"))
    check_trace(options.get("trace"))
    return checked, checked_policy, interrupt_check(options.get("interrupt"))
