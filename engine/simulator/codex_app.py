"""The real `codex app-server` against the built-in Responses simulator: offline, no login.

    with ResponsesSimulator(scenario) as sim, loopback_session(sim, home) as session:
        result = session.run_turn("What is the capital of France?")

`loopback_config(base_url)` is the `-c` configuration that makes codex use a custom model
provider pointing at the simulator (no login, no network: shared/CODEX_APP_SERVER.md);
`loopback_session` builds a `CodexSession` with it, a fresh `CODEX_HOME` and a dummy key. The
codex binary is `engine.drivers.codex.find_codex()`: `STREAMFSM_CODEX`, else `codex` on PATH,
else the npm install `.ci/run` makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.drivers.codex import CodexSession, find_codex

__all__ = ["LOOPBACK_KEY", "LOOPBACK_KEY_VAR", "find_codex", "loopback_config", "loopback_session"]

#: The environment variable codex reads the provider's key from, and the dummy value it gets.
LOOPBACK_KEY_VAR = "STREAMFSM_LOOPBACK_KEY"
LOOPBACK_KEY = "sk-loopback-0123456789abcdefghij"


def loopback_config(base_url: str, **extra: Any) -> dict[str, Any]:
    """`-c` overrides for a provider named `loop` at `base_url` (the simulator's `/v1` URL);
    `extra` adds more (dotted keys as they are; `provider_<key>` sets `model_providers.loop.<key>`)."""
    config: dict[str, Any] = {
        "model": "gpt-5.1-codex",
        "model_provider": "loop",
        "model_providers.loop.name": "loopback",
        "model_providers.loop.base_url": base_url,
        "model_providers.loop.wire_api": "responses",
        "model_providers.loop.env_key": LOOPBACK_KEY_VAR,
        "model_providers.loop.requires_openai_auth": False,
    }
    for key, value in extra.items():
        if key.startswith("provider_"):
            config[f"model_providers.loop.{key[len('provider_'):]}"] = value
        else:
            config[key] = value
    return config


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
        config={**loopback_config(sim.base_url), **(config or {})},
        env={"CODEX_HOME": str(codex_home), LOOPBACK_KEY_VAR: LOOPBACK_KEY, **(env or {})},
        **options,
    )


def codex_available() -> bool:
    """Whether a codex binary can be found."""
    return find_codex() is not None
