"""The `streamfsm` command line (also `python -m engine`).

    streamfsm demo                      real turns through the built-in simulator, offline
    streamfsm demo --codex              the same through the real codex app-server
    streamfsm replay TRACE...           replay traces through today's machines (exit 0/1/2)
    streamfsm consume FILE              raw SSE bytes through one attempt
    streamfsm serve FIXTURE [--port N] [--log FILE]
                                        a scenario file, a trace, a folder of traces or a
                                        built-in shape as a Responses-API endpoint (until
                                        SIGINT/SIGTERM, exit 0)
    streamfsm record --upstream URL --out DIR [--port N]
                                        a recording proxy: each request forwarded and saved
                                        as a trace (until SIGINT/SIGTERM, exit 0)
    streamfsm diagram [MACHINE]         a machine's table as a Mermaid state diagram
    streamfsm show TRACE [--html OUT]   a recorded turn as a timeline (terminal, or an HTML page)
    streamfsm fuzz ...                  a long fuzzing campaign (see `streamfsm fuzz --help`)

`--json` (on replay, consume, show, fuzz) writes one JSON object per line on stdout instead of
text. The global `--log` makes every line on stderr one JSON object (streamfsm's structlog
lines, and nothing from other libraries).

Errors in what the user passed (a bad argument, a missing file, a port out of range, an invalid
trace) are one line on stderr, `streamfsm: error: ...`, and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn, Sequence, TextIO

from engine.diagram import MACHINES, mermaid
from engine.log.logs import log, log_to
from engine.log.trace import FORMAT, TraceError, dumps
from machines.records import TurnPolicy, TurnResult

if TYPE_CHECKING:
    from engine.simulator.scenarios import Scenario

# Each command imports what only it needs when it runs (the openai package and the network
# driver for `demo`, the simulator for `demo` and `serve`, the timeline for `show`): every
# command pays for the imports at its start, and a replay in CI needs none of them.

__all__ = ["main", "describe_result"]


class UsageError(Exception):
    """Something the user passed cannot be used: one line per mistake (the arguments)."""


def _json_line(out: TextIO, value: Any) -> None:
    """One JSON object on one line (`--json`)."""
    out.write(dumps(value).decode() + "\n")


# -- rendering ------------------------------------------------------------------------------------
def _attempt_paths(result: TurnResult) -> list[str]:
    """One line per attempt: its path through the stream-attempt states, with triggers."""
    lines = []
    for attempt in result.attempts:
        steps = [t for t in result.transitions if t.machine == "stream_attempt" and t.attempt == attempt.number]
        path = steps[0].source if steps else "awaiting_created"
        for step in steps:
            path += f" -{step.trigger}-> {step.dest}"
        lines.append(f"attempt {attempt.number} {attempt.kind:<8} {path}")
    return lines


def _clip(text: str, width: int = 60) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_result(result: TurnResult) -> list[str]:
    """A few human lines: each attempt's path, then the outcome, text, tool calls, error."""
    lines = _attempt_paths(result)
    lines.append(f"outcome   {result.outcome}")
    if result.output_text:
        lines.append(f"text      {_clip(result.output_text)!r}")
    for call in result.tool_calls:
        lines.append(f"tool call {call['name']}({_clip(call['arguments'], 50)})")
    if result.error:
        code = result.error.get("code")
        lines.append(f"error     {code}: {_clip(str(result.error.get('message')), 70)}")
    if result.rate_limits:
        lines.append(f"rate limits kept: {len(result.rate_limits)} frame(s)")
    return lines


# -- demo -----------------------------------------------------------------------------------------
#: (shape name, policy, interrupt after seconds or None): a tour of the real-world shapes.
DEMO_SCENARIOS: list[tuple[str, TurnPolicy, float | None]] = [
    ("happy_text", TurnPolicy(), None),
    ("reasoning_then_text", TurnPolicy(), None),
    ("function_call", TurnPolicy(), None),
    ("relay_in_progress_first", TurnPolicy(), None),
    ("rate_limits_before_created", TurnPolicy(), None),
    ("error_first_nested", TurnPolicy(), None),
    ("completed_output_null", TurnPolicy(), None),
    ("function_call_without_item_done", TurnPolicy(), None),
    ("incomplete_max_output_tokens", TurnPolicy(), None),
    ("failed_rate_limit_exceeded", TurnPolicy(), None),
    ("noisy_but_fine", TurnPolicy(), None),
    ("drop_then_retry", TurnPolicy(), None),
    ("background_drop_then_resume", TurnPolicy(), None),
    ("stall_then_retry", TurnPolicy(idle_timeout_s=0.3), None),
    ("eof_then_retry", TurnPolicy(), None),
    ("drop_every_attempt", TurnPolicy(), None),
    ("http_401", TurnPolicy(), None),
    ("stall_then_retry", TurnPolicy(), 0.2),
]


