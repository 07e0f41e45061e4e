"""The ``[label]`` table of the feature spec: parsed once, used by training and by the live
outcome join; bad tables fail with a message naming the key."""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from typing import Any

import numpy as np
import pandas as pd
import pytest

from driftline.commands.train import train_on_events
from driftline.core.labels import ChurnDefinition, label_definition
from driftline.core.offline import training_set
from driftline.core.spec import DAY_MS, SpecError, default_spec_path, load_default_spec, parse_spec

BASE: dict[str, Any] = tomllib.loads(default_spec_path().read_text())


def spec_with(label: object) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.pop("label", None)
    if label is not None:
        data["label"] = label
    return data


def test_the_shipped_spec_declares_the_cdnow_label() -> None:
    label = label_definition(load_default_spec())
    assert label == ChurnDefinition(
        horizon_ms=90 * DAY_MS, target_event="purchase", lookback_ms=90 * DAY_MS,
        kind="silence", name="churned",
    )  # fmt: skip
    assert label.describe() == "churned = no purchase within 90d"


def test_a_subscription_label_and_a_spec_without_one() -> None:
    spec = parse_spec(
        spec_with(
            {
                "kind": "occurrence",
                "target_event": "cancel_request",
                "horizon": "60d",
                "name": "cancelled",
            }
        )
    )
    label = label_definition(spec)
    # No lookback given: the idle eviction, the longest a tick can see back.
    assert (label.kind, label.target_event, label.horizon_ms, label.lookback_ms, label.name) == (
        "occurrence", "cancel_request", 60 * DAY_MS, spec.eviction_after_ms, "cancelled",
    )  # fmt: skip
    assert label_definition(parse_spec(spec_with(None))) == ChurnDefinition()
    short = spec_with(None)
    short["state"] = {**short.get("state", {}), "idle_eviction": "30d"}
    assert label_definition(parse_spec(short)) == dataclasses.replace(
        ChurnDefinition(), lookback_ms=30 * DAY_MS
    )


def test_a_lookback_past_the_idle_eviction_is_refused_by_the_spec_and_by_training() -> None:
    """Training rows are the customers a tick scores; a tick holds no customer idle past
    the eviction, so a longer lookback would say it trained on customers it never saw."""
    data = spec_with({"kind": "silence", "target_event": "purchase", "horizon": "30d",
                      "lookback": "180d"})  # fmt: skip
    with pytest.raises(SpecError, match=r"lookback \(180d\) is longer than the state's idle"):
        parse_spec(data)
    data["state"] = {**data.get("state", {}), "idle_eviction": "181d"}
    assert parse_spec(data).label is not None  # a longer eviction makes room for it
    spec = parse_spec(spec_with(None))
    events = pd.DataFrame(
        {"customer_id": ["a", "b"], "event_time": [0, 400 * DAY_MS],
         "event_type": ["purchase", "purchase"], "amount": [1.0, 2.0]}
    )  # fmt: skip
    with pytest.raises(ValueError, match="longer than the state's idle eviction"):
        training_set(events, spec, [200 * DAY_MS], ChurnDefinition(lookback_ms=180 * DAY_MS))


