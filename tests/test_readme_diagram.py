"""The Mermaid diagram under "## The stream-attempt machine" in README.md is exactly what
`streamfsm diagram stream_attempt` prints, so the README never drifts from the transition table.
After a change to the table, paste the command's output into the README's block."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

from engine.diagram import mermaid

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## The stream-attempt machine"


def _readme_block() -> str:
    """The text inside the section's one ```mermaid fence, with its final newline."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip() == HEADING]
    assert len(starts) == 1, f"README.md needs exactly one {HEADING!r} heading"
    section: list[str] = []
    for line in lines[starts[0] + 1 :]:
        if re.match(r"#{1,2} ", line):  # the next section of the same or a higher level
            break
        section.append(line)
    blocks = re.findall(r"^```mermaid\n(.*?)^```[ \t]*$", "".join(section), re.M | re.S)
    assert len(blocks) == 1, f"the {HEADING!r} section needs exactly one ```mermaid block"
    block: str = blocks[0]
    return block


@functools.cache  # one subprocess for both tests
def _cli_diagram() -> str:
    run = subprocess.run(
        [sys.executable, "-m", "engine", "diagram", "stream_attempt"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    return run.stdout


def test_the_cli_prints_the_tables_diagram() -> None:
    assert _cli_diagram() == mermaid("stream_attempt")


def test_the_readme_diagram_is_the_generated_one() -> None:
    printed = _cli_diagram()
    assert printed.startswith("stateDiagram-v2\n")
    assert _readme_block() == printed, (
        "README.md's stream-attempt diagram is out of date: replace the ```mermaid block under "
        f"{HEADING!r} with the output of `streamfsm diagram stream_attempt`"
    )
