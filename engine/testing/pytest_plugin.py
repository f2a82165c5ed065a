"""The pytest plugin: a simulator per test, cassettes, and recorded traces as test items.

Installed with the package (entry point group `pytest11`, name `streamfsm`); it needs nothing
but pytest (not the fuzz extra).

The `streamfsm_server` fixture starts a loopback endpoint for the test and stops it after:
`.url` (ending in `/v1`) for the client under test, `.requests` (what it received, as
`streamfsm serve --log` writes it). The markers say what it serves:

    @pytest.mark.streamfsm_scenario("rate_limit_then_text.toml")   # or a shape, a trace, a folder
    @pytest.mark.streamfsm_cassette("checkout_flow")               # cassettes/checkout_flow/

and `--streamfsm-record=none|once|all` when a cassette is recorded through the upstream named by
`STREAMFSM_UPSTREAM` (`engine.testing.server_fixture` says how).

`pytest --streamfsm-replay PATH...` collects traces as test items. Each PATH is a trace
file or a directory searched recursively for `*.jsonl` traces; the option may be given several
times. Every trace becomes one test item, `<trace path>::replay`, which replays the trace through
today's machines (`engine.replay`) and

- passes when every record replays identically;
- fails when a record differs, naming the first divergence (seq, recorded, replayed);
- errors (in setup: the item cannot run at all) when the file is not a valid trace.

A PATH that does not exist is a usage error. A relative PATH is taken from the directory pytest
was started in, or else from the rootdir, so that `--streamfsm-replay=DIR` in the project's
`addopts` works wherever pytest is started. Write it with `=` there: `--streamfsm-replay` takes
every following path, so without `=` it would swallow the test paths given on the command line.

The plugin imports `engine` only when a trace item or the fixture runs, so installing streamfsm
costs other projects' test sessions nothing; it never imports Hypothesis.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import pytest

if TYPE_CHECKING:
    from engine.drivers.replay import ReplayReport
    from engine.testing.server_fixture import ServedEndpoint

__all__ = ["ReplayDiverged", "TraceFile", "TraceItem", "streamfsm_server"]

_TRACES = pytest.StashKey[list[Path]]()
#: The outcome of a test's call phase, for the fixture's teardown (keep a recording or not).
_CALL_REPORT = pytest.StashKey[pytest.TestReport]()

#: The markers the fixture reads, as `pytest --markers` lists them.
MARKERS = (
    "streamfsm_scenario(fixture, timing='none'): what the streamfsm_server fixture serves: a "
    "built-in shape name, a scenario file (.toml/.json), a trace or a folder of traces "
    "(default: happy_text); a relative path is looked for next to the test file first",
    "streamfsm_cassette(name, timing='none'): the streamfsm_server fixture serves "
    "cassettes/NAME next to the test file; --streamfsm-record=once|all records it through "
    "$STREAMFSM_UPSTREAM",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register `--streamfsm-replay PATH...` and `--streamfsm-record MODE`."""
    group = parser.getgroup("streamfsm", "streamfsm simulator, cassettes and trace replay")
    group.addoption(
        "--streamfsm-record",
        choices=("none", "once", "all"),
        default="none",
        dest="streamfsm_record",
        help="cassettes (@pytest.mark.streamfsm_cassette): 'none' (default) serves them and "
        "fails a test whose cassette is missing; 'once' records the missing ones through "
        "$STREAMFSM_UPSTREAM; 'all' records every one again",
    )
    group.addoption(
        "--streamfsm-replay",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        dest="streamfsm_replay",
        help="replay streamfsm traces (files, or directories of *.jsonl) as test items: "
        "each passes when its replay is identical",
    )


