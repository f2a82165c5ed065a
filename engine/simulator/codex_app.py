"""The real `codex app-server` against the built-in Responses simulator: offline, no login.

    with ResponsesSimulator(scenario) as sim, loopback_session(sim, home) as session:
        result = session.run_turn("What is the capital of France?")

`loopback_session` is `CodexSession.for_endpoint` with the `CODEX_HOME` the caller chooses (the
tests and the demo keep it, to look inside) and the dummy key `LOOPBACK_KEY`; its `-c`
configuration is `engine.drivers.codex.endpoint_config` (a custom model provider pointing at the
simulator: no login, no network; shared/CODEX_APP_SERVER.md). The codex binary is
`engine.drivers.codex.find_codex()`: `STREAMFSM_CODEX`, else `codex` on PATH, else the npm
install `.ci/run` makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.drivers.codex import ENDPOINT_KEY_VAR, CodexSession, endpoint_config, find_codex

__all__ = ["LOOPBACK_KEY", "LOOPBACK_MODEL", "codex_available", "find_codex", "loopback_session"]

#: The dummy key codex sends the simulator, and the model it names.
LOOPBACK_KEY = "sk-loopback-0123456789abcdefghij"
LOOPBACK_MODEL = "gpt-5.1-codex"


def loopback_session(
    sim: Any,
    codex_home: str | Path,
    *,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    **options: Any,
) -> CodexSession:
    """A `CodexSession` whose codex talks to `sim` (a `ResponsesSimulator`) with `codex_home`
    as its `CODEX_HOME`; `config` adds `-c` overrides, `options` go to `CodexSession`."""
    return CodexSession(
        command=command,
        config={**endpoint_config(sim.base_url, LOOPBACK_MODEL), **(config or {})},
        env={"CODEX_HOME": str(codex_home), ENDPOINT_KEY_VAR: LOOPBACK_KEY, **(env or {})},
        **options,
    )


def codex_available() -> bool:
    """Whether a codex binary can be found."""
    return find_codex() is not None
