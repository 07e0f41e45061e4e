"""Calibration of the drift detectors: the thresholds must deliver the false-alarm rates they
promise.  Checked by simulating in-control streams (vectorized: thousands of streams at once),
so the whole file stays within a few seconds."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.stats import chi2, norm, poisson

from driftline.core.drift import (
    BernoulliCusum,
    CategoricalWindowTest,
    CusumBank,
    FalseAlarmBudget,
    bernoulli_cusum_arl,
    bernoulli_cusum_threshold,
    chi2_statistic,
    cusum_threshold,
    g_statistic,
    lindley_path,
    markov_chain_arl,
    siegmund_arl,
    smooth_shares,
    variance_increments,
    window_test_threshold,
)
from driftline.core.drift.calibration import (
    DEGENERATE_H,
    discrete_cusum_threshold,
    normal_increment_cdf,
)
from driftline.core.drift.monitor import RankScores
from driftline.model.profile import OTHER


def measured_arl(
    bank: CusumBank | BernoulliCusum,
    draw: Callable[[int, int], np.ndarray],
    target: float,
) -> float:
    """Mean run length to the first alarm over the bank's streams, run until all alarm.

    ``draw(n, k)`` returns an in-control batch.  Runs are not restarted, so each stream gives
    one independent run length; streams still running after 12 target ARLs (a fraction
    ~exp(-12) for the roughly geometric run length) are counted at that censored length,
    which biases the estimate down, i.e. against the test.
    """
    size = len(bank)
    run_length = np.full(size, 12.0 * target)
    done = np.zeros(size, dtype=bool)
    batch = max(64, int(target // 4))
    elapsed = 0
    while elapsed < 12 * target and not done.all():
        result = bank.update(draw(batch, size))
        fresh = result.alarm & ~done
        run_length[fresh] = elapsed + result.first_alarm[fresh] + 1
        done |= result.alarm
        elapsed += batch
    return float(run_length.mean())


def test_siegmund_threshold_values_and_markov_chain_agree() -> None:
    # Known table values for k = 0.5: one-sided h = 4 gives ARL ~ 336, h = 5 ~ 930.
    assert siegmund_arl(4.0, -0.5) == pytest.approx(336, rel=0.01)
    assert siegmund_arl(5.0, -0.5) == pytest.approx(930, rel=0.01)
    for target in (500.0, 1e4, 1e6):
        h = cusum_threshold(target)
        assert siegmund_arl(h, -0.5) / 2 == pytest.approx(target, rel=1e-6)
        assert cusum_threshold(target, two_sided=False) < h
        two_sided = markov_chain_arl(h, normal_increment_cdf(0.5)) / 2
        assert two_sided == pytest.approx(target, rel=0.03)


@pytest.mark.parametrize("target", [500, 2000])
def test_cusum_threshold_delivers_the_target_in_control_arl(target: int) -> None:
    rng = np.random.default_rng(target)
    streams = 2000
    bank = CusumBank(
        [f"f{j}" for j in range(streams)], h=cusum_threshold(target), restart_on_alarm=False
    )
    arl = measured_arl(bank, lambda n, k: rng.standard_normal((n, k)), target)
    print(f"two-sided CUSUM target ARL0 {target}: measured {arl:.0f}")
    # Standard error ~ target / sqrt(2000) ~ 2.2%.
    assert 0.9 * target <= arl <= 1.25 * target


@pytest.mark.parametrize("target", [500, 2000])
def test_variance_cusum_threshold_delivers_the_target_arl(target: int) -> None:
    rng = np.random.default_rng(target + 1)
    streams = 2000
    bank = CusumBank(
        [f"f{j}" for j in range(streams)],
        h=cusum_threshold(target, increments="chi2"),
        restart_on_alarm=False,
    )
    arl = measured_arl(bank, lambda n, k: variance_increments(rng.standard_normal((n, k))), target)
    print(f"variance CUSUM target ARL0 {target}: measured {arl:.0f}")
    assert 0.9 * target <= arl <= 1.25 * target
    # Siegmund's normal approximation would be far off for these skewed increments.
    naive = CusumBank(
        [f"f{j}" for j in range(streams)], h=cusum_threshold(target), restart_on_alarm=False
    )
    naive_arl = measured_arl(
        naive, lambda n, k: variance_increments(rng.standard_normal((n, k))), target
    )
    print(f"  same target with Siegmund's normal h on these increments: {naive_arl:.0f}")
    assert naive_arl < 0.5 * target


@pytest.mark.parametrize(("p0", "p1", "target"), [(0.05, 0.1, 1000), (0.01, 0.03, 2000)])
def test_bernoulli_threshold_delivers_the_target_arl(p0: float, p1: float, target: int) -> None:
    rng = np.random.default_rng(int(p0 * 1000))
    h = bernoulli_cusum_threshold(target, p0, p1)
    computed = bernoulli_cusum_arl(h, p0, p1, n_states=16000)
    assert target <= computed <= 1.1 * target
    bank = BernoulliCusum([f"m{j}" for j in range(2000)], p0, p1, h=h, restart_on_alarm=False)
    arl = measured_arl(bank, lambda n, k: (rng.random((n, k)) < p0).astype(np.float64), target)
    print(
        f"Bernoulli CUSUM p0={p0} p1={p1} target ARL0 {target}: lattice {computed:.0f}, "
        f"measured {arl:.0f}"
    )
    assert arl == pytest.approx(computed, rel=0.08)
    # Out of control the same chain gives the detection delay.
    assert bernoulli_cusum_arl(h, p0, p1, p=p1) < target / 5


def test_false_alarm_budget_arithmetic() -> None:
    budget = FalseAlarmBudget(false_triggers=2, period_days=30, events_per_day=1e5, detectors=40)
    assert budget.arl0 == pytest.approx(40 * 30 * 1e5 / 2)
    assert FalseAlarmBudget(events_per_day=1000, detectors=1).arl0 == pytest.approx(30_000)
    # 1e5 / 500 = 200 windows a day, 6000 a period, 40 detectors share 2 triggers.
    assert budget.window_alpha(window_size=500) == pytest.approx(2 / (40 * 6000))
    assert budget.window_alpha(windows_per_day=24) == pytest.approx(2 / (40 * 30 * 24))
    with pytest.raises(ValueError):
        budget.window_alpha()
    with pytest.raises(ValueError):
        FalseAlarmBudget(events_per_day=0, detectors=3)


def test_window_threshold_keeps_the_false_alarm_rate_for_small_windows() -> None:
    shares = np.array([0.55, 0.2, 0.12, 0.08, 0.03, 0.015, 0.005, 0.0])
    alpha, size = 0.01, 40
    threshold = window_test_threshold(shares, size, alpha, n_resamples=20000, seed=1)
    rng = np.random.default_rng(2)
    smoothed = smooth_shares(shares)
    windows = rng.multinomial(size, smoothed, size=50_000)
    g = g_statistic(windows, smoothed)
    pearson = chi2_statistic(windows, smoothed)
    rate = float((g > threshold.g).mean())
    pearson_rate = float((pearson > threshold.chi2).mean())
    standard_error = math.sqrt(alpha * (1 - alpha) / 50_000)
    print(f"window test alpha {alpha}: false-alarm rate G {rate:.4f}, chi2 {pearson_rate:.4f}")
    assert rate <= alpha + 3 * standard_error
    assert rate >= alpha / 2  # not needlessly conservative either
    assert pearson_rate <= alpha + 3 * standard_error
    # The asymptotic chi2(B - 1) critical value is badly off at this window size: far too
    # conservative for G, far too permissive for Pearson (one hit in a rare bin explodes it).
    asymptotic = chi2.ppf(1 - alpha, df=len(shares) - 1)
    assert float((g > asymptotic).mean()) < alpha / 2
    assert float((pearson > asymptotic).mean()) > 2 * alpha


def test_window_threshold_is_the_numpy_quantile_of_chunked_resamples() -> None:
    shares = smooth_shares(np.array([0.5, 0.3, 0.2]))
    threshold = window_test_threshold(
        shares, 30, 0.05, n_resamples=230_000, seed=9, eps=0.0, min_exceedances=0
    )
    rng = np.random.default_rng(9)
    counts = np.concatenate(
        [rng.multinomial(30, shares, size=size) for size in (100_000, 100_000, 30_000)]
    )
    g = np.quantile(g_statistic(counts, shares), 0.95, method="higher")
    assert threshold.g == g
    assert threshold.chi2 == np.quantile(chi2_statistic(counts, shares), 0.95, method="higher")
    # Small alpha raises the resample count so ~100 resamples lie above the quantile.
    assert window_test_threshold(shares, 30, 1e-3, seed=1).n_resamples == 100_000


def test_categorical_window_test_false_alarm_rate() -> None:
    reference = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.04, OTHER: 0.01}
    test = CategoricalWindowTest(reference, window_size=50, alpha=0.02, seed=3)
    rng = np.random.default_rng(4)
    names = np.array(list(reference))
    values = names[rng.choice(len(names), 50 * 5000, p=list(reference.values()))]
    results = test.update(values)
    assert len(results) == 5000
    rate = np.mean([r.alarm for r in results])
    assert rate <= 0.02 + 3 * math.sqrt(0.02 * 0.98 / 5000)


def test_stationary_streams_stay_within_the_budget() -> None:
    """End to end, scaled down: K features x (mean, variance, missing-rate) CUSUMs plus
    categorical window tests share one budget; stationary data must not exceed it."""
    rng = np.random.default_rng(2024)
    features, categorical, missing_rate = 8, 2, 0.02
    window = 250
    events_per_day, period_days, triggers = 20_000, 1.0, 3.0
    detectors = 3 * features + categorical
    budget = FalseAlarmBudget(
        false_triggers=triggers,
        period_days=period_days,
        events_per_day=events_per_day,
        detectors=detectors,
    )
    names = [f"f{j}" for j in range(features)]
    mean_bank = CusumBank(names, h=cusum_threshold(budget.arl0))
    spread_bank = CusumBank(names, h=cusum_threshold(budget.arl0, increments="chi2"))
    p1 = max(2 * missing_rate, missing_rate + 0.02)
    missing_bank = BernoulliCusum(
        names, missing_rate, p1, h=bernoulli_cusum_threshold(budget.arl0, missing_rate, p1)
    )
    reference = {"x": 0.6, "y": 0.3, "z": 0.08, OTHER: 0.02}
    alpha = budget.window_alpha(window_size=window)
    tests = [
        CategoricalWindowTest(reference, window, alpha, n_resamples=20000, seed=s)
        for s in range(categorical)
    ]
    labels = np.array(list(reference))

    periods, batch = 5, 2_000
    alarms = 0
    for _ in range(int(periods * period_days * events_per_day) // batch):
        z = rng.standard_normal((batch, features))
        missing = rng.random((batch, features)) < missing_rate
        z[missing] = np.nan
        alarms += int(mean_bank.update(z).n_alarms.sum())
        alarms += int(spread_bank.update(variance_increments(z)).n_alarms.sum())
        alarms += int(missing_bank.update(missing.astype(np.float64)).n_alarms.sum())
        for test in tests:
            draws = labels[rng.choice(len(labels), batch, p=list(reference.values()))]
            alarms += sum(r.alarm for r in test.update(draws))
    expected = periods * triggers  # the budget: at most this many on average
    print(f"end to end: {alarms} false alarms over {periods} periods, budget {expected:.0f}")
    # The count is ~Poisson with mean <= budget: fail only if it is implausibly high.
    assert alarms <= poisson.ppf(0.999, expected)


# ---------------------------------------------------------------- discrete (rank-score) law


def discrete_run_lengths(
    values: np.ndarray,
    probs: np.ndarray,
    h: float,
    target: float,
    streams: int,
    rng: np.random.Generator,
    k: float = 0.5,
) -> np.ndarray:
    """In-control run lengths of the two-sided CUSUM ``max(S+, S-) > h`` on i.i.d. draws of
    a discrete law, one per stream, vectorized over streams (``lindley_path``, the bank's
    closed form).  Streams that alarmed are dropped from the next batch, so the work is
    ~``streams * ARL`` instead of ``streams * max(run length)``.  Censored at 12 targets."""
    cap = 12 * target
    run_length = np.full(streams, float(cap))
    active = np.arange(streams)
    upper, lower = np.zeros(streams), np.zeros(streams)
    batch = max(64, int(target // 4))
    elapsed = 0
    while active.size and elapsed < cap:
        x = values[rng.choice(len(values), size=(batch, active.size), p=probs)]
        up, down = lindley_path(x - k, upper), lindley_path(-x - k, lower)
        crossed = (up > h) | (down > h)
        hit = crossed.any(axis=0)
        run_length[active[hit]] = elapsed + crossed.argmax(axis=0)[hit] + 1
        upper, lower, active = up[-1, ~hit], down[-1, ~hit], active[~hit]
        elapsed += batch
    return run_length


def test_discrete_threshold_of_a_fine_normal_law_is_siegmunds() -> None:
    # N(0, 1) on 400 cells of width 0.03: the discrete chain must land on the
    # normal-theory threshold (measured within 0.2%).
    edges = np.linspace(-6.0, 6.0, 401)
    centres = 0.5 * (edges[1:] + edges[:-1])
    probs = np.diff(norm.cdf(edges))
    for target in (500.0, 1e5):
        discrete = discrete_cusum_threshold(centres, probs, target)
        assert discrete == pytest.approx(cusum_threshold(target), rel=0.02)


def test_discrete_threshold_degenerate_and_monotone() -> None:
    # Increments x - k and -x - k never positive: no false alarm is possible.
    assert discrete_cusum_threshold(np.array([0.0, 0.3, -0.4]), np.full(3, 1 / 3), 500) == (
        DEGENERATE_H
    )
    assert discrete_cusum_threshold(np.array([0.0, 3.0]), np.array([1.0, 0.0]), 500) == (
        DEGENERATE_H
    )  # the outlier has probability 0 in control
    assert discrete_cusum_threshold(np.array([1.0, 2.0]), np.zeros(2), 500) == DEGENERATE_H
    with pytest.raises(ValueError):
        discrete_cusum_threshold(np.array([-1.0, 1.0]), np.array([0.5, 0.5]), 1.0)
    table = RankScores.from_profile(list(range(9)), [0.1] * 10)
    for values in (table.z, table.v):
        h = [discrete_cusum_threshold(values, table.probs, a) for a in (100, 500, 2000, 1e5)]
        assert all(a < b for a, b in itertools.pairwise(h)), h
    # A bounded law has lighter tails than the normal: lower thresholds for the same ARL0.
    assert discrete_cusum_threshold(table.z, table.probs, 1e5) < cusum_threshold(1e5)
    # Mirrored laws have the same two-sided threshold (the sides swap roles).
    skewed = RankScores.from_profile([0.0, 1.0, 3.0], [0.6, 0.2, 0.15, 0.05])
    assert discrete_cusum_threshold(skewed.z, skewed.probs, 500) == pytest.approx(
        discrete_cusum_threshold(-skewed.z[::-1], skewed.probs[::-1], 500), rel=1e-3
    )


@pytest.mark.parametrize("target", [500, 2000])
@pytest.mark.parametrize("stream", ["z", "v"])
def test_discrete_threshold_delivers_the_target_arl_on_decile_rank_scores(
    target: int, stream: str
) -> None:
    table = RankScores.from_profile(list(range(9)), [0.1] * 10)
    values = table.z if stream == "z" else table.v
    h = discrete_cusum_threshold(values, table.probs, target)
    rng = np.random.default_rng(target + (stream == "v"))
    run_length = discrete_run_lengths(values, table.probs, h, target, 2000, rng)
    arl = float(run_length.mean())
    print(f"decile rank scores {stream}: h {h:.3f}, target ARL0 {target}: measured {arl:.0f}")
    # Standard error ~ target / sqrt(2000) ~ 2.2%.  The ARL of a discrete law is a
    # staircase in h (v of deciles takes 5 values): at 500 for v it jumps from ~437 to
    # ~576 across h ~ 5.43, so no threshold can hit 500 closer than +15%.
    assert 0.85 * target <= arl <= 1.2 * target


@pytest.mark.parametrize("target", [500, 2000])
def test_discrete_threshold_on_a_skewed_count_law(target: int) -> None:
    """A count with 60% zeros: bins 0, 1, 2-3, 4+ (4 values per stream).

    The ARL staircase is coarse here: for v at 500 the exact ARL steps from ~428 to ~534
    across h ~ 7.19, and the 400-cell chain puts that step a little to the left, so the
    solved h sits just below it (measured 424 with 20 000 streams: -15%).  The bound is
    therefore 0.8, not 0.85."""
    table = RankScores.from_profile([0.0, 1.0, 3.0], [0.6, 0.2, 0.15, 0.05])
    rng = np.random.default_rng(target + 7)
    for name, values in (("z", table.z), ("v", table.v)):
        h = discrete_cusum_threshold(values, table.probs, target)
        arl = float(discrete_run_lengths(values, table.probs, h, target, 2000, rng).mean())
        print(f"skewed count {name}: h {h:.3f}, target ARL0 {target}: measured {arl:.0f}")
        assert 0.8 * target <= arl <= 1.2 * target


def test_window_test_with_keys_keeps_alpha_on_clustered_stationary_windows() -> None:
    """Each customer's category repeated 5 times per window: G without keys is ~5x too
    large and alarms most of the time; G / deff keeps the calibrated level."""
    reference = {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.04, OTHER: 0.01}
    alpha, size, copies, windows = 0.02, 500, 5, 2000
    rng = np.random.default_rng(21)
    per_window = size // copies
    names = np.array(list(reference), dtype=object)
    categories = names[rng.choice(len(names), (windows, per_window), p=list(reference.values()))]
    values = np.repeat(categories, copies, axis=1).reshape(-1)
    keys = np.repeat(np.arange(windows * per_window), copies).reshape(-1)
    keyed = CategoricalWindowTest(reference, size, alpha, n_resamples=20000, seed=3)
    plain = CategoricalWindowTest(reference, size, alpha, n_resamples=20000, seed=3)
    rate = float(np.mean([r.alarm for r in keyed.update(values, keys)]))
    naive = float(np.mean([r.alarm for r in plain.update(values)]))
    standard_error = math.sqrt(alpha * (1 - alpha) / windows)
    print(
        f"clustered windows (deff {copies}): alarm rate {rate:.4f} with keys, {naive:.3f} without"
    )
    assert rate <= alpha + 3 * standard_error
    assert rate >= alpha / 3  # the correction is not so conservative that it is blind
    assert naive > 0.3
    # Independent values with distinct keys: deff = 1, the level is unchanged.
    iid = names[rng.choice(len(names), windows * size, p=list(reference.values()))]
    distinct = float(np.mean([r.alarm for r in keyed.update(iid, np.arange(iid.size) + keys.size)]))
    assert distinct <= alpha + 3 * standard_error and distinct >= alpha / 3
