"""``driftline`` command line: one subcommand per job, each in ``driftline.commands``.

Every flag can also be set by an environment variable ``DRIFTLINE_<FLAG>`` (dashes become
underscores, e.g. ``--bootstrap-servers`` <- ``DRIFTLINE_BOOTSTRAP_SERVERS``); a flag given
on the command line wins.  That makes the same image configurable by compose files and
Kubernetes manifests without wrapper scripts.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: subcommand -> module in driftline.commands exposing HELP, add_arguments(p), run(args)
COMMANDS = (
    "broker",
    "topics",
    "simulate",
    "replay",
    "train",
    "models",
    "retrain",
    "worker",
    "outcomes",
    "demo",
    "bench",
    "schemas",
    "quality",
    "report",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline",
        description="Streaming churn scoring and drift monitoring on Kafka.",
        epilog="Every flag also reads DRIFTLINE_<FLAG> from the environment.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity; librdkafka's own log only at DEBUG (env DRIFTLINE_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"driftline.commands.{name}")
        command = sub.add_parser(
            name,
            help=module.HELP.splitlines()[0],
            description=module.HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from driftline.broker import BrokerError
    from driftline.commands._errors import EXIT_USAGE, CommandError
    from driftline.commands._flags import apply_env_defaults, env_error
    from driftline.engine.kafka.admin import BrokerUnavailable
    from driftline.engine.kafka.client_config import KAFKA_LOGGER

    parser = build_parser()
    apply_env_defaults(parser)
    args = parser.parse_args(argv)
    if message := env_error(args):
        print(message, file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # librdkafka retries a missing broker every few ms, each time with an ERROR line:
    # useful when debugging a connection, noise that buries the one line that matters
    # otherwise (the command says itself when no broker answers).
    KAFKA_LOGGER.setLevel(logging.DEBUG if args.log_level == "DEBUG" else logging.CRITICAL + 1)
    try:
        return int(args._run(args) or 0)
    except (CommandError, BrokerUnavailable, BrokerError) as error:
        print(f"driftline {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
