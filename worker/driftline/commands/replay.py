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
from pathlib import Path

import pandas as pd

from driftline.commands._errors import CommandError
from driftline.commands._flags import add_bootstrap, add_topics
from driftline.commands._kafka import connect
from driftline.replay import (
    CDNOW_MAPPING,
    ColumnMapping,
    event_file_mapping,
    file_columns,
    load_events,
    replay,
)

HELP = __doc__ or ""

#: Event fields every mapping must provide from a column of the file.
_REQUIRED = ("customer_id", "event_time")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bootstrap(parser)
    add_topics(parser, output=False)
    parser.add_argument("file", help="CSV or Parquet event log")
    parser.add_argument(
        "--mapping",
        choices=["cdnow", "events", "custom"],
        default=None,
        help="column mapping preset (default: events, or custom with --column/--constant)",
    )
    parser.add_argument(
        "--column", action="append", default=[], help="field=source_column (custom mapping)"
    )
    parser.add_argument(
        "--constant", action="append", default=[], help="field=value (custom mapping)"
    )
    parser.add_argument("--time-format", default=None, help="strptime format of the time column")
    parser.add_argument(
        "--speedup", type=float, default=None, help="event-time speed-up (default: max speed)"
    )
    parser.add_argument("--rate", type=float, default=None, help="cap in events per second")
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def mapping_from_args(args: argparse.Namespace) -> ColumnMapping:
    """The mapping asked for; ``CommandError`` naming what is wrong with it or the file."""
    custom = bool(args.column or args.constant)
    kind = args.mapping or ("custom" if custom else "events")
    if custom and kind != "custom":
        raise CommandError(f"--column/--constant make a custom mapping: drop --mapping {kind}")
    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    try:
        header = file_columns(path)
    except (ValueError, OSError) as error:
        raise CommandError(f"{path}: not a readable CSV or Parquet file ({error})") from error
    try:
        if kind == "cdnow":
            mapping = CDNOW_MAPPING
        elif kind == "events":
            absent = [f for f in (*_REQUIRED, "event_type") if f not in header]
            if absent:
                raise CommandError(
                    f"{path} has no column(s) {', '.join(absent)} (columns: "
                    f"{', '.join(header) or 'none'}); map yours with --column FIELD=COLUMN"
                )
            mapping = event_file_mapping(path)
        else:
            mapping = ColumnMapping.from_strings(
                args.column, args.constant, time_format=args.time_format
            )
    except ValueError as error:
        raise CommandError(f"mapping for {path}: {error}") from error
    absent = sorted(set(mapping.columns.values()) - set(header))
    if absent:
        raise CommandError(
            f"{path} has no column(s) {', '.join(absent)} (columns: {', '.join(header) or 'none'})"
        )
    return mapping


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
