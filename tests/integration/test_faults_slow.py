"""Long versions of the fault tests (``test_faults.py``): more events, many more kills.

Skipped unless ``DRIFTLINE_SLOW=1``; each takes minutes.  ``pytest -s`` prints figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import test_faults
from test_faults import (
    Topics,
    assert_no_duplicates_or_xfail,
    scenario_broker_frozen,
    scenario_kill_loop,
    scenario_poison,
    scenario_rebalance,
    scenario_sigterm_exactly_once,
)

from driftline.core.spec import FeatureSpec
from driftline.model.registry import LoadedModel

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("DRIFTLINE_SLOW") != "1", reason="long fault tests: set DRIFTLINE_SLOW=1"
    ),
]


# The fixtures of the short versions, shared (same module directory, no package).
topics = test_faults.topics


def test_kill9_loop_exactly_once_300k_events_20_kills(
    topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel, strict_exactly_once: bool
) -> None:
    check, crashes, _ = scenario_kill_loop(
        topics, spec, loaded_model, exactly_once=True, n_events=300_000, kills=20, seed=70
    )
    assert len(crashes) >= 15, f"only {len(crashes)} kills landed before the stream ended"
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.mismatched == 0, check.summary()
    assert_no_duplicates_or_xfail(check, strict_exactly_once, 200 * len(crashes), "kill loop")


def test_kill9_loop_at_least_once_300k_events_20_kills(
    topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel
) -> None:
    check, crashes, _ = scenario_kill_loop(
        topics, spec, loaded_model, exactly_once=False, n_events=300_000, kills=20, seed=71
    )
    assert len(crashes) >= 15, f"only {len(crashes)} kills landed before the stream ended"
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.duplicated <= 200 * len(crashes), check.summary()
    assert check.mismatched == 0, check.summary()


def test_kill9_loop_with_dynamic_membership(
    topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel, strict_exactly_once: bool
) -> None:
    """Restarts that wait a session timeout for the dead member (no static membership)."""
    check, crashes, _ = scenario_kill_loop(
        topics,
        spec,
        loaded_model,
        exactly_once=True,
        n_events=100_000,
        kills=8,
        seed=72,
        static_membership=False,
    )
    assert len(crashes) >= 6
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.mismatched == 0, check.summary()
    assert_no_duplicates_or_xfail(check, strict_exactly_once, 200 * len(crashes), "kill loop")


def test_rebalance_long(
    topics: Topics,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    strict_exactly_once: bool,
    broker_times_out_transactions: bool,
) -> None:
    check, _ = scenario_rebalance(
        topics,
        spec,
        loaded_model,
        n_events=120_000,
        rate=3_000,
        broker_times_out_transactions=broker_times_out_transactions,
    )
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    assert check.mismatched == 0, check.summary()
    assert_no_duplicates_or_xfail(check, strict_exactly_once, 200, "rebalance")


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_broker_frozen_60s(
    trained_registry: Path, tmp_path: Path, mode: str, broker_source: str
) -> None:
    extra = ("--exactly-once",) if mode == "exactly-once" else ()
    kind = test_faults.frozen_broker_kind(broker_source)
    check, figures = scenario_broker_frozen(
        trained_registry,
        tmp_path,
        broker_kind=kind,
        n_events=40_000,
        rate=800,
        freeze_s=60,
        extra=extra,
        until_aborted=3 if mode == "exactly-once" else 0,
    )
    assert figures["starts"] == 1
    assert check.lost == 0 and check.unexpected == 0, check.summary()
    if mode == "exactly-once":
        assert figures["transactions_aborted"] >= 1, figures
        bound = int(200 * figures["transactions_aborted"])
        assert_no_duplicates_or_xfail(check, kind == "kafka", bound, "rewind")
    assert figures["first_503_after_s"] is not None, figures


def test_poison_100k(topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel) -> None:
    check, figures = scenario_poison(topics, spec, loaded_model, n_valid=30_000, n_bad=100_000)
    assert check.exactly_once and check.mismatched == 0, check.summary()
    assert figures["dead_letters_missing"] == 0 and figures["dead_letters_extra"] == 0, figures
    assert figures["wrong_reasons"] == {}, figures
    base, half, end = figures["rss_mib"]
    assert end - half < 128, figures
    assert end - base < 768, figures


def test_sigterm_exactly_once_many_stops(
    topics: Topics, spec: FeatureSpec, loaded_model: LoadedModel
) -> None:
    check, figures = scenario_sigterm_exactly_once(
        topics, spec, loaded_model, n_events=150_000, stops=10
    )
    assert figures["graceful_stops_logged"] == 11
    assert check.exactly_once and check.mismatched == 0, check.summary()
