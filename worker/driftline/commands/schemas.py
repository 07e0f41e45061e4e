"""``driftline schemas``: write or check the public JSON Schemas (see ``driftline.contracts``)."""

from __future__ import annotations

import argparse
import logging
import sys

HELP = """Write the JSON Schemas of the topic contracts, generated from the code.

The schemas (customer event, prediction, dead-letter headers, retrain request, prediction
outcome, customer outcome, model decision) are what other teams validate against; they are
generated from the structs the worker decodes and encodes with, so they cannot drift from
it.  Run after changing a contract and commit the result.  --check writes nothing and exits
1 when the files differ from the code (for CI).
"""

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="schemas",
        metavar="DIR",
        help="directory of the schema files (default: %(default)s)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files in --out differ from the code",
    )


def run(args: argparse.Namespace) -> int:
    from driftline.contracts import check_schemas, write_schemas

    if args.check:
        problems = check_schemas(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(
                f"{len(problems)} schema file(s) out of date: run `driftline schemas --out "
                f"{args.out}` and commit the result",
                file=sys.stderr,
            )
            return 1
        log.info("schemas in %s match the code", args.out)
        return 0
    for path in write_schemas(args.out):
        log.info("wrote %s", path)
    return 0
