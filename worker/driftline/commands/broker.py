"""Run the embedded Kafka-protocol broker (Tansu, in-memory) in the foreground.

For demos, development and tests on machines without Kafka.  Storage is in memory: all
topics are gone when it stops.  Ctrl-C or SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse

from driftline.broker import run_foreground

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9092, help="listen port (default: %(default)s)")
    parser.add_argument(
        "--log-dir", default=None, help="keep the broker log here (default: temporary)"
    )


def run(args: argparse.Namespace) -> int:
    return run_foreground(port=args.port, host=args.host, log_dir=args.log_dir)
