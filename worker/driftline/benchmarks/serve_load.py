"""A fixed-rate HTTP load generator for ``driftline bench serve``, run as its own process.

Open loop: request ``i`` is due at ``start + i / rate`` whatever the answers before it
did, and its latency is measured from that due time, so a slow answer that holds the
generator back is counted in full rather than hidden (no coordinated omission).  HTTP/1.1
keep-alive over a pool of connections, written and parsed by hand on asyncio streams: a
general-purpose client costs several hundred microseconds of Python per request, which on
a 2-core machine would be measured as the server's latency.

Prints one JSON object: requests sent, answers by status, achieved rate, and p50, p99,
p99.9 and max latency in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import numpy as np

from driftline.benchmarks.latency import latency_summary


async def _connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def run_load(
    host: str, port: int, paths: list[str], rate: float, duration_s: float, connections: int
) -> dict[str, Any]:
    """Offer ``rate`` GETs per second for ``duration_s`` over ``paths`` (round robin)."""
    total = max(1, int(rate * duration_s))
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await _connect(host, port))
    requests = [
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n".encode()
        for path in paths
    ]
    latencies = np.full(total, np.nan)
    statuses = np.zeros(total, dtype=np.int32)
    clock = time.perf_counter

    async def one(i: int, due: float) -> None:
        reader, writer = await pool.get()
        try:
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies[i] = clock() - due
            statuses[i] = int(head[9:12])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            statuses[i] = -1
            reader, writer = await _connect(host, port)
        finally:
            pool.put_nowait((reader, writer))

    tasks = []
    start = clock() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = clock() - start
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    codes, counts = np.unique(statuses, return_counts=True)
    summary = latency_summary(latencies)
    return {
        "offered_rps": rate,
        "achieved_rps": round(total / elapsed, 1),
        "requests": total,
        "statuses": {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)},
        "p50_ms": summary["p50"],
        "p99_ms": summary["p99"],
        "p99_9_ms": summary["p99_9"],
        "max_ms": summary["max"],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="fixed-rate GET load (driftline bench serve)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--paths-file", required=True, help="one request path per line")
    a = parser.parse_args(argv)
    with open(a.paths_file) as f:
        paths = [line.strip() for line in f if line.strip()]
    result = asyncio.run(run_load(a.host, a.port, paths, a.rate, a.duration, a.connections))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