def test_the_label_is_not_part_of_the_feature_digest() -> None:
    """Models are pinned to the features they read; a changed label must not make the
    worker refuse a model trained under the same features."""
    with_label = parse_spec(spec_with({"kind": "silence", "target_event": "login",
                                       "horizon": "30d"}))  # fmt: skip
    assert with_label.digest == parse_spec(spec_with(None)).digest


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("90d", "[label] must be a table"),
        ({"kind": "silence", "horizon": "90d"}, "needs ['target_event']"),
        ({"kind": "churn", "target_event": "purchase", "horizon": "90d"}, "kind must be one of"),
        ({"kind": "silence", "target_event": "purchases", "horizon": "90d"},
         "target_event 'purchases' is not an event type"),
        ({"kind": "silence", "target_event": "purchase", "horizon": "90 days"},
         "horizon: bad duration"),
        ({"kind": "silence", "target_event": "purchase", "horizon": "0d"},
         "horizon must be positive"),
        ({"kind": "silence", "target_event": "purchase", "horizon": "9d", "lookback": True},
         "lookback must be a duration"),
        ({"kind": "silence", "target_event": "purchase", "horizon": "9d", "window": "1d"},
         "unknown keys ['window']"),
        ({"kind": "silence", "target_event": "purchase", "horizon": "9d", "name": "Churn"},
         "name must be snake_case"),
    ],
)  # fmt: skip
def test_a_bad_label_table_says_which_key_and_why(table: object, message: str) -> None:
    with pytest.raises(SpecError, match="label") as caught:
        parse_spec(spec_with(table), source="features.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("features.toml: ")


def history() -> pd.DataFrame:
    """Three customers: a buys again within 10 days of day 10, b only after, c never; all
    of them cancel or not."""
    rows = [
        ("a", 1, "purchase"), ("a", 15, "purchase"), ("a", 16, "cancel_request"),
        ("b", 2, "purchase"), ("b", 25, "purchase"),
        ("c", 3, "purchase"), ("c", 12, "cancel_request"), ("z", 40, "login"),
    ]  # fmt: skip
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(len(rows))],
            "customer_id": [r[0] for r in rows],
            "event_time": [r[1] * DAY_MS for r in rows],
            "event_type": [r[2] for r in rows],
        }
    )


def test_training_labels_for_both_kinds() -> None:
    spec = load_default_spec()
    silence = ChurnDefinition(horizon_ms=10 * DAY_MS)
    occurrence = ChurnDefinition(horizon_ms=10 * DAY_MS, kind="occurrence",
                                 target_event="cancel_request")  # fmt: skip
    _, y, keys = training_set(history(), spec, [10 * DAY_MS], silence)
    assert dict(zip(keys["customer_id"], y, strict=True)) == {"a": 0, "b": 1, "c": 1}
    _, y, keys = training_set(history(), spec, [10 * DAY_MS], occurrence)
    assert dict(zip(keys["customer_id"], y, strict=True)) == {"a": 1, "b": 0, "c": 1}


def test_train_uses_the_spec_label_and_its_flags_override_it() -> None:
    from driftline.simulate import Population

    events = Population(n_customers=150, seed=3).generate_history(days=200)
    base = spec_with({"kind": "occurrence", "target_event": "support_ticket", "horizon": "30d",
                      "lookback": "60d", "name": "complains"})  # fmt: skip
    spec = parse_spec(base)
    fast: dict[str, Any] = {"n_estimators": 5, "cv_folds": 2, "progress": False}
    result = train_on_events(events, spec, **fast)
    assert result.dataset["churn_definition"] == {
        "name": "complains", "kind": "occurrence", "target_event": "support_ticket",
        "horizon_days": 30.0, "lookback_days": 60.0,
    }  # fmt: skip
    cutoff = result.dataset["cutoffs_ms"][0]
    _, y, _ = training_set(events, spec, [cutoff], label_definition(spec))
    assert np.isclose(result.dataset["churn_rate"], y.mean())
    overridden = train_on_events(events, spec, horizon_days=20, target_event="purchase", **fast)
    assert overridden.dataset["churn_definition"] == {
        "name": "complains", "kind": "occurrence", "target_event": "purchase",
        "horizon_days": 20.0, "lookback_days": 60.0,
    }  # fmt: skip


def test_what_the_outcome_service_writes_the_quality_reader_reads() -> None:
    """The closed loop's contract: every field of a written outcome decodes, unchanged,
    with ``driftline quality``'s own struct (a subset of the same fields)."""
    import msgspec

    from driftline.contracts import PREDICTION_OUTCOME
    from driftline.core.labels.records import PredictionOutcome
    from driftline.core.quality.records import PredictionOutcome as QualityOutcome

    for example in PREDICTION_OUTCOME.examples:
        written = msgspec.json.encode(msgspec.convert(example, PredictionOutcome))
        read = msgspec.json.decode(written, type=QualityOutcome)
        assert msgspec.structs.asdict(read) == {
            k: v for k, v in example.items() if k in msgspec.structs.asdict(read)
        }
