"""Replay a real event log (CSV or Parquet) into the input topic.

A column mapping turns the file's columns into event fields.  Presets:
  --mapping cdnow   the CDNOW master file (customer_id, date, number_of_cds,
                    dollar_value): every row a purchase, dates moved forward by whole
                    28-year calendar cycles into the contract's 2000..2100 range
  --mapping events  a file that already has the event field names (the default)
Or give your own (--column/--constant imply --mapping custom):
                  --column customer_id=cust --column event_time=ts
                  --constant event_type=purchase ...
Events are sent in event-time order, as fast as possible or --speedup times faster than
they happened (86400: one day per second).
"""

from __future__ import annotations

import argparse
import signal
import threading

import pandas as pd

from driftline.commands._errors import CommandError
from driftline.commands._flags import add_bootstrap, add_topics
from driftline.commands._kafka import connect
from driftline.commands._mapping import MappingError, add_mapping, mapping_for_file
from driftline.replay import ColumnMapping, load_events, replay

HELP = __doc__ or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap(parser)
    add_topics(parser, output=False)
    parser.add_argument("file", help="CSV or Parquet event log")
    add_mapping(parser)
    parser.add_argument(
        "--speedup", type=float, default=None, help="event-time speed-up (default: max speed)"
    )
    parser.add_argument("--rate", type=float, default=None, help="cap in events per second")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def mapping_from_args(args: argparse.Namespace) -> ColumnMapping:
    """The mapping asked for; ``CommandError`` naming what is wrong with it or the file."""
    try:
        return mapping_for_file(args.file, args)
    except MappingError as error:
        raise CommandError(str(error)) from error


def run(args: argparse.Namespace) -> int:
    mapping = mapping_from_args(args)
    try:
        events = load_events(args.file, mapping)
    except (ValueError, pd.errors.ParserError) as error:
        raise CommandError(f"{args.file}: {error}") from error
    connect(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    count = replay(
        args.bootstrap_servers,
        args.input_topic,
        events,
        speedup=args.speedup,
        rate=args.rate,
        limit=args.limit,
        progress=not args.no_progress,
        stop=stop,
    )
    print(f"replayed {count} events from {args.file} to {args.input_topic}")
    return 0
