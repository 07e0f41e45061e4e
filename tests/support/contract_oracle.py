"""An independent judge of the input contract, for the fuzz tests.

It knows nothing of msgspec or ``driftline.core.events``: it reads the value with the
standard library (strict UTF-8, ``json`` with NaN/Infinity refused and top-level
repeated names of the
contract's own properties caught) and validates it against ``schemas/customer-event.schema.json``
with ``jsonschema``, plus the two rules the schema states in prose only (an RFC 3339
``event_time`` must carry a zone and lie within 2000..2100; integers are written without
fraction or exponent).  What the worker scores must pass this judge.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "customer-event.schema.json"
MAX_BYTES = 64 * 1024
MIN_MS, MAX_MS = 946_684_800_000, 4_102_444_800_000
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)
_INT_TIME = re.compile(rb'"event_time"\s*:\s*(-?[0-9][0-9eE.+-]*)')


class Verdict(str):
    """Why a value breaks the contract ('' = it does not)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


KNOWN = (
    "event_id",
    "customer_id",
    "event_time",
    "event_type",
    "amount",
    "quantity",
    "age",
    "income",
    "tenure_months",
    "plan_type",
    "region",
)


class _Object(dict):  # type: ignore[type-arg]
    """A JSON object that remembers which of its names were repeated."""

    repeated: frozenset[str] = frozenset()


def _pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        names = [k for k, _ in pairs]
        obj.repeated = frozenset(k for k in names if names.count(k) > 1)
    return obj


class ContractOracle:
    def __init__(self) -> None:
        schema = json.loads(SCHEMA_PATH.read_text())
        self.validator = jsonschema.Draft202012Validator(schema)

    def judge(self, value: bytes | None) -> str:
        """'' when ``value`` is a valid event by the contract, else a short reason."""
        if not value:
            return "empty"
        if len(value) > MAX_BYTES:
            return "oversized"
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            return "encoding"
        try:
            event = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_pairs)
        except (ValueError, RecursionError):
            return "json"
        if not isinstance(event, dict):
            return "schema"
        if event.repeated & set(KNOWN):  # unknown properties may repeat: they are ignored
            return "duplicate"
        try:
            # Lone surrogates from \\ud800 escapes are not Unicode text: not UTF-8 JSON.
            json.dumps(event, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "surrogate"
        except (ValueError, RecursionError):
            pass
        errors = list(self.validator.iter_errors(event))
        if errors:
            return "schema"
        when = event["event_time"]
        if isinstance(when, str):
            if not _RFC3339.match(when):
                return "time_format"
            try:
                parsed = datetime.fromisoformat(when.replace("z", "Z").replace("t", "T"))
            except ValueError:
                return "time_format"
            ms = parsed.timestamp() * 1000
            if not MIN_MS <= ms <= MAX_MS:
                return "time_range"
        elif isinstance(when, float) or _not_plain_integer(value):
            return "time_format"
        return ""


def _not_plain_integer(value: bytes) -> bool:
    """Whether a numeric ``event_time`` is written with a fraction or an exponent."""
    match = _INT_TIME.search(value)
    return bool(match) and not match.group(1).lstrip(b"-").isdigit()
