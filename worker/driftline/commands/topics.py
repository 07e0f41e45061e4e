"""Create Driftline's topics with explicit partition counts and configs.

Input (customer events), output (predictions) and dead-letter topics, all with the same
partition count so that consumers downstream scale like the workers.  Creating them
explicitly matters: a topic a producer auto-creates gets the broker's default partition
count, and the worker's parallelism is capped by the input topic's partitions.  Existing
topics with the right partition count are left as they are.
"""

from __future__ import annotations

import argparse

from driftline.commands._flags import add_bootstrap, add_topics
from driftline.commands._kafka import connect
from driftline.config import DEFAULT_PARTITIONS, TopicNames
from driftline.engine.kafka.admin import default_topics, ensure_topics

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap(parser)
    add_topics(parser)
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="partitions per topic (default: %(default)s)",
    )
    parser.add_argument(
        "--retention-ms",
        type=int,
        default=7 * 24 * 3600 * 1000,
        help="retention.ms of every topic (default: 7 days)",
    )


def run(args: argparse.Namespace) -> int:
    names = TopicNames(args.input_topic, args.output_topic, args.dead_letter_topic)
    specs = default_topics(args.partitions, names, retention_ms=args.retention_ms)
    connect(args)
    ensure_topics(args.bootstrap_servers, specs)
    for spec in specs:
        print(f"topic {spec.name}: {spec.partitions} partitions {spec.effective_config}")
    return 0