def _trace_folder(path: str) -> str:
    """The folder `demo --traces` writes into, made if missing (`UsageError` when it cannot be)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--traces {path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--traces {path}: cannot make the folder ({error.strerror or error})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--traces {path}: the folder is not writable")
    return path


def _where_to_look(out: TextIO, traces: str | None, example: str) -> None:
    """The demo's last words: how to look at one of its turns."""
    if not traces:
        out.write("\nTo see a turn step by step, keep the traces: streamfsm demo --traces DIR, "
                  "then streamfsm show DIR/<trace> --html turn.html (and open turn.html)\n")
        return
    written = sorted(name for name in os.listdir(traces) if name.endswith(".jsonl"))
    if not written:
        return
    chosen = os.path.join(traces, next((name for name in written if example in name), written[0]))
    out.write(f"\nTraces written to {traces}/ (replay them all: streamfsm replay {traces})\n"
              f"See one turn step by step:  streamfsm show {chosen}\n"
              f"or on a time axis:          streamfsm show {chosen} --html turn.html   "
              "(then open turn.html in a browser)\n")


def _demo(args: argparse.Namespace, out: TextIO) -> int:
    import openai

    from engine.drivers.sync import run_turn
    from engine.simulator.server import ResponsesSimulator
    from engine.simulator.shapes import BACKGROUND_SHAPES, SHAPES

    if args.traces:
        _trace_folder(args.traces)
    if args.codex:
        from engine.simulator.codex_demo import run_codex_demo

        status = run_codex_demo(out, args.traces)
        if args.traces:  # without a codex binary, nothing ran and nothing was written
            _where_to_look(out, args.traces, "retried")
        return status
    out.write(
        "streamfsm demo: real turns with the openai client against the built-in Responses\n"
        "simulator on 127.0.0.1 (offline, no key). Each attempt's path through the states:\n"
    )
    for number, (name, policy, interrupt_after) in enumerate(DEMO_SCENARIOS, 1):
        script = SHAPES[name]
        background = name in BACKGROUND_SHAPES
        title = name + (" (interrupted by the caller)" if interrupt_after else "")
        if background:
            title += " (background: true)"
        if policy.idle_timeout_s:
            title += f" (idle timeout {policy.idle_timeout_s:g} s)"
        out.write(f"\n{number:2}. {title}\n    {script.description}\n")
        trace = os.path.join(args.traces, f"{number:02d}-{name}.jsonl") if args.traces else None
        stop = threading.Event()
        timer = threading.Timer(interrupt_after, stop.set) if interrupt_after else None
        with ResponsesSimulator(script) as sim:
            client = openai.OpenAI(base_url=sim.base_url, api_key="demo-key", max_retries=0)
            if timer:
                timer.start()
            began = time.monotonic()
            request: dict[str, Any] = {"model": "gpt-5", "input": "What is the capital of France?"}
            if background:
                request["background"] = True
            result = run_turn(client, request, policy=policy, trace=trace, interrupt=stop)
            elapsed = time.monotonic() - began
            sent = sim.requests
            requests = len(sent)
        if timer:
            timer.cancel()
        for line in describe_result(result):
            out.write(f"    {line}\n")
        out.write(f"    {requests} HTTP request(s), {elapsed * 1000:.0f} ms\n")
        if background:
            for one in sent:
                query = f"?{one.query}" if one.query else ""
                out.write(f"      {one.method} {one.path}{query}\n")
    _where_to_look(out, args.traces, "drop_then_retry")
    return 0


