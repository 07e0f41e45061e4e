"""Feature specification: what features exist, declared in a TOML file rather than code.

A spec is data so that the online state, the offline training-set builder and the drift
monitor all read the *same* declaration: a feature added in one place exists everywhere,
and its digest pins a trained model to the spec it was trained with.

Window semantics (shared by online and offline code; the parity test checks it):
a window of length ``W`` is cut into ``buckets_per_window`` buckets of ``b = W / n`` ms,
aligned to the epoch.  Evaluated at time ``T`` (the customer's clock: the latest event
time seen for that customer), the window holds the events whose bucket index
``floor(t / b)`` lies in ``[floor(T / b) - n + 1, floor(T / b)]``.  The window therefore
slides one bucket at a time and spans between ``W - b`` and ``W`` of event time.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from driftline.core.events import CATEGORICAL_FIELDS, EVENT_TYPES, NUMERIC_FIELDS, PROFILE_FIELDS
from driftline.core.labels.definition import ChurnDefinition, parse_label

Aggregation = Literal["count", "sum", "mean", "min", "max", "last", "time_since_last"]
AGGREGATIONS: tuple[str, ...] = ("count", "sum", "mean", "min", "max", "last", "time_since_last")
_NEEDS_FIELD = {"sum", "mean", "min", "max", "last"}

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
DAY_MS = 86_400_000


def parse_duration_ms(text: str | int) -> int:
    """'30d' -> ms.  Integers are taken as milliseconds already."""
    if isinstance(text, int):
        return text
    match = _DURATION.match(text.strip())
    if not match:
        raise SpecError(f"bad duration {text!r}: use e.g. 90s, 15m, 1h, 7d, 2w")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


class SpecError(ValueError):
    """The feature spec is invalid; the message says which entry and why."""


@dataclass(frozen=True, slots=True)
class AggregateFeature:
    """An aggregation of events, optionally filtered by type and limited to a window."""

    name: str
    agg: str
    field: str | None = None  # numeric event field; None for count / time_since_last
    event_types: tuple[str, ...] = ()  # empty: all types
    window_ms: int | None = None  # None: the customer's whole (retained) history
    unit_ms: int = DAY_MS  # time_since_last is reported in this unit


@dataclass(frozen=True, slots=True)
class RatioFeature:
    """``numerator / denominator``; NaN when the denominator is 0 or missing."""

    name: str
    numerator: str
    denominator: str


@dataclass(frozen=True, slots=True)
class TenureFeature:
    """Time since the first event of the customer's current activity streak, in ``unit_ms``
    (at least ``floor``).

    A streak ends when the customer is silent for longer than the idle eviction
    (:attr:`FeatureSpec.eviction_after_ms`): the next event starts a new one, as the state
    has forgotten the old (whether or not the eviction sweep ran).  Not the time since the
    very first event: name such a feature for what it is (``active_streak_months``)."""

    name: str
    unit_ms: int = 30 * DAY_MS
    floor: float = 1.0


@dataclass(frozen=True, slots=True)
class ProfileFeature:
    """The latest value seen of a profile field (age, plan_type, ...)."""

    name: str
    source: str

    @property
    def categorical(self) -> bool:
        return self.source in CATEGORICAL_FIELDS


Feature = AggregateFeature | RatioFeature | TenureFeature | ProfileFeature


@dataclass(frozen=True)
class FeatureSpec:
    features: tuple[Feature, ...]
    allowed_lateness_ms: int = 3_600_000
    buckets_per_window: int = 12
    idle_eviction_ms: int | None = None  # default: the longest window plus lateness
    source: str = field(default="", compare=False)
    #: The ``[label]`` table (``core.labels.label_definition`` reads it).  Not part of the
    #: digest: the label is what a model is trained and judged against, not an input it
    #: reads, so a model stays servable under a spec whose label changed.
    label: ChurnDefinition | None = field(default=None, compare=False)

    # --- derived views -------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def categorical_features(self) -> list[str]:
        return [f.name for f in self.features if isinstance(f, ProfileFeature) and f.categorical]

    @property
    def numeric_features(self) -> list[str]:
        cats = set(self.categorical_features)
        return [f.name for f in self.features if f.name not in cats]

    @property
    def feature_types(self) -> dict[str, str]:
        cats = set(self.categorical_features)
        return {f.name: ("categorical" if f.name in cats else "numeric") for f in self.features}

    @property
    def aggregates(self) -> list[AggregateFeature]:
        return [f for f in self.features if isinstance(f, AggregateFeature)]

    @property
    def windows_ms(self) -> list[int]:
        return sorted({f.window_ms for f in self.aggregates if f.window_ms is not None})

    @property
    def max_window_ms(self) -> int:
        return max(self.windows_ms, default=30 * DAY_MS)

    @property
    def eviction_after_ms(self) -> int:
        if self.idle_eviction_ms is not None:
            return self.idle_eviction_ms
        return self.max_window_ms + self.allowed_lateness_ms

    def bucket_ms(self, window_ms: int) -> int:
        return window_ms // self.buckets_per_window

    def to_dict(self) -> dict[str, object]:
        return {
            "allowed_lateness_ms": self.allowed_lateness_ms,
            "buckets_per_window": self.buckets_per_window,
            "idle_eviction_ms": self.idle_eviction_ms,
            "features": [{"kind": type(f).__name__, **asdict(f)} for f in self.features],
        }

    @property
    def digest(self) -> str:
        """sha256 of the canonical spec: a model records it, the worker compares it."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def load_spec(path: str | Path) -> FeatureSpec:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from None
    return parse_spec(data, source=str(path))


