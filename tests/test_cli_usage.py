"""Every command, given a bad argument, path or port, says so in one line on stderr
(`streamfsm: error: ...`) and exits 2, never with a traceback; `--json` output is one JSON
object per line; the global `--log` makes every stderr line a JSON object, and nothing else.
Run as the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "replay_fixtures"
TRACE = str(FIXTURES / "happy_text.jsonl")


def streamfsm(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


BAD = [
    ("no command at all", ("bogus",), "invalid choice: 'bogus'"),
    ("an unknown option", ("--nope",), "unrecognized arguments: --nope"),
    ("demo: --traces is a file", ("demo", "--traces", TRACE), "exists and is not a folder"),
    ("demo: --traces cannot be made", ("demo", "--traces", "/proc/nope"), "cannot make the folder"),
    ("demo --codex: --traces is a file", ("demo", "--codex", "--traces", TRACE),
     "exists and is not a folder"),
    ("replay: no trace", ("replay",), "the following arguments are required: TRACE"),
    ("replay: a missing file", ("replay", "missing.jsonl"), "missing.jsonl: cannot read"),
    ("replay: an empty folder", ("replay", "docs/scenarios"), "a folder with no *.jsonl traces"),
    ("replay: not a trace", ("replay", "README.md"), "line 1 is not JSON"),
    ("consume: a missing file", ("consume", "missing.sse"), "cannot read missing.sse"),
    ("consume: a folder", ("consume", "docs"), "cannot read docs"),
    ("consume: given a trace", ("consume", TRACE), "is a streamfsm trace, not raw SSE bytes"),
    ("consume: --trace is a folder", ("consume", "README.md", "--trace", "docs"), "is a folder"),
    ("show: a missing file", ("show", "missing.jsonl"), "missing.jsonl: cannot read"),
    ("show: not a trace", ("show", "README.md"), "line 1 is not JSON"),
    ("show: --html cannot be written", ("show", TRACE, "--html", "/proc/nope/turn.html"),
     "cannot write /proc/nope/turn.html"),
    ("show: --html is a folder", ("show", TRACE, "--html", "docs"), "is a folder"),
    ("serve: a port too high", ("serve", "happy_text", "--port", "99999"),
     "port 99999 is not between 0 and 65535"),
    ("serve: a negative port", ("serve", "happy_text", "--port", "-1"),
     "port -1 is not between 0 and 65535"),
    ("serve: not a port", ("serve", "happy_text", "--port", "http"), "not a port number: 'http'"),
    ("serve: no fixture", ("serve",), "serve needs a FIXTURE"),
    ("serve: an unknown shape", ("serve", "nonexistent_thing", "--port", "0"),
     "not a built-in shape"),
    ("serve: --log cannot be opened", ("serve", "happy_text", "--port", "0", "--log",
                                       "/proc/nope/log.jsonl"), "cannot open"),
    ("serve: a bad --timing", ("serve", "happy_text", "--timing", "fast"), "invalid choice"),
    ("diagram: an unknown machine", ("diagram", "nope"), "invalid choice: 'nope'"),
    ("fixtures: not a folder", ("fixtures", "nope"), "nope: not a folder of replay fixtures"),
    ("fuzz: zero examples", ("fuzz", "--examples", "0"), "must be >= 1, not 0"),
    ("fuzz: not a number", ("fuzz", "--workers", "two"), "invalid _positive_int value"),
    ("fuzz: --promote without --name", ("fuzz", "--promote", TRACE), "needs --name NAME"),
    ("fuzz: --promote a missing trace", ("fuzz", "--promote", "missing.jsonl", "--name", "x"),
     "cannot read"),
    ("fuzz: bad callbacks", ("fuzz", "--callbacks", "nope_module:factory", "--examples", "1"),
     "nope_module"),
]


@pytest.mark.parametrize("args, words", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], words: str,
                                            tmp_path: Path) -> None:
    done = streamfsm(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("streamfsm: error: ") and words in lines[0], lines[0]
    assert done.stdout == ""


@pytest.mark.parametrize("args", [("serve", "happy_text", "--port", "99999"),
                                  ("show", "missing.jsonl"), ("consume", TRACE)])
def test_with_log_the_error_is_a_json_line_too(args: tuple[str, ...]) -> None:
    done = streamfsm("--log", *args)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["event"] == "streamfsm: error"
    assert record["message"]


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_log_writes_only_json_lines_and_none_from_other_libraries(tmp_path: Path) -> None:
    sse = tmp_path / "cut.sse"
    sse.write_bytes(b'event: response.created\ndata: {"type":"response.created","response":'
                    b'{"id":"r"}}\n\n')
    done = streamfsm("--log", "consume", str(sse))
    assert done.returncode == 0
    lines = _json_lines(done.stderr)
    assert [line["event"] for line in lines if line["event"] == "transition"]
    assert any(line["event"] == "turn finished" for line in lines)
    assert "Executed callback" not in done.stderr and "Initiating transition" not in done.stderr
    demo = streamfsm("--log", "demo", timeout=300)
    assert demo.returncode == 0
    assert all(isinstance(line, dict) for line in _json_lines(demo.stderr))
    assert {line["event"] for line in _json_lines(demo.stderr)} >= {"transition", "turn finished"}


def test_replay_takes_folders_and_json(tmp_path: Path) -> None:
    done = streamfsm("replay", str(FIXTURES / "codex_app_server"), "--json")
    assert done.returncode == 0, done.stderr
    reports = _json_lines(done.stdout)
    assert len(reports) == len(list((FIXTURES / "codex_app_server").glob("*.jsonl")))
    assert all(r["identical"] is True and r["first_divergence"] is None for r in reports)
    lines = (FIXTURES / "happy_text.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    target = next(r for r in records if r.get("effect") == "text_delta")
    target["data"] = "tampered"
    (tmp_path / "altered.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (tmp_path / "broken.jsonl").write_text("not json\n")
    mixed = streamfsm("replay", str(tmp_path), "--json")
    assert mixed.returncode == 2
    altered, broken = _json_lines(mixed.stdout)
    assert altered["identical"] is False
    assert altered["first_divergence"]["seq"] == target["seq"]  # type: ignore[index]
    assert altered["first_divergence"]["recorded"]["data"] == "tampered"  # type: ignore[index]
    assert broken["identical"] is False and "line 1 is not JSON" in str(broken["error"])
    assert mixed.stderr.startswith("streamfsm: error: invalid trace:")


def test_consume_json_is_the_result(tmp_path: Path) -> None:
    sse = tmp_path / "cut.sse"
    sse.write_bytes(b'event: response.created\ndata: {"type":"response.created","response":'
                    b'{"id":"r"}}\n\n')
    done = streamfsm("consume", str(sse), "--json")
    (result,) = _json_lines(done.stdout)
    assert result["outcome"] == "error" and result["attempts"] == [
        {"number": 1, "kind": "stream", "final_state": "retire", "reason": "eof"}]
    assert [t["trigger"] for t in result["transitions"]] == ["begin", "created", "eof", "finish"]  # type: ignore[index, union-attr]


def test_show_html_json_names_the_page(tmp_path: Path) -> None:
    page = tmp_path / "turn.html"
    done = streamfsm("show", TRACE, "--html", str(page), "--json")
    assert done.returncode == 0
    (said,) = _json_lines(done.stdout)
    assert said == {"trace": TRACE, "html": str(page), "bytes": page.stat().st_size}


@pytest.mark.slow
def test_fuzz_json_reports_progress_and_the_end(tmp_path: Path) -> None:
    done = streamfsm("fuzz", "--examples", "20", "--workers", "1", "--progress-every", "0.5",
                     "--save-to", str(tmp_path / "findings"), "--json", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    events = _json_lines(done.stdout)
    assert events[0]["event"] == "start" and events[0]["examples"] == 20
    assert events[-1]["event"] == "done" and events[-1]["findings"] == []
    assert int(events[-1]["examples"]) >= 20  # type: ignore[call-overload]


@pytest.mark.slow
def test_the_demo_ends_by_saying_where_to_look(tmp_path: Path) -> None:
    done = streamfsm("demo", "--traces", str(tmp_path), timeout=300)
    assert done.returncode == 0 and done.stderr == ""
    last = done.stdout.splitlines()[-3:]
    trace = tmp_path / "12-drop_then_retry.jsonl"
    assert last[1] == f"See one turn step by step:  streamfsm show {trace}"
    assert f"streamfsm show {trace} --html turn.html" in last[2]
    shown = streamfsm("show", str(trace), "--html", str(tmp_path / "turn.html"))
    assert shown.returncode == 0 and (tmp_path / "turn.html").exists()
    without = streamfsm("demo", timeout=300)
    assert "streamfsm demo --traces DIR" in without.stdout.splitlines()[-1]
