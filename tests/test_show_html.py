"""`streamfsm show TRACE --html OUT.html`, opened in a real browser (Debian's headless chromium).

For a retried turn, a fallback, a resume, an HTTP retry with its waits and a codex app-server
approval, the page is written by the real command, then chromium loads it from the file (no
server, no network), dumps the DOM after its script ran and takes a screenshot. The test checks
that what the page shows matches the trace (one lane per attempt with its kind, final state and
reason; the outcome), that hovering works (`#show=N` shows mark N's record as a hover does),
that the page's script ran without an error and the browser logged no console message, and that
the page fetches nothing. A turn of 20,000 deltas stays small and draws its lanes all the same.

Skips, saying so, only when no chromium is installed (`.ci/run` installs Debian's `chromium`).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from engine.drivers.recording import TurnRecording
from engine.simulator.replies import sse_frame
from engine.simulator.shapes import completed, created, text_message
from machines.records import TurnPolicy

#: Every test here starts a real browser.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "replay_fixtures"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: The flags that work on this kind of machine (a closed network, root, no GPU).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--enable-logging=stderr", "--v=0")
_profiles = itertools.count(1)


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no chromium found (install Debian's chromium: apt-get install -y chromium)")


def browse(chromium: str, page: Path, tmp: Path, *options: str,
           fragment: str = "") -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{next(_profiles)}"
    return subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *options, page.as_uri() + fragment],
        capture_output=True, text=True, timeout=120,
    )


class Dom(HTMLParser):
    """What the dumped DOM says: the lanes, the attempt rows, the outcome, the body's flags and
    the hover box."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.lanes: list[dict[str, str]] = []
        self.rows: list[dict[str, str]] = []
        self.outcome: str | None = None
        self.body: dict[str, str] = {}
        self.tip: dict[str, str] = {}
        self.tip_text: list[str] = []
        self._in_tip = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attributes}
        classes = found.get("class", "").split()
        if tag == "g" and "lane" in classes:
            self.lanes.append(found)
        elif tag == "tr" and "attempt" in classes:
            self.rows.append(found)
        elif found.get("id") == "outcome":
            self.outcome = found.get("data-outcome")
        elif tag == "body":
            self.body = found
        elif found.get("id") == "tip":
            self.tip = found
            self._in_tip = 1
        elif self._in_tip:
            self._in_tip += 1

    def handle_endtag(self, tag: str) -> None:
        if self._in_tip:
            self._in_tip -= 1

    def handle_data(self, data: str) -> None:
        if self._in_tip:
            self.tip_text.append(data)


def write_page(trace: Path, out: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "engine", "show", str(trace), "--html", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}")


