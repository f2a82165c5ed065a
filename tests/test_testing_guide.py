"""docs/testing.md, run as written: its application, its tests and its scenario file are copied
into a new project (each code block whose first line is `# PATH` becomes that file), and pytest
runs them there, in its own interpreter as a user would (their module names are the user's, so
they may be this suite's own): the plain tests, the fault scenarios, and the cassette recorded
through an upstream (the simulator standing in for the real API), then served without it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.simulator.scenarios import load_fixture
from engine.simulator.server import ResponsesSimulator

pytest_plugins = ["pytester"]

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
BLOCK = re.compile(r"```(?:python|toml)\n# (\S+)\n(.*?)```", re.DOTALL)


def _project(pytester: pytest.Pytester) -> list[str]:
    """Write every `# PATH` block of the guide into the project; the paths written."""
    written = []
    for path, body in BLOCK.findall(GUIDE.read_text(encoding="utf-8")):
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body if path.endswith(".py") else f"# {path}\n{body}", encoding="utf-8")
        written.append(path)
    return written


def test_the_guides_files_are_all_there(pytester: pytest.Pytester) -> None:
    assert _project(pytester) == [
        "myagent.py", "tests/test_myagent.py", "tests/scenarios/flaky.toml",
        "tests/test_faults.py", "tests/test_cassettes.py",
    ]


@pytest.mark.slow
def test_the_guides_tests_and_fault_scenarios_pass(pytester: pytest.Pytester) -> None:
    _project(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "tests/test_myagent.py",
                                "tests/test_faults.py")
    result.assert_outcomes(passed=5)


@pytest.mark.slow
def test_the_guides_cassette_is_missing_then_recorded_then_served(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _project(pytester)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "tests/test_cassettes.py")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cassette * is missing: record it with --streamfsm-record=once*"])
    with ResponsesSimulator(load_fixture("happy_text")) as upstream:
        monkeypatch.setenv("STREAMFSM_UPSTREAM", upstream.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-real-key-0123456789abcdef")
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--streamfsm-record=once",
                                    "tests/test_cassettes.py")
        result.assert_outcomes(passed=1)
        assert len(upstream.requests) == 1
    cassette = pytester.path / "tests" / "cassettes" / "capital_of_france"
    assert [path.name for path in cassette.iterdir()] == ["0001-post-responses.jsonl"]
    assert "sk-real-key" not in (cassette / "0001-post-responses.jsonl").read_text()
    monkeypatch.delenv("STREAMFSM_UPSTREAM")
    monkeypatch.delenv("OPENAI_API_KEY")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "tests/test_cassettes.py")
    result.assert_outcomes(passed=1)
