"""Throughput of the SSE decoder (`engine.drivers.sse.SseDecoder`), the way the network feeds it.

Cases: one event whose single `data:` line is 1 MB, 20 MB or 100 MB long, and 20,000 small
`response.output_text.delta` events; every stream is cut into 64 KiB chunks (the HTTP client's
read size), so a long line reaches the decoder in many pieces. Reported: CPU seconds
(`time.process_time`) and MB/s for each case, and one line `RESULT {json}`.

    python bench/bench_sse.py [--sizes 1,20,100] [--deltas 20000] [--limit-mib 64]

With `--limit-mib N` (default 64, 0 for none) the decoder is built with
`max_event_bytes = N MiB`, as a turn builds it: an event larger than that is refused as soon as
the limit is passed (`too_large`), so the 100 MB case measures how fast it is refused.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

from engine.drivers.sse import SseDecoder

CHUNK = 64 * 1024


def _chunks(body: bytes) -> list[bytes]:
    view = memoryview(body)
    return [bytes(view[i : i + CHUNK]) for i in range(0, len(body), CHUNK)]


def _decoder(limit: int | None) -> SseDecoder:
    if limit is not None and "max_event_bytes" in inspect.signature(SseDecoder).parameters:
        return SseDecoder(max_event_bytes=limit)  # type: ignore[call-arg,unused-ignore]
    return SseDecoder()


def run(chunks: list[bytes], limit: int | None) -> tuple[float, int, bool]:
    decoder = _decoder(limit)
    started = time.process_time()
    events = 0
    for chunk in chunks:
        events += len(decoder.feed(chunk))
    elapsed = time.process_time() - started
    return elapsed, events, bool(getattr(decoder, "too_large", False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,20,100", help="single-line event sizes in MB")
    parser.add_argument("--deltas", type=int, default=20_000)
    parser.add_argument("--limit-mib", type=int, default=64)
    args = parser.parse_args()
    limit = args.limit_mib * 2**20 if args.limit_mib else None
    results: dict[str, dict[str, float | int | bool]] = {}
    for size in [int(s) for s in args.sizes.split(",") if s]:
        body = b"data: " + b"x" * (size * 1_000_000) + b"\n\n"
        seconds, events, refused = run(_chunks(body), limit)
        results[f"line_{size}MB"] = {
            "cpu_s": round(seconds, 3), "MB_per_s": round(len(body) / 1e6 / max(seconds, 1e-9), 1),
            "events": events, "too_large": refused,
        }
    delta = (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"item_id":"msg_1","output_index":0,"content_index":0,"delta":"abcd"}\n\n'
    )
    body = delta * args.deltas
    seconds, events, refused = run(_chunks(body), limit)
    results[f"deltas_{args.deltas}"] = {
        "cpu_s": round(seconds, 3), "MB_per_s": round(len(body) / 1e6 / max(seconds, 1e-9), 1),
        "events": events, "too_large": refused,
    }
    for name, row in results.items():
        print(f"{name:16} {row['cpu_s']:8.3f} s CPU {row['MB_per_s']:9.1f} MB/s  events={row['events']}"
              f" too_large={row['too_large']}")
    print("RESULT " + json.dumps({"limit_bytes": limit, "chunk": CHUNK, "cases": results}))


if __name__ == "__main__":
    main()