def _resolve(config: pytest.Config, given: str) -> Path:
    path = Path(given).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [config.invocation_params.dir / path, config.rootpath / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise pytest.UsageError(f"--streamfsm-replay: no such file or directory: {given}")


def trace_paths(config: pytest.Config) -> list[Path]:
    """The trace files `--streamfsm-replay` names, in order, each once: a file as given, a
    directory's `*.jsonl` files sorted. Raises `pytest.UsageError` for a path that does not exist."""
    found: dict[Path, None] = {}
    for given in config.getoption("streamfsm_replay", default=None) or []:
        path = _resolve(config, given)
        if path.is_dir():
            found.update(dict.fromkeys(sorted(p for p in path.rglob("*.jsonl") if p.is_file())))
        else:
            found[path] = None
    return list(found)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers of the `streamfsm_server` fixture."""
    for line in MARKERS:
        config.addinivalue_line("markers", line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep the call phase's report, so the fixture's teardown knows whether the test passed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_CALL_REPORT] = report


def _test_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.node.path).parent


@pytest.fixture
def streamfsm_server(request: pytest.FixtureRequest) -> Iterator[ServedEndpoint]:
    """A streamfsm endpoint on loopback for this test: the simulator serving the
    `streamfsm_scenario` marker's fixture (default `happy_text`) or the `streamfsm_cassette`
    marker's recording, or the recording proxy making it. `.url` is the client's base URL,
    `.requests` what it received."""
    from engine.testing.server_fixture import (
        DEFAULT_SCENARIO,
        FixtureMistake,
        plan_cassette,
        scenario_for,
        start_for_cassette,
        start_for_scenario,
    )

    scenario_marker = request.node.get_closest_marker("streamfsm_scenario")
    cassette_marker = request.node.get_closest_marker("streamfsm_cassette")
    config = request.config
    places = [_test_dir(request), config.invocation_params.dir, config.rootpath]
    plan = None
    mistake: str | None = None
    try:
        if scenario_marker is not None and cassette_marker is not None:
            raise FixtureMistake("give streamfsm_scenario or streamfsm_cassette, not both")
        if cassette_marker is not None:
            name, cassette_timing = _marker_arguments(cassette_marker, "name")
            plan = plan_cassette(
                name, _test_dir(request), config.getoption("streamfsm_record"), os.environ
            )
            endpoint = start_for_cassette(plan, timing=cassette_timing)
        else:
            given: Any = DEFAULT_SCENARIO
            timing: Any = "none"
            if scenario_marker is not None:
                given, timing = _marker_arguments(scenario_marker, "fixture")
            endpoint = start_for_scenario(scenario_for(given, places, timing=timing))
    except FixtureMistake as error:
        mistake = str(error)
    if mistake is not None:  # failed outside the handler: one line, no chained traceback
        pytest.fail(mistake, pytrace=False)
    try:
        yield endpoint
    finally:
        endpoint.server.close()
        if plan is not None and plan.record:
            report = request.node.stash.get(_CALL_REPORT, None)
            if report is not None and report.passed:
                plan.keep()
            else:
                plan.discard()


def _marker_arguments(marker: pytest.Mark, name: str) -> tuple[Any, Any]:
    """The marker's one argument (positional or by `name`) and its `timing` keyword."""
    if len(marker.args) > 1 or set(marker.kwargs) - {name, "timing"}:
        raise _mistake(f"@pytest.mark.{marker.name} takes one {name} and timing=")
    given = marker.args[0] if marker.args else marker.kwargs.get(name)
    if given is None:
        raise _mistake(f"@pytest.mark.{marker.name} needs its {name}")
    timing = marker.kwargs.get("timing", "none")
    if timing not in ("none", "recorded"):
        raise _mistake(f"@pytest.mark.{marker.name}: timing must be 'none' or 'recorded'")
    return given, timing


def _mistake(message: str) -> Exception:
    from engine.testing.server_fixture import FixtureMistake

    return FixtureMistake(message)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Check the paths before anything is collected: a missing one is a one-line usage error."""
    session.config.stash[_TRACES] = trace_paths(session.config)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Add one item per trace after the ordinary tests (first among the hooks, so `-k`, `-m`
    and `--lf` see the trace items too). Collected from the session, since the traces need not
    lie under `testpaths` or end in `.py`."""
    for path in config.stash.get(_TRACES, []):
        try:
            relative: str | None = path.relative_to(config.rootpath).as_posix()
        except ValueError:
            relative = None
        if relative is None:  # outside the rootdir: the node id is the absolute path
            trace_file = TraceFile.from_parent(session, path=path, nodeid=path.as_posix())
        else:
            trace_file = TraceFile.from_parent(session, path=path)
        items.extend(session.genitems(trace_file))


class ReplayDiverged(Exception):
    """A trace's replay differs from its recording; `report` holds the first divergence."""

    def __init__(self, report: ReplayReport) -> None:
        """Wrap the replay report of a diverging trace."""
        assert report.divergence is not None
        super().__init__(report.divergence.describe())
        self.report = report


class TraceFile(pytest.File):
    """One trace file, collected as the single item `replay`."""

    def collect(self) -> list[TraceItem]:
        """The trace's one item."""
        return [TraceItem.from_parent(self, name="replay")]


class TraceItem(pytest.Item):
    """Replaying one trace: identical passes, a divergence fails, an invalid trace errors."""

    def __init__(self, **kwargs: Any) -> None:
        """An item for the trace at its parent's path (pytest builds it via `from_parent`)."""
        super().__init__(**kwargs)
        self._report: ReplayReport | None = None
        self._raised: Exception | None = None

    def setup(self) -> None:
        """Read and replay the trace. An invalid trace fails here, so pytest reports an error
        (the item could not run) instead of a failure."""
        import engine

        invalid: str | None = None
        try:
            self._report = engine.replay(self.path)
        except engine.TraceError as error:
            invalid = str(error)
        except Exception as error:  # a replay that raises is a failed test, reported by runtest
            self._raised = error
        if invalid is not None:
            pytest.fail(f"invalid trace: {invalid}", pytrace=False)

    def runtest(self) -> None:
        """Fail unless the replay was identical."""
        if self._raised is not None:
            raise self._raised
        assert self._report is not None
        if self._report.divergence is not None:
            raise ReplayDiverged(self._report)

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> Any:
        """The first divergence on one line (`Divergence.describe`: seq, recorded, replayed),
        without a traceback."""
        if isinstance(excinfo.value, ReplayDiverged):
            return f"first divergence: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[os.PathLike[str] | str, int | None, str]:
        """Where the item lives, for reports: the trace file, and "replay NAME" as its title."""
        return self.path, None, f"replay {self.path.name}"

