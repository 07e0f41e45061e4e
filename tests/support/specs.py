"""Feature specs for drift tests (test support, not shipped: no command uses them).

The simulated population is a closed cohort: everyone's first event is at the start of the
simulation, so ``active_streak_months`` (time since the first event of the customer's
streak) is the calendar, and ``spend_90d_per_month`` divides by it.  Between the reference
period and a live stream weeks later, those two features really do drift (by ~7 reference
standard deviations), and a trustworthy monitor reports it.  A test of "no drift means no
alarm" therefore needs a spec without the calendar-bound features; every other default
feature is stationary in the simulator up to the cohort's slow churn.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path

from driftline.core.spec import FeatureSpec, default_spec_path, load_spec, parse_spec

#: Default-spec features that move with the calendar in a closed simulated cohort.
CALENDAR_FEATURES: tuple[str, ...] = ("active_streak_months", "spend_90d_per_month")


def spec_without(
    names: Iterable[str], source: str = "<default spec without calendar>"
) -> FeatureSpec:
    """The default spec minus the features ``names`` (which nothing else may depend on)."""
    drop = set(names)
    data = tomllib.loads(default_spec_path().read_text())
    features = data.get("feature", [])
    unknown = drop - {f["name"] for f in features}
    if unknown:
        raise ValueError(f"not in the default spec: {sorted(unknown)}")
    data["feature"] = [f for f in features if f["name"] not in drop]
    return parse_spec(data, source)


def stationary_spec() -> FeatureSpec:
    """The default spec without :data:`CALENDAR_FEATURES`."""
    return spec_without(CALENDAR_FEATURES)


def write_stationary_spec(path: Path) -> FeatureSpec:
    """Write the default spec's TOML without :data:`CALENDAR_FEATURES` to ``path`` (for a
    worker process's ``--spec``) and return it, loaded from there."""
    marker = "[[feature]]"
    head, *blocks = default_spec_path().read_text().split(marker)
    kept = [b for b in blocks if not any(f'name = "{n}"' in b for n in CALENDAR_FEATURES)]
    path.write_text(head + "".join(marker + b for b in kept))
    spec = load_spec(path)
    if spec.digest != stationary_spec().digest:
        raise AssertionError("the written spec differs from stationary_spec()")
    return spec
