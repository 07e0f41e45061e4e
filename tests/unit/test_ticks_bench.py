"""``driftline bench ticks`` measures a tick's parts per customer scored."""

from __future__ import annotations

from driftline.benchmarks.ticks import run_tick_bench, to_json, to_table


def test_the_tick_bench_times_features_score_and_encoding_per_customer() -> None:
    (figures,) = run_tick_bench([3000], progress=False)
    assert 2000 < figures.customers <= 3000
    for part in (figures.features_us_per_customer, figures.score_us_per_customer):
        assert 0 < part < 10_000
    assert figures.total_us_per_customer >= figures.score_us_per_customer
    assert "tick us/c" in to_table([figures])
    assert '"total_us_per_customer"' in to_json([figures])