# -- replay ---------------------------------------------------------------------------------------
def _trace_paths(given: Sequence[str]) -> list[str]:
    """The trace files named: files as they are, folders searched for `*.jsonl`, sorted."""
    paths: list[str] = []
    for path in given:
        if not os.path.isdir(path):
            paths.append(path)
            continue
        found = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                       for name in names if name.endswith(".jsonl"))
        if not found:
            raise UsageError(f"{path}: a folder with no *.jsonl traces")
        paths += found
    return paths


def _replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from engine.drivers.replay import replay

    status = 0
    for path in _trace_paths(args.traces):
        try:
            report = replay(path)
        except Exception as error:  # an invalid trace; no input file may end in a traceback
            text = (str(error) if isinstance(error, TraceError)
                    else f"cannot replay {path}: {type(error).__name__}: {_one_line(str(error))}")
            if args.json:
                _json_line(out, {"trace": path, "identical": False, "first_divergence": None,
                                 "error": text})
            err.write(f"streamfsm: error: invalid trace: {text}\n" if isinstance(error, TraceError)
                      else f"streamfsm: error: {text}\n")
            status = 2
            continue
        if args.json:
            divergence = report.divergence
            _json_line(out, {
                "trace": path, "identical": report.identical, "records": report.records,
                "abandoned": report.abandoned,
                "first_divergence": None if divergence is None else {
                    "seq": divergence.seq, "recorded": divergence.recorded,
                    "replayed": divergence.replayed},
            })
            if divergence is not None:
                status = max(status, 1)
            continue
        if report.identical:
            cut_short = f"; the turn was abandoned ({report.abandoned})" if report.abandoned else ""
            out.write(f"identical  {path} ({report.records} records{cut_short})\n")
        else:
            divergence = report.divergence
            assert divergence is not None
            out.write(f"DIVERGED   {path}: first difference at seq {divergence.seq}\n")
            out.write(f"  recorded: {_record_text(divergence.recorded)}\n")
            out.write(f"  replayed: {_record_text(divergence.replayed)}\n")
            status = max(status, 1)
    return status


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record_text(record: dict[str, Any] | None) -> str:
    if record is None:
        return "(no record)"
    return dumps(record).decode()


# -- consume --------------------------------------------------------------------------------------
def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as source:
            data = source.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
    if data.lstrip()[:80].startswith(b'{"format":') and FORMAT.encode() in data[:200]:
        raise UsageError(f"{path} is a streamfsm trace, not raw SSE bytes: replay it with "
                         f"`streamfsm replay {path}`, or look at it with `streamfsm show {path}`")
    return data


def _consume(args: argparse.Namespace, out: TextIO) -> int:
    from engine.drivers.consume import consume
    from engine.log.eventlog import Callbacks

    data = _read_input(args.file)
    if args.trace is not None and os.path.isdir(args.trace):
        raise UsageError(f"--trace {args.trace}: is a folder, not a file to write")
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)] or [b""]
    printed: list[str] = []
    callbacks = Callbacks(on_text_delta=printed.append) if args.text else None
    result = consume(chunks, callbacks=callbacks, trace=args.trace)
    if args.json:
        _json_line(out, {**result.to_json(), "transitions": [
            {"seq": t.seq, "machine": t.machine, "attempt": t.attempt, "source": t.source,
             "dest": t.dest, "trigger": t.trigger} for t in result.transitions]})
        return 0
    if args.text:
        out.write("".join(printed) + "\n")
    for transition in result.transitions:
        out.write(
            f"{transition.seq:>5}  {transition.machine:<14} {transition.source} "
            f"-{transition.trigger}-> {transition.dest}\n"
        )
    for line in describe_result(result)[len(result.attempts):]:
        out.write(line + "\n")
    return 0


