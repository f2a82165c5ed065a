"""The full fault matrix: every byte offset of a shape's first reply, cut with FIN and with RST,
then a good retry, over real HTTP (`engine.testing.fault_matrix`). Prints a line per shape and
`RESULT {json}`; exits 1 if any turn broke a promise.

    python bench/bench_faults.py [--shapes happy_text function_call] [--replay-every 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.testing.fault_matrix import body_of, sweep  # noqa: E402
from engine.simulator.shapes import SHAPES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["happy_text", "function_call"])
    parser.add_argument("--replay-every", type=int, default=50)
    args = parser.parse_args()
    results = {}
    broken = 0
    for shape in args.shapes:
        body = body_of(SHAPES[shape].replies[0])
        started = time.monotonic()
        report = sweep(shape, range(len(body)), replay_every=args.replay_every)
        took = time.monotonic() - started
        broken += len(report.failures)
        results[shape] = {
            "bytes": len(body),
            "turns": report.turns,
            "retried": report.retried,
            "failures": len(report.failures),
            "first_failures": [f"{c.offset}/{c.drop}: {c.problem}" for c in report.failures[:3]],
            "seconds": round(took, 1),
        }
        print(f"{shape}: {report.turns} turns ({len(body)} offsets x FIN/RST), "
              f"{report.retried} retried, {len(report.failures)} broken, {took:.0f} s")
    print("RESULT " + json.dumps(results, sort_keys=True))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
