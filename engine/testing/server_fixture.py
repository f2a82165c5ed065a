"""What the `streamfsm_server` pytest fixture starts: a simulator, or a recording proxy.

Theory of operation
===================

The fixture (registered by `engine.testing.pytest_plugin`) gives each test one `ServedEndpoint`:
a loopback server started before the test and closed after it, whose `url` (ending in `/v1`) the
application under test uses as its `base_url`, and whose `requests` list what it received, as
`streamfsm serve --log` writes them. What it is depends on the test's markers:

``@pytest.mark.streamfsm_scenario(X)`` (the default is ``"happy_text"``)
    The built-in simulator serving X (`engine.simulator.scenarios.load_fixture`): a built-in
    shape name, a scenario file (``.toml``/``.json``), a trace, or a folder of traces. A relative
    path is looked for next to the test file first, then in the directory pytest was started
    in, then in the rootdir. A `Scenario` or `Script` object is served as it is.
    ``timing="recorded"`` serves traces with their recorded pauses.

``@pytest.mark.streamfsm_cassette(NAME)``
    The folder ``cassettes/NAME`` next to the test file, a recording made by the recording
    proxy (one trace per request), served back in order by the simulator. The record mode
    (``--streamfsm-record``) says when it is made instead:

    ``none`` (default)
        never contact an upstream: a missing folder fails the test;
    ``once``
        record the folder when it is missing, else serve it;
    ``all``
        record it again.

    Recording starts a `RecordingProxy` to the upstream named by the environment variable
    ``STREAMFSM_UPSTREAM`` (a base URL ending in ``/v1``; unset: the test fails). The traces go
    to a temporary folder beside the cassette, which replaces it only when the test passed; a
    failed or skipped test leaves the cassette as it was.

Giving both markers is a mistake (the test errors). Every mistake (an unknown shape, an invalid
scenario or trace, a missing cassette, no upstream) fails the test with one line saying what to
do, before the test body runs.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

import attrs

from engine.simulator.recording_proxy import RecordingProxy
from engine.simulator.replies import Script
from engine.simulator.scenarios import Scenario, ScenarioError, load_fixture
from engine.simulator.server import LoopbackServer, ResponsesSimulator
from engine.simulator.shapes import SHAPES

__all__ = [
    "DEFAULT_SCENARIO",
    "RECORD_MODES",
    "UPSTREAM_VARIABLE",
    "CassettePlan",
    "FixtureMistake",
    "ServedEndpoint",
    "plan_cassette",
    "scenario_for",
    "start_for_cassette",
    "start_for_scenario",
]

#: What the fixture serves when the test names nothing.
DEFAULT_SCENARIO: Final = "happy_text"
#: The values of `--streamfsm-record`.
RECORD_MODES: Final = ("none", "once", "all")
#: The environment variable that names the upstream a cassette is recorded through.
UPSTREAM_VARIABLE: Final = "STREAMFSM_UPSTREAM"

RecordMode = Literal["none", "once", "all"]


class FixtureMistake(Exception):
    """The test asked for something the fixture cannot serve; the message says what to do."""


@attrs.define
class ServedEndpoint:
    """The loopback endpoint one test talks to: `url` for its client, `requests` for its
    assertions. `mode` says what it is: ``"scenario"`` (the simulator serving a scenario),
    ``"replaying"`` (the simulator serving a cassette) or ``"recording"`` (the recording proxy
    making one); `cassette` is the cassette's folder, if any."""

    server: LoopbackServer
    mode: Literal["scenario", "replaying", "recording"]
    cassette: Path | None = None

    @property
    def url(self) -> str:
        """The base URL to give the client: ``http://127.0.0.1:PORT/v1``."""
        return self.server.base_url

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request received so far, in arrival order, each as one line of
        ``streamfsm serve --log``: ``n``, ``t``, ``method``, ``path``, ``headers`` (secrets
        redacted), ``body``, ``reply``, ``status``."""
        return [request.to_log_json() for request in self.server.requests]


def _candidates(given: str | os.PathLike[str], places: list[Path]) -> list[Path]:
    path = Path(given).expanduser()
    return [path] if path.is_absolute() else [place / path for place in places]


def scenario_for(
    given: Any, places: list[Path], *, timing: Literal["none", "recorded"] = "none"
) -> Scenario | Script:
    """What `@pytest.mark.streamfsm_scenario(given)` serves; a relative path is looked for in
    `places`, in order. Raises `FixtureMistake` naming the problem."""
    if isinstance(given, (Scenario, Script)):
        return given
    if not isinstance(given, (str, os.PathLike)):
        raise FixtureMistake(
            "streamfsm_scenario takes a shape name, a scenario file, a trace or a folder of "
            f"traces, not {type(given).__name__}"
        )
    if isinstance(given, str) and given in SHAPES:
        return load_fixture(given, timing=timing)
    found = next((path for path in _candidates(given, places) if path.exists()), None)
    if found is None:
        looked = ", ".join(str(place) for place in places)
        raise FixtureMistake(
            f"streamfsm_scenario({os.fspath(given)!r}): not a built-in shape (streamfsm serve "
            f"--list) and no such file or folder (looked in {looked})"
        )
    try:
        return load_fixture(str(found), timing=timing)
    except ScenarioError as error:
        raise FixtureMistake("; ".join(error.problems)) from None


@attrs.frozen(slots=True)
class CassettePlan:
    """What a `streamfsm_cassette` test gets: the cassette's folder, and whether to record it
    now (through `upstream`, into `scratch`, which replaces the folder if the test passes)."""

    folder: Path
    record: bool
    upstream: str | None = None
    scratch: Path | None = None

    def keep(self) -> None:
        """The test passed: the new recording becomes the cassette."""
        assert self.scratch is not None
        if self.folder.exists():
            shutil.rmtree(self.folder)
        os.replace(self.scratch, self.folder)

    def discard(self) -> None:
        """The test did not pass: the recording is dropped, the cassette stays as it was."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _recorded(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.jsonl"))


