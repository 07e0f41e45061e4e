"""``driftline train``'s inputs and the dataset part of its report: reading event logs
(with the mapping flags ``replay`` has) and customer tables, cutoff dates, and the
recency baseline's score, which comes from the log rather than from the features.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftline.commands._mapping import MappingError, mapping_for_file, mapping_kind
from driftline.core.spec import DAY_MS

#: Columns an event file must have (the rest of the event fields are optional).
REQUIRED_EVENT_COLUMNS = ("customer_id", "event_time", "event_type")


class UsageError(ValueError):
    """Bad input the user can fix: reported as one line on stderr, exit status 2."""


def recency_days(events: pd.DataFrame, keys: pd.DataFrame, target_event: str) -> pd.Series:
    """Days from each row's customer's last ``target_event`` at or before its cutoff to the
    cutoff (NaN: none yet): the one-feature recency baseline, aligned with ``keys``.

    Computed from the log, not from the features: a training row holds the features as of
    the customer's last event, where a days-since-last-purchase feature reads 0 for a
    purchase-only log, while the baseline's question is how long the customer has been
    quiet at the cutoff.
    """
    target = events.loc[events["event_type"] == target_event, ["customer_id", "event_time"]]
    right = pd.DataFrame(
        {
            "customer_id": target["customer_id"].astype(str).to_numpy(),
            "last_ms": target["event_time"].to_numpy(dtype=np.int64),
        }
    ).sort_values("last_ms", kind="stable")
    left = pd.DataFrame(
        {
            "customer_id": keys["customer_id"].astype(str).to_numpy(),
            "cutoff_ms": keys["cutoff_ms"].to_numpy(dtype=np.int64),
            "row": np.arange(len(keys)),
        }
    ).sort_values("cutoff_ms", kind="stable")
    joined = pd.merge_asof(
        left, right, left_on="cutoff_ms", right_on="last_ms", by="customer_id"
    ).sort_values("row")
    days = (joined["cutoff_ms"] - joined["last_ms"]) / DAY_MS
    return pd.Series(days.to_numpy(dtype=np.float64), name="days_since_last_target_event")


def read_event_file(
    path: str | Path, mapping: str | argparse.Namespace | None = None
) -> tuple[pd.DataFrame, int]:
    """(events, calendar shift in ms) from an event-format file or a mapped raw log.

    ``mapping`` is the parsed mapping flags (``--mapping``, ``--column``, ``--constant``,
    ``--time-format``, the same as ``replay``'s), a preset name, or None for an event file.
    The shift is what the mapping added to every time (CDNOW is moved 28 years on so the
    event contract accepts it); cutoffs typed by the user are in the file's calendar and
    must be shifted the same way.
    """
    from driftline import replay

    path = _existing_file(path)
    flags = (
        mapping
        if isinstance(mapping, argparse.Namespace)
        else argparse.Namespace(mapping=mapping, column=[], constant=[], time_format=None)
    )
    try:
        if mapping_kind(flags) == "events":
            header = _header(path)
            missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in header]
            if missing:
                raise UsageError(
                    f"{path}: missing column(s) {missing} (has {header}); an event file needs "
                    f"{list(REQUIRED_EVENT_COLUMNS)}, or pass --mapping / --column for a raw log"
                )
            return replay.load_events(path), 0
        column_mapping = mapping_for_file(path, flags)
    except MappingError as error:
        raise UsageError(str(error)) from None
    try:
        events = replay.load_events(path, column_mapping)
    except (ValueError, pd.errors.ParserError) as error:
        raise UsageError(f"{path}: {error}") from None
    return events, int(column_mapping.time_shift_ms)


def read_table(path: str | Path) -> pd.DataFrame:
    """A customer table from CSV or Parquet; ids and blank cells are kept as text."""
    path = _existing_file(path)
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")


def parse_cutoff(text: str) -> int:
    """``YYYY-MM-DD`` (or any ISO datetime; naive = UTC) -> epoch millis."""
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise UsageError(f"bad --cutoff {text!r}: use YYYY-MM-DD") from None
    if pd.isna(stamp):
        raise UsageError(f"bad --cutoff {text!r}: use YYYY-MM-DD")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1_000_000)


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file")
    return path


def _header(path: Path) -> list[str]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    return [str(c) for c in pd.read_csv(path, nrows=0, sep=sep).columns]


def dataset_summary(dataset: dict[str, Any]) -> str:
    """The dataset part of the report; dates in the source file's own calendar."""
    if dataset.get("source") == "table":
        lines = [
            f"Dataset: table {dataset['path']}: {dataset['n_rows']} customers, label "
            f"{dataset['label_column']!r} positive={dataset['positive_label']!r}, churn rate "
            f"{dataset['churn_rate']:.1%}"
        ]
        if "note" in dataset:
            lines.append(dataset["note"])
        return "\n".join(lines)
    rates = dataset["churn_rate_by_cutoff"]
    rows = dataset["rows_by_cutoff"]
    definition = dataset["churn_definition"]
    start, end = dataset["history"]
    shown = dataset["cutoffs"]
    lines = [
        f"Dataset: events {dataset['path']}"
        + (f" (mapping {dataset['mapping']})" if dataset.get("mapping") else "")
        + f": {dataset['n_events']} events, history {start} .. {end}",
        f"  churned = no {definition['target_event']!r} within {definition['horizon_days']} days "
        f"after the cutoff; customers active in the {definition['lookback_days']} days before",
        f"  {dataset['n_rows']} rows, {dataset['n_customers']} customers, "
        f"{len(shown)} cutoff(s), churn rate {dataset['churn_rate']:.1%}",
        *(
            f"    cutoff {day}: {rows[day]} rows, churn rate {rates[day]:.1%}"
            if day in rates
            else f"    cutoff {day}: no active customer"
            for day in shown
        ),
    ]
    if dataset["calendar_shift_days"]:
        lines.append(
            f"  (dates as in the file; replayed {dataset['calendar_shift_days']} days later)"
        )
    return "\n".join(lines)
