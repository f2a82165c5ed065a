"""The pytest plugin (`pytest --streamfsm-replay PATH...`), through real pytest sessions: every
trace is one item that passes when identical, fails naming the first divergence, and errors for
an invalid trace; a missing path is a usage error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

FIXTURES = Path(__file__).resolve().parent.parent / "replay_fixtures"
ROOT = FIXTURES.parent


def _copy(pytester: pytest.Pytester, name: str, to: str | None = None) -> Path:
    target = pytester.path / (to or name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURES / name, target)
    return target


def _diverging(pytester: pytest.Pytester) -> Path:
    """happy_text with one delivered text delta altered: the replay delivers the original."""
    lines = (FIXTURES / "happy_text.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    for index, line in enumerate(lines):
        if '"effect":"text_delta"' in line:
            lines[index] = line.replace('"data":"The capital of Fr"', '"data":"The capital of Xx"')
            assert lines[index] != line
            break
    target = pytester.path / "diverging.jsonl"
    target.write_text("".join(lines), encoding="utf-8")
    return target


def test_an_identical_trace_is_one_passing_item(pytester: pytest.Pytester) -> None:
    _copy(pytester, "happy_text.jsonl")
    result = pytester.runpytest("-v", "--streamfsm-replay", "happy_text.jsonl")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*collected 1 item", "happy_text.jsonl::replay PASSED*"])
    assert result.ret == pytest.ExitCode.OK


def test_a_diverging_trace_fails_naming_the_first_difference(pytester: pytest.Pytester) -> None:
    _diverging(pytester)
    result = pytester.runpytest("--streamfsm-replay", "diverging.jsonl")
    result.assert_outcomes(failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*_ replay diverging.jsonl _*",
            'first divergence: seq 9: recorded {"seq":9,"kind":"effect",*"data":"The capital of Xx"};'
            ' replayed {"seq":9,*"data":"The capital of Fr"}',
            "FAILED diverging.jsonl::replay - first divergence: seq 9*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert "pytest_plugin.py" not in result.stdout.str()


def test_an_invalid_trace_is_an_error_not_a_failure(pytester: pytest.Pytester) -> None:
    whole = (FIXTURES / "happy_text.jsonl").read_bytes()
    (pytester.path / "truncated.jsonl").write_bytes(whole[: len(whole) // 2])  # cut mid-line
    (pytester.path / "garbage.jsonl").write_text("not a trace\n", encoding="utf-8")
    result = pytester.runpytest("--streamfsm-replay", "truncated.jsonl", "garbage.jsonl")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of replay truncated.jsonl*",
            "*invalid trace: *truncated.jsonl: line * is not JSON",
            "*ERROR at setup of replay garbage.jsonl*",
            "*invalid trace: *garbage.jsonl: line 1 is not JSON",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_a_directory_gives_one_item_per_trace(pytester: pytest.Pytester) -> None:
    names = ["happy_text.jsonl", "drop_then_retry.jsonl", "function_call.jsonl"]
    for name in names:
        _copy(pytester, name, f"traces/{name}")
    _copy(pytester, "http_429.jsonl", "traces/nested/http_429.jsonl")
    (pytester.path / "traces" / "notes.txt").write_text("not a trace\n", encoding="utf-8")
    _copy(pytester, "eof_then_retry.jsonl", "single.jsonl")
    result = pytester.runpytest(
        "-v", "--streamfsm-replay", "traces", "--streamfsm-replay=single.jsonl"
    )
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*collected 5 items"])
    for nodeid in [
        "traces/drop_then_retry.jsonl::replay",
        "traces/function_call.jsonl::replay",
        "traces/happy_text.jsonl::replay",
        "traces/nested/http_429.jsonl::replay",
        "single.jsonl::replay",
    ]:
        result.stdout.fnmatch_lines([f"{nodeid} PASSED*"])


def test_trace_items_run_beside_ordinary_tests_and_honour_k(pytester: pytest.Pytester) -> None:
    _copy(pytester, "happy_text.jsonl")
    _copy(pytester, "http_401.jsonl")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    # With `=` the option takes one path and leaves the test file as a collection argument.
    result = pytester.runpytest(
        "--streamfsm-replay=happy_text.jsonl", "test_plain.py", "--streamfsm-replay=http_401.jsonl"
    )
    result.assert_outcomes(passed=3)
    result = pytester.runpytest(
        "-v", "--streamfsm-replay", "happy_text.jsonl", "http_401.jsonl", "-k", "http_401"
    )
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["http_401.jsonl::replay PASSED*"])


def test_a_trace_outside_the_rootdir(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "happy_text.jsonl"
    shutil.copyfile(FIXTURES / "happy_text.jsonl", elsewhere)
    result = pytester.runpytest(
        "-v", "--rootdir", str(pytester.path), "--streamfsm-replay", str(elsewhere)
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*{elsewhere.as_posix()}::replay PASSED*"])


def test_a_missing_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--streamfsm-replay", "no/such/dir")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.errlines if line] == [
        "ERROR: --streamfsm-replay: no such file or directory: no/such/dir"
    ]
    assert result.outlines == []


def test_without_the_option_nothing_is_added(pytester: pytest.Pytester) -> None:
    _copy(pytester, "happy_text.jsonl")
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    pytester.runpytest().assert_outcomes(passed=1)


def test_the_projects_own_suite_replays_every_fixture_through_the_plugin() -> None:
    # `addopts` holds --streamfsm-replay=replay_fixtures: each fixture is one collected item.
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/test_sse_decoder.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    collected = [line for line in run.stdout.splitlines() if line.endswith(".jsonl::replay")]
    assert collected == [f"replay_fixtures/{p.relative_to(FIXTURES).as_posix()}::replay"
                         for p in sorted(FIXTURES.rglob("*.jsonl"))]  # subfolders too
    assert len(collected) >= 31


@pytest.mark.slow
def test_on_worker_processes_every_fixture_is_replayed_once() -> None:
    """The suite runs on pytest-xdist workers (`-n` in addopts): every worker collects the trace
    items alike, and each one runs, and passes, on exactly one of them."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "-v", "-p", "no:cacheprovider",
         "-k", "jsonl", "tests/test_sse_decoder.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    passed = [line.split() for line in run.stdout.splitlines()
              if line.rstrip().endswith(".jsonl::replay") and " PASSED " in line]
    assert sorted(words[-1] for words in passed) == [
        f"replay_fixtures/{p.relative_to(FIXTURES).as_posix()}::replay"
        for p in sorted(FIXTURES.rglob("*.jsonl"))
    ]
    assert {words[0] for words in passed} == {"[gw0]", "[gw1]"}  # both workers took a share