# -- show ----------------------------------------------------------------------------------------
def _show(args: argparse.Namespace, out: TextIO) -> int:
    from engine.view.timeline import Timeline, ending_lines, step_line

    timeline = Timeline(args.trace)  # TraceError: one line, exit 2
    if args.html:
        from engine.view.page import write_page

        if os.path.isdir(args.html):
            raise UsageError(f"--html {args.html}: is a folder, not a file to write")
        try:
            size = write_page(args.trace, args.html)
        except OSError as error:
            raise UsageError(f"cannot write {args.html}: {error.strerror or error}") from None
        if args.json:
            _json_line(out, {"trace": args.trace, "html": args.html, "bytes": size})
        else:
            out.write(f"wrote {args.html} ({size / 1024:.0f} KiB): open it in a browser; "
                      "hover a mark to see its record\n")
        return 0
    if args.json:
        for step in timeline.steps():
            _json_line(out, step.to_json())
        if timeline.abandoned is not None:
            _json_line(out, {"abandoned": timeline.abandoned})
        else:
            ending = dict(timeline.ending or {})
            ending.pop("kind", None)
            _json_line(out, {"result": ending})
        return 0
    request = timeline.header.get("request")
    model = request.get("model") if isinstance(request, dict) else None
    out.write(f"{args.trace}: {timeline.entry}" + (f", model {model}" if isinstance(model, str) else "")
              + "\n       t  attempt       arrived" + " " * 40
              + "→ state changes  ⇒ what the user got\n")
    for step in timeline.steps():
        out.write(step_line(step) + "\n")
    for line in ending_lines(timeline):
        out.write(line + "\n")
    return 0


# -- serve ---------------------------------------------------------------------------------------
def _load_scenario(fixture: str, timing: str) -> Scenario:
    """The scenario to serve (`UsageError` naming every problem, one line each)."""
    from engine.simulator.scenarios import ScenarioError, load_fixture

    try:
        return load_fixture(fixture, timing="recorded" if timing == "recorded" else "none")
    except ScenarioError as error:  # one line per mistake
        raise UsageError(*(error.problems or (str(error),))) from None


