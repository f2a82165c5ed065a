"""What `import engine` and the commands that need no network load: never the openai package.

Every `streamfsm` command and the pytest plugin import `engine`; replay, show, consume and the
machines never talk to a server, so they must not pay for importing the openai SDK (which costs
more than all of streamfsm). Each check runs in a fresh interpreter and looks at `sys.modules`.
The public names stay reachable from `engine` (loaded on first use).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "replay_fixtures" / "happy_text.jsonl"

#: Packages a run without a network turn must not load.
HEAVY = ("openai", "pydantic", "httpx2", "hypothesis")


def _loaded_after(code: str) -> list[str]:
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}} & set({list(HEAVY)!r}))))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    loaded: list[str] = json.loads(run.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "code",
    [
        "import engine",
        "import engine.cli",
        "import engine.testing.pytest_plugin",
        f"import engine; assert engine.replay({str(FIXTURE)!r}).identical",
        f"from engine.cli import main; assert main(['replay', {str(FIXTURE)!r}]) == 0",
        f"from engine.cli import main; assert main(['show', {str(FIXTURE)!r}]) == 0",
        "from engine.cli import main; assert main(['diagram']) == 0",
        "import engine; assert engine.consume([b'data: {}\\n\\n']).outcome == 'error'",
    ],
    ids=["import", "cli", "pytest-plugin", "replay", "replay-command", "show", "diagram", "consume"],
)
def test_no_sdk_without_a_network_turn(code: str) -> None:
    assert _loaded_after(code) == []


def test_a_turn_loads_the_sdk_and_every_public_name_is_there() -> None:
    code = """
        import engine, typing
        names = {name: getattr(engine, name) for name in engine.__all__}
        assert all(value is not None for value in names.values())
        assert set(engine.__all__) <= set(dir(engine))
        import openai
        client = openai.OpenAI(api_key="sk-local", base_url="http://127.0.0.1:9/v1", max_retries=0)
        result = engine.run_turn(client, {"model": "gpt-5", "input": "hi"},
                                 policy=engine.TurnPolicy(max_stream_retries=0, fallback=False,
                                                          max_http_retries=0))
        assert result.outcome == "error", result.outcome  # nothing listens on port 9
    """
    assert "openai" in _loaded_after(code)


def test_an_unknown_name_is_an_attribute_error() -> None:
    import engine

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        engine.nothing_here  # noqa: B018
