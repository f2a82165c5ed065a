"""The `streamfsm_server` pytest fixture, its markers and the cassette record modes, through real
pytest sessions (pytester) whose tests use the real openai client: what is served, where paths
are looked for, what a mistake looks like, and when a cassette is recorded, served, or refused."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from engine.simulator.scenarios import load_fixture
from engine.simulator.server import ResponsesSimulator

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "replay_fixtures"
EXAMPLES = ROOT / "docs" / "scenarios"

HELPERS = '''
import openai, pytest

def client(server):
    return openai.OpenAI(base_url=server.url, api_key="sk-fixture-0123456789abcdef", max_retries=0)

def ask(server, **options):
    return client(server).responses.create(model="gpt-5", input="hi", **options)
'''


def _tests(pytester: pytest.Pytester, body: str, name: str = "test_app") -> Path:
    return pytester.makepyfile(**{name: HELPERS + textwrap.dedent(body)})


def test_the_default_is_happy_text_and_requests_are_log_lines(pytester: pytest.Pytester) -> None:
    _tests(pytester, '''
        def test_it(streamfsm_server):
            assert streamfsm_server.url.startswith("http://127.0.0.1:")
            assert streamfsm_server.url.endswith("/v1")
            assert ask(streamfsm_server).output_text.startswith("The capital of France is Paris")
            assert "Paris" in "".join(
                e.delta for e in ask(streamfsm_server, stream=True) if e.type.endswith("text.delta"))
            first, second = streamfsm_server.requests
            assert set(first) == {"n", "t", "method", "path", "headers", "body", "reply", "status"}
            assert (first["n"], first["method"], first["path"], first["status"]) == (
                1, "POST", "/v1/responses", 200)
            assert first["headers"]["authorization"] == "[redacted]"
            assert "stream" not in first["body"] and second["body"]["stream"] is True
            assert streamfsm_server.mode == "scenario"
    ''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_each_test_gets_its_own_server_stopped_after_it(pytester: pytest.Pytester) -> None:
    _tests(pytester, '''
        import socket
        seen = []

        @pytest.mark.parametrize("n", [1, 2])
        def test_it(streamfsm_server, n):
            ask(streamfsm_server)
            assert len(streamfsm_server.requests) == 1
            seen.append(streamfsm_server.url)

        def test_the_servers_are_gone():
            assert len(set(seen)) == 2
            for url in seen:
                port = int(url.rsplit(":", 1)[1].split("/")[0])
                with pytest.raises(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    ''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_a_shape_a_scenario_file_a_trace_and_a_folder(pytester: pytest.Pytester) -> None:
    here = pytester.path / "tests"
    (here / "scenarios").mkdir(parents=True)
    shutil.copyfile(EXAMPLES / "rate_limit_then_text.toml", here / "scenarios" / "limited.toml")
    shutil.copyfile(FIXTURES / "drop_then_retry.jsonl", here / "dropped.jsonl")
    (here / "folder").mkdir()
    shutil.copyfile(FIXTURES / "http_429.jsonl", here / "folder" / "0001.jsonl")
    shutil.copyfile(FIXTURES / "happy_text.jsonl", here / "folder" / "0002.jsonl")
    (here / "test_markers.py").write_text(HELPERS + textwrap.dedent('''
        import engine

        @pytest.mark.streamfsm_scenario("http_401")
        def test_a_shape(streamfsm_server):
            with pytest.raises(openai.AuthenticationError):
                ask(streamfsm_server)

        @pytest.mark.streamfsm_scenario("scenarios/limited.toml")  # next to this file
        def test_a_scenario_file(streamfsm_server):
            result = engine.run_turn(client(streamfsm_server), {"model": "m", "input": "hi"},
                                     policy=engine.TurnPolicy(max_http_retries=1))
            assert [a.reason for a in result.attempts] == ["http_429", "completed"]
            assert [r["status"] for r in streamfsm_server.requests] == [429, 200]

        @pytest.mark.streamfsm_scenario(fixture="dropped.jsonl")
        def test_a_trace(streamfsm_server):
            result = engine.run_turn(client(streamfsm_server), {"model": "m", "input": "hi"})
            assert [a.reason for a in result.attempts] == ["drop", "completed"]

        @pytest.mark.streamfsm_scenario("folder")
        def test_a_folder_of_traces_served_once_in_order(streamfsm_server):
            with pytest.raises(openai.RateLimitError):
                ask(streamfsm_server, stream=True)
            assert "Paris" in ask(streamfsm_server).output_text
            with pytest.raises(openai.InternalServerError, match="exhausted"):
                ask(streamfsm_server)
    '''))
    # started elsewhere: relative paths are found next to the test file
    result = pytester.runpytest("-p", "no:cacheprovider", str(here))
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize(
    "marks, message",
    [
        ('@pytest.mark.streamfsm_scenario("no_such_shape")',
         "streamfsm_scenario('no_such_shape'): not a built-in shape"),
        ('@pytest.mark.streamfsm_scenario("bad.toml")', "bad.toml: reply?0?: nth must be"),
        ('@pytest.mark.streamfsm_scenario("happy_text")\n@pytest.mark.streamfsm_cassette("x")',
         "give streamfsm_scenario or streamfsm_cassette, not both"),
        ('@pytest.mark.streamfsm_scenario("happy_text", timing="slow")',
         "timing must be 'none' or 'recorded'"),
        ('@pytest.mark.streamfsm_cassette("../up")', "a plain folder name"),
    ],
)
def test_a_mistake_is_one_line_before_the_test_runs(
    pytester: pytest.Pytester, marks: str, message: str
) -> None:
    (pytester.path / "bad.toml").write_text("[[reply]]\ntext = 'x'\nnth = 0\n")
    _tests(pytester, f"{marks}\ndef test_it(streamfsm_server):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{message}*"])
    assert "Traceback" not in result.stdout.str()


def test_the_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines([
        "@pytest.mark.streamfsm_scenario(fixture, timing='none'): *",
        "@pytest.mark.streamfsm_cassette(name, timing='none'): *",
    ])
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*--streamfsm-record=*"])


# -- cassettes --------------------------------------------------------------------------------------
CASSETTE_TESTS = '''
@pytest.mark.streamfsm_cassette("capital")
def test_capital(streamfsm_server):
    answer = ask(streamfsm_server)
    streamed = "".join(e.delta for e in ask(streamfsm_server, stream=True)
                       if e.type == "response.output_text.delta")
    assert answer.output_text.startswith("The capital of France is Paris")
    assert streamed == answer.output_text
    assert [r["status"] for r in streamfsm_server.requests] == [200, 200]
    print("MODE", streamfsm_server.mode)
'''


def _cassette(pytester: pytest.Pytester) -> Path:
    return pytester.path / "cassettes" / "capital"


def test_none_never_records_and_a_missing_cassette_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ResponsesSimulator(load_fixture("happy_text")) as upstream:
        monkeypatch.setenv("STREAMFSM_UPSTREAM", upstream.base_url)
        _tests(pytester, CASSETTE_TESTS)
        result = pytester.runpytest("-p", "no:cacheprovider")  # --streamfsm-record=none
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([
            f"*cassette {_cassette(pytester)} is missing: record it with "
            "--streamfsm-record=once and STREAMFSM_UPSTREAM=*"
        ])
        assert upstream.requests == []
    assert not (pytester.path / "cassettes").exists() or not any(
        (pytester.path / "cassettes").iterdir()
    )


def test_once_records_a_missing_cassette_then_serves_it_without_the_upstream(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tests(pytester, CASSETTE_TESTS)
    with ResponsesSimulator(load_fixture("happy_text")) as upstream:
        monkeypatch.setenv("STREAMFSM_UPSTREAM", upstream.base_url)
        result = pytester.runpytest("-p", "no:cacheprovider", "-s", "--streamfsm-record=once")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*MODE recording*"])
        assert len(upstream.requests) == 2
    names = sorted(path.name for path in _cassette(pytester).iterdir())
    assert names == ["0001-post-responses.jsonl", "0002-post-responses.jsonl"]
    assert "sk-fixture-0123456789abcdef" not in "".join(
        path.read_text() for path in _cassette(pytester).iterdir()
    )
    # the upstream is gone now: the cassette is served, in once mode and in none mode
    for mode in ("once", "none"):
        result = pytester.runpytest("-p", "no:cacheprovider", "-s", f"--streamfsm-record={mode}")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*MODE replaying*"])
    assert sorted(path.name for path in _cassette(pytester).iterdir()) == names


def test_all_records_again_and_a_failing_test_keeps_the_old_cassette(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tests(pytester, CASSETTE_TESTS)
    with ResponsesSimulator(load_fixture("happy_text")) as upstream:
        monkeypatch.setenv("STREAMFSM_UPSTREAM", upstream.base_url)
        pytester.runpytest("-p", "no:cacheprovider", "--streamfsm-record=once").assert_outcomes(passed=1)
        first = {path.name: path.read_bytes() for path in _cassette(pytester).iterdir()}
        pytester.runpytest("-p", "no:cacheprovider", "--streamfsm-record=all").assert_outcomes(passed=1)
        assert len(upstream.requests) == 4
    second = {path.name: path.read_bytes() for path in _cassette(pytester).iterdir()}
    assert second.keys() == first.keys()
    assert second != first  # recorded again: the clock readings differ
    # an upstream that answers differently makes the test fail: nothing of it is kept
    with ResponsesSimulator(load_fixture("http_500")) as upstream:
        monkeypatch.setenv("STREAMFSM_UPSTREAM", upstream.base_url)
        result = pytester.runpytest("-p", "no:cacheprovider", "--streamfsm-record=all")
        result.assert_outcomes(failed=1)
    assert {path.name: path.read_bytes() for path in _cassette(pytester).iterdir()} == second
    assert [path.name for path in (pytester.path / "cassettes").iterdir()] == ["capital"]


def test_recording_without_an_upstream_says_how_to_name_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMFSM_UPSTREAM", raising=False)
    _tests(pytester, CASSETTE_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--streamfsm-record=once")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*recording cassette * needs an upstream: set STREAMFSM_UPSTREAM*"])
    assert not _cassette(pytester).exists()