def _serve(args: argparse.Namespace, out: TextIO) -> int:
    """Serve until SIGINT or SIGTERM, then exit 0. The first line on stdout names the URL."""
    from engine.simulator.server import ResponsesSimulator
    from engine.simulator.shapes import SHAPES

    if args.list:
        for name, script in SHAPES.items():
            out.write(f"{name:34} {script.description}\n")
        return 0
    if not args.fixture:
        raise UsageError("serve needs a FIXTURE (a scenario file, a trace file or a shape name; --list shows shapes)")
    scenario = _load_scenario(args.fixture, args.timing)
    stop = threading.Event()
    previous = {
        number: signal.signal(number, lambda signum, frame: stop.set())
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        sim = ResponsesSimulator(scenario, port=args.port, log=args.serve_log)
        try:
            sim.start()
        except OSError as error:
            where = args.serve_log if error.filename else f"127.0.0.1:{args.port}"
            raise UsageError(f"cannot {'open' if error.filename else 'listen on'} {where}: "
                             f"{error.strerror or error}") from None
        count = scenario.reply_count
        out.write(
            f"serving {args.fixture} ({count} repl{'y' if count == 1 else 'ies'}"
            f"{', repeating' if scenario.repeat else ''}) at {sim.base_url}\n"
            f"try: OPENAI_BASE_URL={sim.base_url} OPENAI_API_KEY=any <your client>   "
            "(Ctrl-C or SIGTERM stops)\n"
        )
        if args.serve_log:
            out.write(f"logging requests to {args.serve_log}\n")
        out.flush()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            sim.close()
        out.write("stopped\n")
        out.flush()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


# -- record ---------------------------------------------------------------------------------------
def _record(args: argparse.Namespace, out: TextIO) -> int:
    """Record until SIGINT or SIGTERM, then exit 0. The first line on stdout names the URL."""
    from engine.simulator.recording_proxy import RecordingProxy

    stop = threading.Event()
    previous = {
        number: signal.signal(number, lambda signum, frame: stop.set())
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        try:
            proxy = RecordingProxy(args.upstream, args.out, port=args.port).start()
        except ValueError as error:
            raise UsageError(str(error)) from None
        except OverflowError:
            raise UsageError(f"cannot listen on 127.0.0.1:{args.port}: not a port") from None
        except OSError as error:
            where = args.out if error.filename else f"127.0.0.1:{args.port}"
            raise UsageError(f"cannot {'write to' if error.filename else 'listen on'} {where}: "
                             f"{error.strerror or error}") from None
        out.write(
            f"recording {proxy.upstream} into {args.out}/ at {proxy.base_url}\n"
            f"try: OPENAI_BASE_URL={proxy.base_url} <your client>   (Ctrl-C or SIGTERM stops)\n"
        )
        out.flush()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            proxy.close()
        count = len(proxy.traces)
        out.write(f"stopped: {count} request{'' if count == 1 else 's'} recorded "
                  f"(serve them: streamfsm serve {args.out})\n")
        out.flush()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


def _add_record_parser(commands: Any) -> None:
    rec = commands.add_parser(
        "record", help="a recording proxy: forward any client's requests, save each as a trace",
        description="Listen on 127.0.0.1 and forward every request to the upstream endpoint "
        "(the path after /v1 is appended to URL; headers are passed on), streaming each answer "
        "back chunk by chunk as it arrives, and save each request's answer as a trace in DIR "
        "(NNNN-METHOD-PATH.jsonl, in arrival order, with its chunk boundaries and timing; the "
        "client's credentials are masked). `streamfsm replay` replays them and `streamfsm serve "
        "DIR` serves them back in order. The first line printed gives the URL. Runs until SIGINT "
        "or SIGTERM, then exits 0.",
    )
    rec.add_argument("--upstream", required=True, metavar="URL",
                     help="the endpoint to forward to, e.g. https://api.openai.com/v1")
    rec.add_argument("--port", type=_port, default=8766,
                     help="port on 127.0.0.1 (default 8766; 0 picks one)")
    rec.add_argument("--out", required=True, metavar="DIR",
                     help="folder for the traces (created; must not hold traces yet)")


def _add_fuzz_parser(commands: Any) -> None:
    """`streamfsm fuzz`: the campaign's own options when the fuzzing extra (Hypothesis) is
    installed; otherwise a command that says how to install it, whatever it is given."""
    if _has_fuzz_extra():
        from engine.fuzz.options import add_arguments

        fz = commands.add_parser(
            "fuzz", help="run a long fuzzing campaign over generated sessions",
            description="Generate Responses-API sessions with Hypothesis, check every invariant, "
            "save each counterexample as a trace.",
        )
        add_arguments(fz)
        return
    missing = commands.add_parser(
        "fuzz", help="a long fuzzing campaign (needs: pip install 'streamfsm[fuzz]')",
        description=FUZZ_EXTRA_MISSING, add_help=False,
        prefix_chars="\0",  # no options: every argument (--help too) is taken as it comes
    )
    missing.add_argument("anything", nargs="*", help=argparse.SUPPRESS)
    missing.set_defaults(fuzz_missing=True)


def _has_fuzz_extra() -> bool:
    """Whether Hypothesis can be found, without importing it: every command builds the whole
    parser, and only `streamfsm fuzz` imports the campaign (and Hypothesis with it)."""
    try:
        return importlib.util.find_spec("hypothesis") is not None
    except (ImportError, ValueError):  # blocked, or a module without a spec
        return False


#: What `streamfsm fuzz` says when Hypothesis is not installed.
FUZZ_EXTRA_MISSING = (
    "fuzz needs the fuzz extra (Hypothesis): pip install 'streamfsm[fuzz]'"
)


# -- diagram --------------------------------------------------------------------------------------
def _diagram(args: argparse.Namespace, out: TextIO) -> int:
    try:
        out.write(mermaid(args.machine))
    except ValueError as error:
        raise UsageError(str(error)) from None
    return 0


# -- fixtures -------------------------------------------------------------------------------------
def _fixtures(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    directory = args.directory
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: not a folder of replay fixtures")
    if not args.rerecord:
        for root, _, names in sorted(os.walk(directory)):
            for name in sorted(n for n in names if n.endswith(".jsonl")):
                out.write(os.path.join(root, name) + "\n")
        return 0
    from engine.testing.fixtures import rerecord

    done = rerecord(directory)
    for item in done:
        out.write(f"{item.how:9} {item.outcome or '-':12} {item.path}\n")
    left = [item.path for item in done if item.how == "left"]
    if left:
        err.write(f"streamfsm fixtures: {len(left)} trace(s) need a new recording from their "
                  f"source (today's machines ask for inputs they do not hold): {', '.join(left)}\n")
        return 1
    return 0


# -- parser ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, whose every complaint is a `UsageError` (one line, exit 2) instead of the
    usage text and a message of its own format."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _port(text: str) -> int:
    """A TCP port on 127.0.0.1: 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is not between 0 and 65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `streamfsm` argument parser with all its subcommands (`fuzz` only when the fuzzing
    extra, Hypothesis, is installed)."""
    parser = _Parser(
        prog="streamfsm",
        description="Responses-API streams as explicit, recorded, replayable state machines.",
    )
    parser.add_argument("--log", action="store_true",
                        help="make every line on stderr one JSON object (structlog: transitions, "
                        "outcomes, errors); nothing from other libraries")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="offline: run real turns through the built-in simulator and show their paths",
        description="Start the built-in Responses-API simulator on 127.0.0.1 and run real turns "
        "(the openai client over HTTP) through happy and failure shapes: prelude frames, error "
        "frames, empty output, drops, stalls, HTTP errors, an interrupt. No key, no network.",
    )
    demo.add_argument("--traces", metavar="DIR", help="also write each turn's trace into DIR")
    demo.add_argument("--codex", action="store_true",
                      help="run the turns through the real codex app-server (STREAMFSM_CODEX or "
                      "codex on PATH): text, approvals accepted and declined, a retried drop, "
                      "an interrupt")

    rep = commands.add_parser(
        "replay", help="replay recorded traces through today's machines and compare",
        description="Feed each trace's recorded inputs to today's machines and compare every "
        "record. Exit 0: all identical; 1: a divergence (the first differing record is printed); "
        "2: an unreadable or invalid trace.",
    )
    rep.add_argument("traces", nargs="+", metavar="TRACE",
                     help="trace files (JSON Lines), or folders of *.jsonl traces")
    rep.add_argument("--json", action="store_true",
                     help="one JSON object per trace: trace, identical, first_divergence")

    con = commands.add_parser(
        "consume", help="run raw SSE bytes (e.g. saved from `curl -N`) through one attempt",
        description="Run a file of raw server-sent-event bytes through one stream attempt and "
        "print the transitions and the outcome. The end of the file is the end of the stream.",
    )
    con.add_argument("file", metavar="FILE", help="file of raw SSE bytes, or - for stdin")
    con.add_argument("--trace", metavar="OUT", help="also record the attempt as a trace")
    con.add_argument("--text", action="store_true", help="print the delivered answer text first")
    con.add_argument("--json", action="store_true", help="print the result as one JSON object")

    sho = commands.add_parser(
        "show", help="a recorded turn as a timeline: in the terminal, or as an HTML page",
        description="Show what happened in a recorded turn, one line per step: seconds since "
        "the start, the attempt, what arrived (bytes and their events, an HTTP error, a fault, "
        "a stall, a line from codex), the state change it caused, what the user got (text, a "
        "tool call, an approval, a retry wait); then the result. With --html, one "
        "self-contained page instead: the turn on a time axis, one lane per attempt, hover a "
        "mark for its record.",
    )
    sho.add_argument("trace", metavar="TRACE", help="a trace file (JSON Lines)")
    sho.add_argument("--html", metavar="OUT", help="write the timeline as an HTML page to OUT")
    sho.add_argument("--json", action="store_true",
                     help="one JSON object per step, then the result")

    srv = commands.add_parser(
        "serve", help="serve a scenario, trace, folder of traces or built-in shape as a "
        "Responses-API endpoint",
        description="Serve POST /v1/responses on 127.0.0.1 for any client: a scenario file "
        "(.toml or .json: which reply each request gets; see docs/scenarios.md), a recorded "
        "trace (.jsonl: its chunks, faults and HTTP errors, attempt by attempt), a folder of "
        "traces (what `streamfsm record` writes: served once, in order) or a built-in shape. "
        "Traces and shapes repeat from the start once used up. The first line printed gives "
        "the URL. Runs until SIGINT or SIGTERM, then exits 0.",
    )
    srv.add_argument("fixture", nargs="?", metavar="FIXTURE",
                     help="a scenario file (.toml/.json), a trace file, a folder of traces or "
                     "a shape name")
    srv.add_argument("--port", type=_port, default=8765,
                     help="port on 127.0.0.1 (default 8765; 0 picks one)")
    srv.add_argument("--log", dest="serve_log", metavar="FILE",
                     help="append one JSON line per request received (n, t, method, path, "
                     "headers with secrets redacted, body, reply, status)")
    srv.add_argument("--timing", choices=("none", "recorded"), default="none",
                     help="for traces: 'recorded' reproduces their recorded pauses (default none)")
    srv.add_argument("--list", action="store_true", help="list the built-in shapes and exit")

    fix = commands.add_parser(
        "fixtures", help="list the replay fixtures, or re-record them after a rule changed",
        description="List the traces in DIR (default replay_fixtures/). With --rerecord, record "
        "again every one that today's machines no longer replay identically: the ones streamfsm "
        "makes itself (the built-in shapes through the simulator, and a few scripted turns) from "
        "their source, every other trace (a promoted fuzzing finding, a codex app-server "
        "recording) from its own recorded inputs through today's machines. Exit 1 when a trace's "
        "inputs no longer suffice (it is left as it is).",
    )
    fix.add_argument("directory", nargs="?", default="replay_fixtures", metavar="DIR",
                     help="the fixtures folder (default replay_fixtures)")
    fix.add_argument("--rerecord", action="store_true",
                     help="record again every fixture today's machines do not replay identically")

    dia = commands.add_parser(
        "diagram", help="print a machine's transition table as a Mermaid stateDiagram-v2",
        description="Print the machine's transition table as Mermaid, generated from the table.",
    )
    dia.add_argument("machine", nargs="?", default="stream_attempt", choices=sorted(MACHINES),
                     help="which machine (default stream_attempt)")

    _add_record_parser(commands)
    _add_fuzz_parser(commands)
    return parser


def _wants_log(arguments: Sequence[str]) -> bool:
    """Whether the global `--log` comes before the command (`serve --log FILE` is another)."""
    for argument in arguments:
        if argument == "--log":
            return True
        if not argument.startswith("-"):
            return False
    return False


def _failed(err: TextIO, lines: Sequence[str], as_json: bool) -> int:
    """Say what was wrong, one line each (`streamfsm: error: ...`, or a JSON log line with
    `--log`); the exit status is 2."""
    for line in lines:
        if as_json:
            log.error("streamfsm: error", message=line)
        else:
            err.write(f"streamfsm: error: {line}\n")
    return 2


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser, out: TextIO,
              err: TextIO) -> int:
    if args.command == "demo":
        return _demo(args, out)
    if args.command == "replay":
        return _replay(args, out, err)
    if args.command == "consume":
        return _consume(args, out)
    if args.command == "show":
        return _show(args, out)
    if args.command == "serve":
        return _serve(args, out)
    if args.command == "diagram":
        return _diagram(args, out)
    if args.command == "fixtures":
        return _fixtures(args, out, err)
    if args.command == "record":
        return _record(args, out)
    if args.command == "fuzz":
        if getattr(args, "fuzz_missing", False):
            raise UsageError(FUZZ_EXTRA_MISSING)
        from engine.fuzz import campaign as fuzz

        return fuzz.run(args, out)
    parser.print_help(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `streamfsm` command with `argv` (default: `sys.argv[1:]`); return the exit status.

    A bad argument, path or port, or an invalid input file, is one line on stderr and status 2,
    never a traceback (with `--log`, that line is a JSON object too)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    out, err = sys.stdout, sys.stderr
    as_json = _wants_log(arguments)
    if as_json:
        log_to(err)
    try:
        parser = build_parser()
        args = parser.parse_args(arguments)
        return _dispatch(args, parser, out, err)
    except UsageError as error:
        return _failed(err, [_one_line(line) for line in error.args] or ["bad usage"], as_json)
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
    except (TraceError, TypeError, ValueError, OSError) as error:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, OSError) and error.strerror:
            where = f"{error.filename}: " if error.filename else ""
            text = f"{where}{error.strerror}"
        return _failed(err, [_one_line(text)], as_json)
    except Exception as error:  # never a traceback; --log keeps it for a bug report
        log.error("streamfsm failed", exc_info=True)
        return _failed(err, [f"{type(error).__name__}: {_one_line(str(error))}"], as_json)


if __name__ == "__main__":
    sys.exit(main())
