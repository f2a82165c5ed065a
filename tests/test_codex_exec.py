"""The real Codex CLI (`codex exec`, @openai/codex 0.169.0) against `streamfsm serve`, offline.

Every example scenario of docs/scenarios/ is served by a real `streamfsm serve SCENARIO --port 0
--log FILE` subprocess, and `codex exec` talks to it through a custom model provider with a fresh
CODEX_HOME (no login, no network). The request log shows what codex sent.

The codex binary: `STREAMFSM_CODEX` (set by .ci/run), else the npm cache folder that .ci/run
installs into (`${XDG_CACHE_HOME:-~/.cache}/streamfsm/codex-0.169.0`); when neither holds one and
npm exists, the `codex` fixture (tests/app_support.py, shared with the app-server tests) installs
it there itself. Only without codex and without npm do these tests skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from engine.log.trace import read_trace
from app_support import CODEX_VERSION, LAUNCHER, NATIVE, codex
from test_scenarios_cli import EXAMPLES, running, served

__all__ = ["codex"]  # the fixture, imported for pytest

#: Every test here runs the real codex binary.
pytestmark = pytest.mark.slow

PARIS = "The capital of France is Paris."
LOOPBACK_KEY = "loopback-dummy-key"


@attrs.frozen
class CodexRun:
    status: int
    stdout: str
    stderr: str
    requests: list[dict[str, Any]]


def codex_exec(
    codex: Path, base_url: str, tmp_path: Path, *config: str, timeout: float = 90
) -> tuple[int, str, str]:
    """`codex exec` with a custom model provider at `base_url` and a fresh CODEX_HOME; returns its
    exit status and output. The launcher (when only it is installed) runs in its own process
    group."""
    home = tmp_path / "codex-home"
    work = tmp_path / "work"
    home.mkdir(parents=True)
    work.mkdir(parents=True)
    provider = {
        "name": '"loopback"',
        "base_url": f'"{base_url}"',
        "wire_api": '"responses"',
        "env_key": '"STREAMFSM_LOOPBACK_KEY"',
        "requires_openai_auth": "false",
    }
    argv = [str(codex), "exec", "--skip-git-repo-check", "--color", "never",
            # the tool call runs `echo`: keep codex's sandbox (bubblewrap) out of the test
            "--sandbox", "danger-full-access",
            "-c", 'model="gpt-5.1-codex"', "-c", 'model_provider="loop"']
    for key, value in provider.items():
        argv += ["-c", f"model_providers.loop.{key}={value}"]
    for item in config:
        argv += ["-c", item]
    argv.append("Say where the capital of France is.")
    env = {**os.environ, "CODEX_HOME": str(home), "STREAMFSM_LOOPBACK_KEY": LOOPBACK_KEY}
    env.pop("OPENAI_API_KEY", None)
    process = subprocess.Popen(
        argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate(timeout=10)
        pytest.fail(f"codex exec did not finish in {timeout} s:\n{err[-2000:]}")
    return process.returncode, out, err


def run_codex_exec(
    codex: Path, scenario: Path, tmp_path: Path, *config: str, timeout: float = 90
) -> CodexRun:
    """`codex exec` against `streamfsm serve SCENARIO`; returns its exit status, output and the
    request log."""
    with served(scenario, tmp_path / "requests.jsonl") as server:
        status, out, err = codex_exec(codex, server.base_url, tmp_path, *config, timeout=timeout)
        requests = server.requests()
    return CodexRun(status, out, err, requests)


def _describe(run: CodexRun) -> str:
    lines = [f"{r['n']} t={r['t']:.3f} reply={r['reply']} status={r['status']}" for r in run.requests]
    return f"exit {run.status}; requests:\n" + "\n".join(lines) + f"\nstderr:\n{run.stderr[-3000:]}"


def _responses_posts(run: CodexRun) -> list[dict[str, Any]]:
    posts = [r for r in run.requests if r["method"] == "POST" and r["path"] == "/v1/responses"]
    assert len(posts) == len(run.requests), _describe(run)
    for post in posts:
        assert post["headers"]["authorization"] == "[redacted]"
        assert post["body"]["stream"] is True
    return posts


def test_text(codex: Path, tmp_path: Path) -> None:
    run = run_codex_exec(codex, EXAMPLES / "text.toml", tmp_path)
    assert run.status == 0, _describe(run)
    assert [r["reply"] for r in _responses_posts(run)] == [0]
    assert PARIS in run.stdout
    assert LOOPBACK_KEY not in (tmp_path / "requests.jsonl").read_text()


def test_tool_call_then_answer(codex: Path, tmp_path: Path) -> None:
    run = run_codex_exec(codex, EXAMPLES / "tool_call_then_answer.toml", tmp_path)
    assert run.status == 0, _describe(run)
    first, second = _responses_posts(run)
    assert (first["reply"], second["reply"]) == (1, 0)
    tool_names = {tool.get("name") for tool in first["body"]["tools"]}
    assert "exec_command" in tool_names
    outputs = [item for item in second["body"]["input"] if item.get("type") == "function_call_output"]
    assert len(outputs) == 1
    assert "streamfsm-tool-ok" in str(outputs[0]["output"])
    calls = [item for item in second["body"]["input"] if item.get("type") == "function_call"]
    assert [(c["name"], c["call_id"]) for c in calls] == [("exec_command", outputs[0]["call_id"])]
    assert "The command printed streamfsm-tool-ok." in run.stdout


def test_rate_limit_then_text_waits_for_retry_after(codex: Path, tmp_path: Path) -> None:
    run = run_codex_exec(codex, EXAMPLES / "rate_limit_then_text.toml", tmp_path)
    assert run.status == 0, _describe(run)
    first, second = _responses_posts(run)
    assert (first["status"], second["status"]) == (429, 200)
    assert second["t"] - first["t"] >= 1.0, _describe(run)
    assert "Rate limit passed" in run.stdout


def test_drop_after_300_bytes_then_text(codex: Path, tmp_path: Path) -> None:
    run = run_codex_exec(codex, EXAMPLES / "drop_then_text.toml", tmp_path)
    assert run.status == 0, _describe(run)
    assert [r["reply"] for r in _responses_posts(run)] == [0, 1]
    assert PARIS in run.stdout


def test_stall_longer_than_the_idle_timeout_then_text(codex: Path, tmp_path: Path) -> None:
    run = run_codex_exec(
        codex, EXAMPLES / "stall_then_text.toml", tmp_path,
        "model_providers.loop.stream_idle_timeout_ms=1500",
    )
    assert run.status == 0, _describe(run)
    first, second = _responses_posts(run)
    assert (first["reply"], second["reply"]) == (0, 1)
    assert 1.5 <= second["t"] - first["t"] < 12, _describe(run)
    assert PARIS in run.stdout


def test_error_frame_then_text(codex: Path, tmp_path: Path) -> None:
    run = run_codex_exec(codex, EXAMPLES / "error_frame_then_text.json", tmp_path)
    assert run.status == 0, _describe(run)
    assert [r["reply"] for r in _responses_posts(run)] == [0, 1]
    assert PARIS in run.stdout


def test_incomplete_answer(codex: Path, tmp_path: Path) -> None:
    run = run_codex_exec(codex, EXAMPLES / "incomplete.toml", tmp_path)
    assert run.status == 1, _describe(run)
    assert [r["reply"] for r in _responses_posts(run)] == [0]
    assert "Incomplete response returned, reason: max_output_tokens" in run.stderr


def test_the_cache_folder_and_binary_names_match_ci() -> None:
    script = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "@openai/codex@$CODEX_VERSION" in script and f'CODEX_VERSION="{CODEX_VERSION}"' in script
    assert NATIVE in script and LAUNCHER in script
    assert 'streamfsm/codex-$CODEX_VERSION' in script and "STREAMFSM_CODEX" in script


# -- through the recording proxy ------------------------------------------------------------------
def test_recorded_through_the_proxy_then_served_back_from_the_recording(
    codex: Path, tmp_path: Path
) -> None:
    """codex exec → `streamfsm record` → `streamfsm serve` (a tool call, then the answer, each
    event its own chunk 40 ms apart); then codex exec again against `streamfsm serve` of what
    was recorded, with no upstream at all."""
    scenario = tmp_path / "paced.toml"
    scenario.write_text(
        (EXAMPLES / "tool_call_then_answer.toml").read_text().replace(
            "[[reply]]\n", "[[reply]]\nchunk_delay_ms = 40\n"),
        encoding="utf-8",
    )
    out = tmp_path / "recorded"
    with served(scenario, tmp_path / "upstream.jsonl") as upstream:
        with running("record", "--upstream", upstream.base_url, "--port", "0", "--out",
                     str(out)) as (_, proxy_url, _):
            status, stdout, stderr = codex_exec(codex, proxy_url, tmp_path / "first")
        sent = upstream.requests()
    assert status == 0, stderr[-3000:]
    assert "The command printed streamfsm-tool-ok." in stdout
    traces = sorted(out.glob("*.jsonl"))
    assert [path.name for path in traces] == [
        "0001-post-responses.jsonl", "0002-post-responses.jsonl"]
    assert [(r["method"], r["path"], r["reply"]) for r in sent] == [
        ("POST", "/v1/responses", 1), ("POST", "/v1/responses", 0)]
    for path in traces:
        chunks = [(r["data"], r["t"]) for r in read_trace(path).inputs() if r["input"] == "chunk"]
        assert len(chunks) > 5
        # each event arrived as the upstream sent it: one chunk each, not coalesced
        assert all(data.endswith("\n\n") and data.count("\n\n") == 1 for data, _ in chunks)
        gaps = [b - a for (_, a), (_, b) in zip(chunks, chunks[1:])]
        assert min(gaps) >= 0.02, gaps
        assert LOOPBACK_KEY not in path.read_text()
    done = subprocess.run([sys.executable, "-m", "engine", "replay", *map(str, traces)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # the recording, served back: codex runs the same turn without the upstream
    with served(out, tmp_path / "again.jsonl", "--timing", "recorded") as again:
        status, stdout, stderr = codex_exec(codex, again.base_url, tmp_path / "second")
        replies = [(r["path"], r["reply"], r["status"]) for r in again.requests()]
    assert status == 0, stderr[-3000:]
    assert "The command printed streamfsm-tool-ok." in stdout
    assert replies == [("/v1/responses", 0, 200), ("/v1/responses", 1, 200)]