def expected_lanes(trace: Path) -> tuple[list[tuple[str, str, str, str]], str]:
    """(number, kind, final state, reason) of each attempt, and the outcome, from the trace."""
    result = json.loads(trace.read_text().splitlines()[-1])
    if "attempts" in result:
        lanes = [(str(a["number"]), a["kind"], a["final_state"], a["reason"])
                 for a in result["attempts"]]
    else:  # an app-server turn: one lane, the app-turn machine's last state, the outcome's reason
        records = [json.loads(line) for line in trace.read_text().splitlines()[1:]]
        last = [r for r in records if r.get("machine") == "app_turn"][-1]
        outcome = [r for r in records if r.get("effect") == "outcome"][-1]["data"]
        lanes = [(str(last["attempt"]), "app_turn", last["dest"], outcome["reason"])]
    return lanes, result["outcome"]


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.parametrize("name", [
    "drop_then_retry.jsonl",  # a retry
    "drop_every_attempt.jsonl",  # a fallback
    "background_drop_then_resume.jsonl",  # a resume
    "http_503_then_ok.jsonl",  # HTTP retries and their waits
    "codex_app_server/approval_declined.jsonl",  # an app-server approval
])
def test_the_page_shows_the_trace_in_a_real_browser(chromium: str, tmp_path: Path,
                                                    name: str) -> None:
    trace = FIXTURES / name
    page = tmp_path / "turn.html"
    write_page(trace, page)
    text = page.read_text()
    data = re.search(r'<script type="application/json" id="marks">(.*?)</script>', text, re.S)
    assert data is not None
    marks = json.loads(data.group(1))
    markup = text.replace(data.group(1), "")  # the records may quote addresses; the page fetches none
    assert not re.search(r"\b(src|href)=|@import|url\(http", markup)
    assert re.findall(r"https?://[^\s\"'<]+", markup) == ["http://www.w3.org/2000/svg"]

    hovered = next(i for i, mark in enumerate(marks) if isinstance(mark["record"], dict)
                   and mark["record"].get("kind") == "transition")
    dumped = browse(chromium, page, tmp_path, "--dump-dom", fragment=f"#show={hovered}")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom(dumped.stdout)
    assert dom.body.get("data-ready") == "yes"
    assert dom.body.get("data-script-errors") == "0"
    assert int(dom.body["data-marks"]) >= len(dom.lanes)
    assert console_lines(dumped.stderr) == []

    lanes, outcome = expected_lanes(trace)
    drawn = [(lane["data-attempt"], lane["data-kind"], lane["data-final-state"],
              lane["data-reason"]) for lane in dom.lanes]
    assert drawn == lanes
    assert [(row["data-attempt"], row["data-final-state"]) for row in dom.rows] == [
        (number, state) for number, _, state, _ in lanes]
    assert dom.outcome == outcome

    assert "hidden" not in dom.tip and dom.tip.get("data-mark") == str(hovered)
    shown = "".join(dom.tip_text)  # the title, then the record as JSON
    assert shown.startswith(marks[hovered]["title"])
    shown_record = json.loads(shown[len(marks[hovered]["title"]):])
    assert shown_record == marks[hovered]["record"]
    assert shown_record["kind"] == "transition"

    shot = tmp_path / "turn.png"
    taken = browse(chromium, page, tmp_path, f"--screenshot={shot}", "--window-size=1240,700")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert console_lines(taken.stderr) == []


def long_turn(path: Path, deltas: int) -> str:
    """Record a turn of `deltas` text deltas over 10 s through the real recording (no network:
    the chunks are fed with their clock readings); returns the answer."""
    text = "".join(f"w{i % 10} " for i in range(deltas))
    events = [*created(), *text_message(text, deltas=deltas)]
    item = next(e["item"] for e in events if e["type"] == "response.output_item.done")
    events += completed([item])
    recording = TurnRecording(TurnPolicy(), None, entry="run_turn",
                              request={"model": "gpt-5", "input": "hi"}, observed=False)
    for feed in recording.attempts():
        for number, event in enumerate(events):
            if feed.chunk(sse_frame(event), 10.0 * number / len(events)):
                break
        else:
            feed.end(10.0)
    result = recording.finish(path)
    assert result.outcome == "completed" and result.output_text == text
    return text


def test_a_turn_of_20000_deltas_stays_small_and_readable(chromium: str, tmp_path: Path) -> None:
    trace = tmp_path / "long.jsonl"
    long_turn(trace, 20_000)
    page = tmp_path / "long.html"
    write_page(trace, page)
    size = page.stat().st_size
    assert size < 2 * 2**20, f"{size} bytes"
    dumped = browse(chromium, page, tmp_path, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom(dumped.stdout)
    assert dom.body.get("data-ready") == "yes" and dom.body.get("data-script-errors") == "0"
    assert [(lane["data-attempt"], lane["data-final-state"]) for lane in dom.lanes] == [
        ("1", "terminal")]
    assert dom.outcome == "completed"
    assert int(dom.body["data-marks"]) < 1000  # the deltas are counted into columns
    assert console_lines(dumped.stderr) == []


def test_a_script_error_would_be_seen(chromium: str, tmp_path: Path) -> None:
    """The error count the tests read is real: a page whose script breaks reports it."""
    page = tmp_path / "turn.html"
    write_page(FIXTURES / "happy_text.jsonl", page)
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace('JSON.parse(document.getElementById("marks")',
                                               'JSON.parse(document.getElementById("nothing")'))
    dumped = browse(chromium, broken, tmp_path, "--dump-dom")
    dom = Dom(dumped.stdout)
    assert dom.body.get("data-ready") == "no" and dom.body.get("data-script-errors") == "1"
    assert console_lines(dumped.stderr)  # and the browser logs the uncaught error