def default_spec_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "features.toml"


def load_default_spec() -> FeatureSpec:
    return load_spec(default_spec_path())


def parse_spec(data: dict[str, object], source: str = "<dict>") -> FeatureSpec:
    state = data.get("state", {})
    if not isinstance(state, dict):
        raise SpecError(f"{source}: [state] must be a table")
    entries = data.get("feature", [])
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"{source}: declare at least one [[feature]]")
    features: list[Feature] = []
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise SpecError(f"{source}: feature #{position} must be a table")
        features.append(_parse_feature(entry, f"{source}: feature #{position}"))
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"{source}: duplicate feature names {duplicates}")
    known = set(names)
    for f in features:
        if isinstance(f, RatioFeature):
            for part in (f.numerator, f.denominator):
                if part not in known:
                    raise SpecError(f"{source}: ratio {f.name!r} refers to unknown {part!r}")
                if part == f.name:
                    raise SpecError(f"{source}: ratio {f.name!r} refers to itself")
                other = next(x for x in features if x.name == part)
                if isinstance(other, RatioFeature | ProfileFeature) and not (
                    isinstance(other, ProfileFeature) and not other.categorical
                ):
                    raise SpecError(
                        f"{source}: ratio {f.name!r} may use aggregates, tenure and numeric "
                        f"profile fields, not {part!r}"
                    )
    spec = FeatureSpec(
        features=tuple(features),
        allowed_lateness_ms=parse_duration_ms(state.get("allowed_lateness", "1h")),
        buckets_per_window=int(state.get("buckets_per_window", 12)),
        idle_eviction_ms=(
            parse_duration_ms(state["idle_eviction"]) if "idle_eviction" in state else None
        ),
        source=source,
    )
    if "label" in data:  # its lookback defaults to, and is bounded by, the idle eviction
        label = parse_label(
            data["label"],
            source,
            event_types=EVENT_TYPES,
            parse_duration_ms=parse_duration_ms,
            error=SpecError,
            eviction_after_ms=spec.eviction_after_ms,
        )
        spec = replace(spec, label=label)
    if not 1 <= spec.buckets_per_window <= 1024:
        raise SpecError(f"{source}: buckets_per_window must be within 1..1024")
    for window in spec.windows_ms:
        if window % spec.buckets_per_window:
            raise SpecError(
                f"{source}: window of {window} ms is not a multiple of "
                f"buckets_per_window={spec.buckets_per_window}"
            )
    return spec


def _parse_feature(entry: dict[str, object], where: str) -> Feature:
    name = entry.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise SpecError(f"{where}: 'name' must be snake_case, got {name!r}")
    where = f"{where} ({name})"
    if "profile" in entry:
        source = entry["profile"]
        if source not in PROFILE_FIELDS:
            raise SpecError(f"{where}: profile must be one of {PROFILE_FIELDS}, got {source!r}")
        return ProfileFeature(name=name, source=str(source))
    if "ratio" in entry:
        parts = entry["ratio"]
        if not (isinstance(parts, list) and len(parts) == 2):
            raise SpecError(f"{where}: ratio must be [numerator, denominator]")
        return RatioFeature(name=name, numerator=str(parts[0]), denominator=str(parts[1]))
    if entry.get("agg") == "tenure":
        # Values as TOML gives them (Any): parse_duration_ms and float judge them.
        unit: Any = entry.get("unit", "30d")
        floor: Any = entry.get("floor", 1.0)
        return TenureFeature(name=name, unit_ms=parse_duration_ms(unit), floor=float(floor))
    agg = entry.get("agg")
    if agg not in AGGREGATIONS:
        raise SpecError(f"{where}: agg must be one of {(*AGGREGATIONS, 'tenure')}, got {agg!r}")
    source_field = entry.get("field")
    if agg in _NEEDS_FIELD:
        if source_field not in NUMERIC_FIELDS:
            raise SpecError(f"{where}: agg {agg!r} needs field in {NUMERIC_FIELDS}")
    elif source_field is not None:
        raise SpecError(f"{where}: agg {agg!r} takes no field")
    types: Any = entry.get("event_types", [])  # a str or a list of them, as TOML gives it
    if isinstance(types, str):
        types = [types]
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise SpecError(f"{where}: unknown event types {unknown}; known: {EVENT_TYPES}")
    window = entry.get("window")
    if agg in ("last", "time_since_last") and window is not None:
        raise SpecError(f"{where}: {agg!r} takes no window (it looks at the latest event)")
    return AggregateFeature(
        name=name,
        agg=str(agg),
        field=str(source_field) if source_field is not None else None,
        event_types=tuple(types),
        window_ms=parse_duration_ms(window) if window is not None else None,  # type: ignore[arg-type]
        unit_ms=parse_duration_ms(entry.get("unit", "1d")),  # type: ignore[arg-type]
    )
