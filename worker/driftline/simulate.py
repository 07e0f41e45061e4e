"""A synthetic customer population whose churn mechanism is known, and a Kafka producer.

Real event logs rarely come with ground truth, so the demo and the tests use a population
whose churn is *caused* by something we wrote down (``Mechanism``), and can therefore be
checked: a model trained on the simulated history should find it, and the drift monitor
should see it when the mix changes.

The mechanism, per customer:

1. A profile (plan, region, age, income, tenure) sets a latent churn propensity through a
   logistic model; its intercept is solved so the expected churn share is ``churn_rate``.
   Whether a customer churns at all is a Bernoulli draw of that propensity.
2. A churner has an *onset* time, uniform over the simulation horizon.  For
   ``warning_days`` before onset it runs into trouble: support tickets and payment
   failures rise and purchases slow down.  After onset purchases decay toward zero
   (``purchase_decay_days``), logins and page views fade more slowly, some churners send
   a ``cancel_request``, and after ``gone_after_days`` the customer emits nothing at all.
3. Everyone else is steady: constant Poisson rates set by plan and a per-customer
   activity level, with the propensity only nudging their ticket and payment-failure rates.

So "the customer stopped purchasing" (the usual churn label) is learnable from the
default features: purchase counts and spend windows, ``days_since_last_purchase``,
support tickets, payment failures and logins, plus the profile fields.

Generation is vectorized per time chunk (Poisson counts per customer and event type, then
uniform times inside the chunk): there is no per-event Python except building the output
dicts.  Everything draws from one ``numpy.random.Generator`` seeded by ``seed``, so the
same seed and the same sequence of calls give the same events.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from driftline.core.events import CustomerEvent
from driftline.event_producer import progress_bar

__all__ = [
    "DAY_MS",
    "DEFAULT_START_MS",
    "EVENT_FIELDS",
    "HOUR_MS",
    "PLANS",
    "REGIONS",
    "Mechanism",
    "Population",
    "frame_to_events",
    "write_history",
]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: 2025-01-01T00:00:00Z: a fixed default so two runs with one seed agree to the millisecond.
DEFAULT_START_MS = 1_735_689_600_000
#: Columns of an event table, in ``CustomerEvent`` field order.
EVENT_FIELDS: tuple[str, ...] = CustomerEvent.__struct_fields__
_FLOAT_FIELDS = ("amount", "quantity", "age", "income", "tenure_months")
_STR_OPTIONAL_FIELDS = ("plan_type", "region")

PLANS: tuple[str, ...] = ("basic", "standard", "premium")
REGIONS: tuple[str, ...] = ("north", "south", "east", "west")

# Event types the simulator draws as Poisson processes, in a fixed order (the rate matrix
# rows).  cancel_request is a one-off, handled separately.
_PURCHASE, _LOGIN, _PAGE_VIEW, _SUPPORT, _PAYMENT_FAILED, _REFUND, _PLAN_CHANGE = range(7)
_POISSON_TYPES = (
    "purchase",
    "login",
    "page_view",
    "support_ticket",
    "payment_failed",
    "refund",
    "plan_change",
)
_CANCEL = len(_POISSON_TYPES)
_TYPE_NAMES = np.array([*_POISSON_TYPES, "cancel_request"], dtype=object)


@dataclasses.dataclass(frozen=True, slots=True)
class Mechanism:
    """The ground-truth churn mechanism; every number is a documented knob.

    Rates are events per customer per day.  Tuples aligned with ``PLANS``/``REGIONS``.
    """

    # Profile distribution.
    plan_share: tuple[float, ...] = (0.5, 0.35, 0.15)
    region_share: tuple[float, ...] = (0.3, 0.25, 0.25, 0.2)
    # Latent propensity: logit = intercept (solved) + these terms + noise.
    plan_logit: tuple[float, ...] = (0.7, 0.0, -0.7)
    region_logit: tuple[float, ...] = (0.0, 0.35, -0.2, 0.1)
    logit_per_log_tenure: float = -0.45  # x log1p(tenure_months): loyal customers stay
    logit_per_decade_of_age: float = -0.15  # x (age - 40) / 10
    logit_per_log_income: float = -0.5  # x log(income / median_income)
    logit_noise_sd: float = 0.6
    median_income: float = 55_000.0
    # Steady behaviour.
    purchase_rate: tuple[float, ...] = (0.07, 0.11, 0.16)
    min_purchase_rate: float = 0.03
    activity_sd: float = 0.35  # lognormal per-customer activity level
    order_value: tuple[float, ...] = (25.0, 45.0, 80.0)
    order_value_sd: float = 0.5
    login_rate: float = 0.45
    page_view_rate: float = 0.7
    support_rate: float = 0.012  # x (0.5 + 2 * propensity)
    payment_failure_rate: float = 0.005  # x (0.5 + 2 * propensity), more at low income
    refund_share: float = 0.04  # refunds per purchase
    plan_change_rate: float = 0.002
    # Churn dynamics.
    onset_window: tuple[float, float] = (0.1, 1.0)  # fraction of the horizon
    warning_days: float = 30.0
    warning_purchase_floor: float = 0.5  # purchase rate multiplier reached at onset
    trouble_support_rate: float = 0.08
    trouble_payment_failure_rate: float = 0.05
    trouble_downgrade_rate: float = 0.02
    purchase_decay_days: float = 10.0
    engagement_decay_days: float = 20.0
    gone_after_days: float = 60.0
    cancel_share: float = 0.5


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _solve_intercept(logit: np.ndarray, target: float) -> float:
    """Intercept making the mean propensity equal ``target`` (bisection: it is monotone)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if _sigmoid(logit + mid).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class Population:
    """``n_customers`` simulated customers with a known churn mechanism.

    The population has a clock (``clock_ms``, starting at ``start_ms``);
    ``generate_history`` and ``stream_events`` both generate from the clock onward and
    advance it, so a stream naturally continues where the history ended.
    ``customers`` is the ground truth (profile, propensity, churner, onset).
    """

    def __init__(
        self,
        n_customers: int = 1_000,
        seed: int = 0,
        start_ms: int = DEFAULT_START_MS,
        churn_rate: float = 0.3,
        horizon_days: float = 365.0,
        mechanism: Mechanism | None = None,
        profile_refresh_days: float = 30.0,
    ) -> None:
        if n_customers < 1:
            raise ValueError("n_customers must be >= 1")
        if not 0.0 < churn_rate < 1.0:
            raise ValueError("churn_rate must be in (0, 1)")
        self.n_customers = n_customers
        self.seed = seed
        self.start_ms = int(start_ms)
        self.clock_ms = int(start_ms)
        self.churn_rate = churn_rate
        self.horizon_days = horizon_days
        self.mechanism = m = mechanism or Mechanism()
        self.profile_refresh_ms = int(profile_refresh_days * DAY_MS)
        self._rng = np.random.default_rng(seed)
        self._next_seq = 0
        rng = self._rng
        n = n_customers

        width = max(6, len(str(n - 1)))
        self.customer_ids = np.array([f"c{i:0{width}d}" for i in range(n)], dtype=object)
        self._plan = rng.choice(len(PLANS), size=n, p=_normalized(m.plan_share))
        self._region = rng.choice(len(REGIONS), size=n, p=_normalized(m.region_share))
        self._age0 = np.clip(rng.normal(41.0, 12.0, n), 18.0, 85.0).round()
        self._income = np.clip(rng.lognormal(math.log(m.median_income), 0.45, n), 8_000, 500_000)
        self._income = (self._income / 100).round() * 100
        self._tenure0 = np.clip(rng.gamma(1.5, 16.0, n), 0.0, 240.0).round(1)
        self._activity = rng.lognormal(-0.5 * m.activity_sd**2, m.activity_sd, n)
        self._taste = rng.lognormal(0.0, 0.25, n)  # per-customer order-size level

        logit = (
            np.asarray(m.plan_logit)[self._plan]
            + np.asarray(m.region_logit)[self._region]
            + m.logit_per_log_tenure * np.log1p(self._tenure0)
            + m.logit_per_decade_of_age * (self._age0 - 40.0) / 10.0
            + m.logit_per_log_income * np.log(self._income / m.median_income)
            + rng.normal(0.0, m.logit_noise_sd, n)
        )
        self.intercept = _solve_intercept(logit, churn_rate)
        self.propensity = _sigmoid(logit + self.intercept)
        self.churner = rng.random(n) < self.propensity
        lo, hi = m.onset_window
        onset_days = rng.uniform(lo, hi, n) * horizon_days
        self._onset = np.where(self.churner, self.start_ms + onset_days * DAY_MS, np.inf)
        self._gone = self._onset + m.gone_after_days * DAY_MS
        cancels = self.churner & (rng.random(n) < m.cancel_share)
        cancel_after = rng.uniform(0.0, m.gone_after_days * 0.75, n) * DAY_MS
        self._cancel_at = np.where(cancels, np.floor(self._onset + cancel_after), np.inf)
        self._last_profile = np.full(n, -np.inf)

    # -- ground truth ------------------------------------------------------------------

    @property
    def customers(self) -> pd.DataFrame:
        """Ground truth per customer: initial profile, propensity, churner, onset/gone times.

        ``plan_type`` is the plan at the start, ``plan_type_now`` after the plan changes
        generated so far; ``churn_onset_ms`` / ``gone_ms`` are null for non-churners.  Use
        it to evaluate a model against the truth, not just against a behavioural label.
        """
        churner = self.churner
        return pd.DataFrame(
            {
                "customer_id": self.customer_ids,
                "plan_type": np.asarray(PLANS, dtype=object)[self._plan],
                "region": np.asarray(REGIONS, dtype=object)[self._region],
                "age": self._age0,
                "income": self._income,
                "tenure_months": self._tenure0,
                "plan_type_now": np.asarray(PLANS, dtype=object)[self._plan],
                "propensity": self.propensity,
                "churner": churner,
                "churn_onset_ms": _nullable_ms(self._onset, churner),
                "gone_ms": _nullable_ms(self._gone, churner),
                "cancels": np.isfinite(self._cancel_at),
            }
        )

    def drift(self, **changes: Any) -> Mechanism:
        """Change behaviour knobs from now on (e.g. ``order_value``, ``login_rate``).

        For drift scenarios: the next generated chunk uses the new mechanism, so feature
        distributions move while the customers (and who churns when) stay the same.
        Returns the new mechanism; unknown knob names raise ``TypeError``.
        """
        self.mechanism = dataclasses.replace(self.mechanism, **changes)
        return self.mechanism

    def churned_by(self, time_ms: int) -> np.ndarray:
        """Boolean per customer: churn onset at or before ``time_ms``."""
        return self._onset <= time_ms

    # -- generation --------------------------------------------------------------------

    def generate_history(
        self, days: float, chunk_days: float = 1.0, progress: bool = False
    ) -> pd.DataFrame:
        """``days`` of events from the clock on, as a table in event-time order.

        Columns are the event field names (``EVENT_FIELDS``) with ``event_time`` as int64
        epoch millis; absent numbers are NaN and absent categories null.
        """
        end = self.clock_ms + round(days * DAY_MS)
        step = max(1, round(chunk_days * DAY_MS))
        chunks: list[dict[str, np.ndarray]] = []
        bar = progress_bar(
            total=max(1, math.ceil((end - self.clock_ms) / step)),
            unit="chunk",
            desc="simulate",
            enabled=progress,
        )
        try:
            while self.clock_ms < end:
                t1 = min(end, self.clock_ms + step)
                chunks.append(self._generate_chunk(self.clock_ms, t1))
                self.clock_ms = t1
                bar.update(1)
        finally:
            bar.close()
        return _columns_to_frame(_concat_columns(chunks))

    def stream_frames(
        self,
        chunk_ms: int = HOUR_MS,
        until_ms: int | None = None,
        profile_first: bool = True,
    ) -> Iterator[pd.DataFrame]:
        """Endless (or until ``until_ms``) live events, one table per ``chunk_ms`` of time.

        ``profile_first`` makes each customer's first streamed event carry its profile, so
        a worker that starts on the live stream alone still learns every profile.
        """
        if profile_first:
            self._last_profile[:] = -np.inf
        while until_ms is None or self.clock_ms < until_ms:
            t1 = self.clock_ms + chunk_ms
            if until_ms is not None:
                t1 = min(t1, until_ms)
            columns = self._generate_chunk(self.clock_ms, t1)
            self.clock_ms = t1
            if len(columns["event_time"]):
                yield _columns_to_frame(columns)

    def stream_events(
        self,
        max_events: int | None = None,
        until_ms: int | None = None,
        chunk_ms: int = HOUR_MS,
        profile_first: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Live events continuing from the clock, as ``CustomerEvent``-shaped dicts.

        Event times never go backwards.  Absent optional fields are left out of the dict.
        Stops after ``max_events`` (the rest of that chunk is dropped) or at ``until_ms``;
        otherwise endless: bound it with ``max_events`` or ``produce(limit=...)``.
        """
        if max_events is not None and max_events <= 0:
            return
        emitted = 0
        for frame in self.stream_frames(chunk_ms, until_ms, profile_first):
            for event in frame_to_events(frame):
                yield event
                emitted += 1
                if max_events is not None and emitted >= max_events:
                    return

    def _generate_chunk(self, t0: int, t1: int) -> dict[str, np.ndarray]:
        """Events in ``[t0, t1)``: Poisson counts at the chunk's mid-time rates."""
        m, rng, n = self.mechanism, self._rng, self.n_customers
        dt_days = (t1 - t0) / DAY_MS
        rates = self._rates((t0 + t1) / 2)  # (types, customers)
        counts = rng.poisson(rates * dt_days)
        per_type = counts.sum(axis=1)
        customer = np.concatenate(
            [np.repeat(np.arange(n), counts[k]) for k in range(len(_POISSON_TYPES))]
        )
        etype = np.repeat(np.arange(len(_POISSON_TYPES)), per_type)
        times = rng.integers(t0, t1, size=len(customer), dtype=np.int64)
        # One-off cancel requests falling in this chunk.
        cancel = np.flatnonzero((self._cancel_at >= t0) & (self._cancel_at < t1))
        if len(cancel):
            customer = np.concatenate([customer, cancel])
            etype = np.concatenate([etype, np.full(len(cancel), _CANCEL)])
            times = np.concatenate([times, self._cancel_at[cancel].astype(np.int64)])
        # Nobody acts after leaving (rates are per chunk; this cut is per event).
        keep = times < self._gone[customer]
        customer, etype, times = customer[keep], etype[keep], times[keep]
        order = np.lexsort((etype, customer, times))
        customer, etype, times = customer[order], etype[order], times[order]
        count = len(times)

        amount = np.full(count, np.nan)
        quantity = np.full(count, np.nan)
        is_purchase = etype == _PURCHASE
        buyers = customer[is_purchase]
        mean_value = (
            np.asarray(m.order_value)[self._plan[buyers]]
            * (self._income[buyers] / m.median_income) ** 0.35
            * self._taste[buyers]
        )
        sd = m.order_value_sd
        values = rng.lognormal(np.log(mean_value) - 0.5 * sd**2, sd)
        amount[is_purchase] = np.maximum(values, 0.99).round(2)
        quantity[is_purchase] = 1 + rng.poisson(values / 60.0)
        is_refund = etype == _REFUND
        refunders = customer[is_refund]
        refund_base = np.asarray(m.order_value)[self._plan[refunders]]
        amount[is_refund] = (refund_base * rng.uniform(0.2, 1.0, len(refunders))).round(2)
        quantity[is_refund] = 1.0

        profiled = self._profile_rows(customer, etype, times)
        plan_at = self._apply_plan_changes(customer, etype, times, profiled)
        elapsed_days = (times[profiled] - self.start_ms) / DAY_MS
        who = customer[profiled]
        age = np.full(count, np.nan)
        income = np.full(count, np.nan)
        tenure = np.full(count, np.nan)
        plan = np.full(count, None, dtype=object)
        region = np.full(count, None, dtype=object)
        age[profiled] = np.floor(self._age0[who] + elapsed_days / 365.25)
        income[profiled] = self._income[who]
        tenure[profiled] = (self._tenure0[who] + elapsed_days / 30.4375).round(1)
        plan[profiled] = np.asarray(PLANS, dtype=object)[plan_at]
        region[profiled] = np.asarray(REGIONS, dtype=object)[self._region[who]]

        first_seq = self._next_seq
        self._next_seq += count
        return {
            "event_id": np.array(
                [f"{self.seed}-{i}" for i in range(first_seq, first_seq + count)], dtype=object
            ),
            "customer_id": self.customer_ids[customer],
            "event_time": times,
            "event_type": _TYPE_NAMES[etype],
            "amount": amount,
            "quantity": quantity,
            "age": age,
            "income": income,
            "tenure_months": tenure,
            "plan_type": plan,
            "region": region,
        }

    def _rates(self, t_ms: float) -> np.ndarray:
        """Daily rate of every Poisson event type for every customer at time ``t_ms``."""
        m, n = self.mechanism, self.n_customers
        days_since_onset = (t_ms - self._onset) / DAY_MS  # -inf for non-churners
        gone = days_since_onset >= m.gone_after_days
        warning = (days_since_onset >= -m.warning_days) & (days_since_onset < 0)
        after = days_since_onset >= 0
        trouble = (days_since_onset >= -m.warning_days) & ~gone
        with np.errstate(invalid="ignore", over="ignore"):
            ramp = np.clip(1.0 + days_since_onset / m.warning_days, 0.0, 1.0)
            decay_p = np.exp(-np.maximum(days_since_onset, 0.0) / m.purchase_decay_days)
            decay_e = np.exp(-np.maximum(days_since_onset, 0.0) / m.engagement_decay_days)
        purchase_mult = np.ones(n)
        purchase_mult[warning] = 1.0 - (1.0 - m.warning_purchase_floor) * ramp[warning]
        purchase_mult[after] = m.warning_purchase_floor * decay_p[after]
        engagement = np.where(after, decay_e, 1.0)
        nudge = 0.5 + 2.0 * self.propensity
        income_factor = np.clip(m.median_income / self._income, 0.5, 3.0) ** 0.5

        rates = np.empty((len(_POISSON_TYPES), n))
        base_purchase = np.maximum(
            np.asarray(m.purchase_rate)[self._plan] * self._activity, m.min_purchase_rate
        )
        rates[_PURCHASE] = base_purchase * purchase_mult
        rates[_LOGIN] = m.login_rate * self._activity * engagement
        rates[_PAGE_VIEW] = m.page_view_rate * self._activity * engagement
        rates[_SUPPORT] = m.support_rate * nudge + np.where(trouble, m.trouble_support_rate, 0)
        rates[_PAYMENT_FAILED] = m.payment_failure_rate * nudge * income_factor + np.where(
            trouble, m.trouble_payment_failure_rate, 0.0
        )
        rates[_REFUND] = m.refund_share * rates[_PURCHASE]
        # A troubled customer on the cheapest plan has nowhere to downgrade to.
        downgrade = np.where(trouble & (self._plan > 0), m.trouble_downgrade_rate, 0.0)
        rates[_PLAN_CHANGE] = np.where(trouble, 0.0, m.plan_change_rate) + downgrade
        rates[:, gone] = 0.0
        return rates

    def _profile_rows(
        self, customer: np.ndarray, etype: np.ndarray, times: np.ndarray
    ) -> np.ndarray:
        """Rows carrying profile fields: plan changes, and a customer's first event once
        ``profile_refresh_days`` have passed since its profile was last sent."""
        profiled = etype == _PLAN_CHANGE
        if len(customer):
            seen, first = np.unique(customer, return_index=True)
            stale = times[first] - self._last_profile[seen] >= self.profile_refresh_ms
            profiled[first[stale]] = True
            rows = np.flatnonzero(profiled)
            # Events are time-sorted, so the last assignment per customer wins.
            self._last_profile[customer[rows]] = times[rows]
        return profiled

    def _apply_plan_changes(
        self,
        customer: np.ndarray,
        etype: np.ndarray,
        times: np.ndarray,
        profiled: np.ndarray,
    ) -> np.ndarray:
        """Update plans for this chunk's plan changes; return the plan of each profiled row.

        Plan changes are rare, so a Python loop over them (not over events) is cheap.
        Troubled churners downgrade one step; others move to another plan at random.
        """
        rows = np.flatnonzero(profiled)
        who = customer[rows]
        plan_at = self._plan[who].copy()
        changes = np.flatnonzero(etype == _PLAN_CHANGE)
        if not len(changes):
            return plan_at
        draws = self._rng.integers(1, len(PLANS), size=len(changes))
        m = self.mechanism
        for row, draw in zip(changes.tolist(), draws.tolist(), strict=True):
            c = int(customer[row])
            troubled = times[row] - self._onset[c] >= -m.warning_days * DAY_MS
            old = int(self._plan[c])
            new = max(old - 1, 0) if troubled else (old + draw) % len(PLANS)
            self._plan[c] = new
            plan_at[(who == c) & (rows >= row)] = new
        return plan_at


def _nullable_ms(times: np.ndarray, present: np.ndarray) -> pd.Series:
    values = pd.Series(np.where(present, times, 0).astype(np.int64), dtype="Int64")
    return values.mask(~present)


def _normalized(weights: Iterable[float]) -> np.ndarray:
    array = np.asarray(tuple(weights), dtype=np.float64)
    return array / array.sum()


def _concat_columns(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not chunks:
        return {
            name: np.empty(
                0,
                dtype=np.int64
                if name == "event_time"
                else np.float64
                if name in _FLOAT_FIELDS
                else object,
            )
            for name in EVENT_FIELDS
        }
    return {name: np.concatenate([c[name] for c in chunks]) for name in EVENT_FIELDS}


def _columns_to_frame(columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    frame = pd.DataFrame({name: columns[name] for name in EVENT_FIELDS})
    frame["event_time"] = frame["event_time"].astype(np.int64)
    return frame


def frame_to_events(frame: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Rows of an event table as ``CustomerEvent``-shaped dicts (absent fields left out).

    Columns are converted to Python lists once (NaN -> None) so the per-row work is one
    dict comprehension.
    """
    names = [name for name in EVENT_FIELDS if name in frame.columns]
    columns: list[list[Any]] = []
    for name in names:
        series = frame[name]
        if name == "event_time":
            columns.append(series.to_numpy(dtype=np.int64).tolist())
        elif name in _FLOAT_FIELDS:
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            columns.append(with_none(values))
        else:
            values = series.astype(object).to_numpy()
            columns.append([None if _missing(v) else str(v) for v in values])
    for row in zip(*columns, strict=True):
        yield {name: value for name, value in zip(names, row, strict=True) if value is not None}


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def write_history(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write an event table to ``.csv`` or ``.parquet`` (chosen by the extension).

    Event times stay integer epoch millis in both, so a round trip is exact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        raise ValueError(f"unsupported history file type {path.suffix!r}: use .csv or .parquet")
    return path


def with_none(values: np.ndarray) -> list[Any]:
    """Floats as a list, NaN as None (JSON null)."""
    boxed = values.astype(object)
    boxed[np.isnan(values)] = None
    return list(boxed.tolist())
