"""The demo's concept drift (``--inject concept``): the inputs keep their distribution, the
churn warning changes hands, and the demo's own rule evaluation matches the rule file.

* Before the swap the world is the steady one, event for event (the history a model is
  trained on is the same with or without the scenario's machinery).
* After it, the served features stay where the reference profile put them (PSI below
  0.1 per feature, as ``test_demo_world`` holds the stationary demo to), while the
  customers in trouble are now the ones who stay.
* :func:`degraded` (the fallback when Prometheus is not installed) picks the windows the
  rule expression in monitoring/rules/driftline-quality.yml would.
"""

from __future__ import annotations

import pandas as pd
from test_demo_world import _psi_by_feature, _served

from driftline.commands._demo_alerting import degraded
from driftline.commands.train import train_on_events
from driftline.core.spec import load_default_spec
from driftline.demo_concept import CONCEPT_CHURN, ConceptPopulation
from driftline.demo_world import DemoWorld, Injection
from driftline.model.training import positive_scores
from driftline.simulate import _SUPPORT, DAY_MS
from driftline.simulate_steady import SteadyPopulation

CUSTOMERS = 600
END_MS = 19_675 * DAY_MS
NEVER = 1e13


def _live(world: DemoWorld, days: int, injection: Injection | None = None) -> pd.DataFrame:
    frames = []
    for frame in world.live_frames(injection=injection, wall=lambda: NEVER):
        frames.append(frame)
        if world.population.clock_ms >= world.end_ms + days * DAY_MS:
            break
    return pd.concat(frames, ignore_index=True)


def test_before_the_swap_the_world_is_the_steady_one() -> None:
    kwargs = {"n_customers": 300, "seed": 3, "churn_rate": CONCEPT_CHURN[0]}
    concept = ConceptPopulation(**kwargs, horizon_days=CONCEPT_CHURN[1])  # type: ignore[arg-type]
    steady = SteadyPopulation(**kwargs, horizon_days=CONCEPT_CHURN[1])  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(concept.generate_history(120), steady.generate_history(120))


def test_after_the_swap_the_warning_comes_from_customers_who_stay() -> None:
    world = DemoWorld(CUSTOMERS, seed=5, end_ms=END_MS, concept=True)
    world.history()
    population = world.population
    assert isinstance(population, ConceptPopulation)
    m = population.mechanism
    before = population._rates(float(population.clock_ms))[_SUPPORT]
    population.swap_warning()
    after = population._rates(float(population.clock_ms))[_SUPPORT]
    # Customers in trouble, but others: before, those in trouble were (nearly) all churning
    # within 30 days or already going quiet; now they churn no more than customers at
    # large (decoys are drawn where churn is least likely).
    in_trouble = after > m.support_rate * 3  # the trouble bump dominates the base rate
    was = before > m.support_rate * 3
    soon = population._onset - population.clock_ms < 30 * DAY_MS
    assert soon[was].mean() > 0.95, soon[was].mean()
    assert soon[in_trouble].mean() < soon.mean(), (soon[in_trouble].mean(), soon.mean())


def test_the_served_features_keep_the_reference_distribution_after_the_swap() -> None:
    """The monitor's own check (PSI against the model's reference profile), on what the
    worker serves 30-90 days after the swap: every feature below 0.1, as for the
    stationary demo.  The score moves more (measured 0.11, against 0.05 without the
    swap): the decoys' tickets come with steady purchases, a joint the old model never
    saw, so its scores shift though no single input does; still well below 0.25."""
    spec = load_default_spec()
    world = DemoWorld(CUSTOMERS, seed=5, end_ms=END_MS, concept=True)
    history = world.history()
    result = train_on_events(
        history, spec, horizon_days=30, lookback_days=30, n_estimators=20, cv_folds=2,
        progress=False,
    )  # fmt: skip
    injection = Injection("concept", at_s=0.0)
    live = _live(world, 90, injection)
    assert injection.applied_at_ms == END_MS
    features, times = _served(pd.concat([history, live]), spec)
    frame = features[times >= END_MS + 30 * DAY_MS][spec.feature_names].reset_index(drop=True)
    scores = positive_scores(result.pipeline, frame)
    values = _psi_by_feature(result.reference_profile, frame, scores)
    worst = sorted(values.items(), key=lambda kv: -kv[1])[:5]
    score = values.pop("__score__")
    assert max(values.values()) < 0.1, worst
    assert score < 0.2, worst


def _sample(name: str, value: float, **labels: str) -> tuple[str, dict[str, str], float]:
    return name, {"model": "churn", **labels}, value


def test_the_demo_rule_picks_the_windows_the_rule_file_would() -> None:
    samples = [
        _sample("driftline_quality_training_roc_auc", 0.90, model_version="v1"),
        _sample("driftline_quality_training_roc_auc", 0.70, model_version="v2"),
    ]
    rows = {  # (version, window): (realised AUC, labels)
        ("v1", "w1"): (0.86, 500),  # above 0.85: fine
        ("v1", "w2"): (0.84, 500),  # below training - 0.05: degraded
        ("v1", "w3"): (0.50, 199),  # too few labels to judge
        ("v2", "w1"): (0.62, 300),  # below 0.65 = 0.70 - 0.05
        ("v2", "w2"): (0.66, 300),  # fine
    }
    for (version, window), (auc, labels) in rows.items():
        samples.append(
            _sample("driftline_quality_roc_auc", auc, model_version=version, window=window,
                    basis="realised")
        )  # fmt: skip
        samples.append(
            _sample("driftline_quality_roc_auc", 0.99, model_version=version, window=window,
                    basis="estimated")
        )  # fmt: skip
        samples.append(
            _sample("driftline_quality_labels", labels, model_version=version, window=window)
        )
    found = {(f["model_version"], f["window"]) for f in degraded(samples)}
    assert found == {("v1", "w2"), ("v2", "w1")}
    # Without a training figure, the floor (0.6) alone.
    floor = [
        _sample("driftline_quality_roc_auc", 0.59, model_version="v3", window="w",
                basis="realised"),
        _sample("driftline_quality_labels", 200, model_version="v3", window="w"),
    ]  # fmt: skip
    assert [f["model_version"] for f in degraded(floor)] == ["v3"]