def plan_cassette(
    name: Any, test_dir: Path, mode: str, environ: Mapping[str, str]
) -> CassettePlan:
    """Where cassette `name` lives for a test in `test_dir`, and whether `mode` records it.
    Raises `FixtureMistake` for a bad name, a missing cassette under ``none``, or no upstream."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise FixtureMistake(f"streamfsm_cassette wants a plain folder name, not {name!r}")
    if mode not in RECORD_MODES:
        raise FixtureMistake(f"--streamfsm-record must be one of {', '.join(RECORD_MODES)}")
    folder = test_dir / "cassettes" / name
    if mode == "none" or (mode == "once" and _recorded(folder)):
        if not _recorded(folder):
            raise FixtureMistake(
                f"cassette {folder} is missing: record it with --streamfsm-record=once and "
                f"{UPSTREAM_VARIABLE}=https://api.openai.com/v1 (or another upstream)"
            )
        return CassettePlan(folder, record=False)
    upstream = environ.get(UPSTREAM_VARIABLE)
    if not upstream:
        raise FixtureMistake(
            f"recording cassette {folder} needs an upstream: set {UPSTREAM_VARIABLE} to its base "
            "URL (e.g. https://api.openai.com/v1)"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = folder.parent / f".{name}.recording-{uuid.uuid4().hex[:12]}"
    scratch.mkdir()
    return CassettePlan(folder, record=True, upstream=upstream, scratch=scratch)


def start_for_cassette(
    plan: CassettePlan, *, timing: Literal["none", "recorded"] = "none"
) -> ServedEndpoint:
    """The recording proxy (when the plan records) or the simulator serving the cassette."""
    if plan.record:
        assert plan.upstream is not None and plan.scratch is not None
        try:
            proxy = RecordingProxy(plan.upstream, plan.scratch).start()
        except ValueError as error:
            plan.discard()
            raise FixtureMistake(f"{UPSTREAM_VARIABLE}: {error}") from None
        return ServedEndpoint(proxy, "recording", plan.folder)
    try:
        scenario = load_fixture(str(plan.folder), timing=timing)
    except ScenarioError as error:
        raise FixtureMistake("; ".join(error.problems)) from None
    return ServedEndpoint(ResponsesSimulator(scenario).start(), "replaying", plan.folder)


def start_for_scenario(scenario: Scenario | Script) -> ServedEndpoint:
    """The simulator serving `scenario`."""
    return ServedEndpoint(ResponsesSimulator(scenario).start(), "scenario")
