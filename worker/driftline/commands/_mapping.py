"""``--mapping`` / ``--column`` / ``--constant`` / ``--time-format``: how a raw log's columns
become event fields, one definition for every command that reads a log (``replay`` and
``train``), so a mapping that works for one works for the other.

Presets: ``cdnow`` (the CDNOW master file: customer_id, date, number_of_cds,
dollar_value; every row a purchase, dates moved forward by whole 28-year calendar cycles
into the contract's 2000..2100 range), ``events`` (a file that already has the event field
names, the default), or ``custom`` (``--column FIELD=COLUMN``, ``--constant FIELD=VALUE``;
giving either implies ``custom``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from driftline.replay import ColumnMapping

MAPPING_PRESETS = ("cdnow", "events", "custom")
#: Event fields every mapping must provide from a column of the file.
REQUIRED_FIELDS = ("customer_id", "event_time")


class MappingError(ValueError):
    """The mapping asked for does not fit the file (or is not a mapping): one line."""


def add_mapping(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The mapping flags, identical in every command that reads a raw event log."""
    parser.add_argument(
        "--mapping",
        choices=MAPPING_PRESETS,
        default=None,
        help="column mapping preset (default: events, or custom with --column/--constant)",
    )
    parser.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="map an event field to a column of the file (custom mapping; repeatable)",
    )
    parser.add_argument(
        "--constant",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set an event field to a constant, e.g. event_type=purchase (custom mapping)",
    )
    parser.add_argument(
        "--time-format",
        default=None,
        help="strptime format of the time column (custom mapping; default: ISO 8601)",
    )


def mapping_kind(args: argparse.Namespace) -> str:
    """The preset the flags ask for (``events`` when nothing is said)."""
    custom = bool(args.column or args.constant)
    kind: str = args.mapping or ("custom" if custom else "events")
    if custom and kind != "custom":
        raise MappingError(f"--column/--constant make a custom mapping: drop --mapping {kind}")
    return kind


def mapping_for_file(path: str | Path, args: argparse.Namespace) -> ColumnMapping:
    """The mapping the flags ask for, checked against the file's header."""
    from driftline.replay import (  # lazily: replay pulls in the Kafka client
        CDNOW_MAPPING,
        ColumnMapping,
        event_file_mapping,
        file_columns,
    )

    kind = mapping_kind(args)
    path = Path(path)
    if not path.is_file():
        raise MappingError(f"{path}: no such file")
    try:
        header = file_columns(path)
    except (ValueError, OSError) as error:
        raise MappingError(f"{path}: not a readable CSV or Parquet file ({error})") from error
    try:
        if kind == "cdnow":
            mapping = CDNOW_MAPPING
        elif kind == "events":
            absent = [f for f in (*REQUIRED_FIELDS, "event_type") if f not in header]
            if absent:
                raise MappingError(
                    f"{path} has no column(s) {', '.join(absent)} (columns: "
                    f"{', '.join(header) or 'none'}); map yours with --column FIELD=COLUMN"
                )
            mapping = event_file_mapping(path)
        else:
            mapping = ColumnMapping.from_strings(
                args.column, args.constant, time_format=args.time_format
            )
    except MappingError:
        raise
    except ValueError as error:
        raise MappingError(f"mapping for {path}: {error}") from error
    absent = sorted(set(mapping.columns.values()) - set(header))
    if absent:
        raise MappingError(
            f"{path} has no column(s) {', '.join(absent)} (columns: {', '.join(header) or 'none'})"
        )
    return mapping
