"""A simulated population whose mix does not change with time: the demo's world.

``Population`` is built for training and tests: every customer is there on the first day
of its history, a fixed share churns once, at a time spread over ``horizon_days``, and then
the population only shrinks.  A stream that continues such a history is not the history's
world any more: nobody new joins, nobody starts churning after the horizon, and every
customer's "first seen" is the same day, so a feature like ``active_streak_months`` (time since a
customer's first retained event) is a clock: its distribution moves by one month per
month of event time, and a drift monitor is right to flag it.

``SteadyPopulation`` keeps the same customers, profiles and behaviour (the parent's rates,
order values, warning and decay of churners) but makes time-invariant what should be:

* **Churn is a constant hazard**, per customer: the onset comes after an exponential wait
  whose chance of falling within ``horizon_days`` is the customer's propensity, so the
  share of customers churning within a horizon is the same in every period, and onsets
  keep coming after the history ends.
* **Customers who leave are replaced** (at the first chunk after they are gone) by a new
  customer with a new id, a profile drawn like the first ones, tenure 0 and an age drawn
  at joining, so the number of active customers (and the event rate) stays level.
* **Accounts predate the log**: every first customer has been a customer for its
  ``tenure_months`` before the history starts.  :meth:`account_history` gives one
  ``login`` (carrying the profile) every ``account_spacing_days`` from each customer's
  signup to the start: a thin past, enough for the worker's state to know when each
  customer was first seen (closer than the idle eviction, so it is never forgotten), so
  ``active_streak_months`` is the customer's real tenure and not "days since the log began".
  Windowed features are unaffected once the longest window has passed since the start.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from driftline.simulate import (
    DAY_MS,
    DEFAULT_START_MS,
    EVENT_FIELDS,
    PLANS,
    REGIONS,
    Mechanism,
    Population,
    _normalized,
    _sigmoid,
)

__all__ = ["MONTH_DAYS", "SteadyPopulation"]

#: Days per month of the simulator's tenure (``tenure_months``).
MONTH_DAYS = 30.4375
#: Longest tenure of a first customer at the start (20 years).
MAX_TENURE_MONTHS = 240.0


class SteadyPopulation(Population):
    """``Population`` with a constant churn hazard, replacement and a pre-log past.

    Same arguments as :class:`Population`; ``horizon_days`` is the period within which a
    customer churns with probability equal to its propensity (so ``churn_rate`` is the
    expected share churning per ``horizon_days``, in every such period).
    ``account_spacing_days`` is the gap between the thin pre-log account events (below
    the worker's idle eviction of the longest window, 90 days by default).
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
        account_spacing_days: float = 60.0,
    ) -> None:
        super().__init__(
            n_customers,
            seed,
            start_ms,
            churn_rate,
            horizon_days,
            mechanism,
            profile_refresh_days,
        )
        if account_spacing_days <= 0:
            raise ValueError("account_spacing_days must be > 0")
        self.account_spacing_ms = int(account_spacing_days * DAY_MS)
        self._joined = np.full(n_customers, float(start_ms))
        self._id_width = len(self.customer_ids[0]) - 1
        self._next_id = n_customers
        #: Customers replaced so far (joined after the start).
        self.joined_count = 0
        self._stationary_stock()
        self._draw_churn(np.arange(n_customers), np.full(n_customers, float(start_ms)))

    # -- churn and turnover -----------------------------------------------------------

    def _stationary_stock(self) -> None:
        """Make the first customers look like a population long in this steady state.

        Customers join with the parent's profile mix, but those who churn less stay
        longer, so the customers present at any time are weighted by their expected stay:
        the first customers are resampled with that weight (else the mix would drift
        toward it, slowly: older, richer, loyal customers accumulating).  Their time since
        joining is exponential with the mean wait (a constant hazard); their age is the
        age they joined at plus that tenure.  The parent's gamma tenure stays the latent
        loyalty term of the propensity, as for newcomers.
        """
        n, rng = self.n_customers, self._rng
        stay = self._mean_wait_days(np.arange(n)) + self.mechanism.gone_after_days
        pick = rng.choice(n, size=n, p=stay / stay.sum())
        for name in ("_plan", "_region", "_age0", "_income", "_activity", "_taste"):
            setattr(self, name, getattr(self, name)[pick].copy())
        self.propensity = self.propensity[pick].copy()
        # A time since joining capped at 20 years and at the customer's 18th birthday.
        tenure_days = rng.exponential(self._mean_wait_days(np.arange(n)))
        joined_at = self._age0  # the parent's age draw is the age at joining
        tenure_days = np.minimum(tenure_days, MAX_TENURE_MONTHS * MONTH_DAYS)
        self._tenure0 = (tenure_days / MONTH_DAYS).round(1)
        self._age0 = np.minimum(joined_at + tenure_days / 365.25, 95.0).round()

    def _mean_wait_days(self, who: np.ndarray) -> np.ndarray:
        p = np.clip(self.propensity[who], 1e-6, 1 - 1e-6)
        return self.horizon_days / -np.log1p(-p)

    def _draw_churn(self, who: np.ndarray, since_ms: np.ndarray) -> None:
        """Onset after an exponential wait: P(onset within the horizon) = propensity."""
        m, rng = self.mechanism, self._rng
        onset = since_ms + rng.exponential(self._mean_wait_days(who)) * DAY_MS
        self._onset[who] = onset
        self._gone[who] = onset + m.gone_after_days * DAY_MS
        cancels = rng.random(len(who)) < m.cancel_share
        cancel_after = rng.uniform(0.0, m.gone_after_days * 0.75, len(who)) * DAY_MS
        self._cancel_at[who] = np.where(cancels, np.floor(onset + cancel_after), np.inf)
        self.churner[who] = onset - since_ms <= self.horizon_days * DAY_MS

    def _renew(self, t_ms: int) -> None:
        """Replace every customer gone by ``t_ms`` with a new one joining at ``t_ms``."""
        who = np.flatnonzero(self._gone <= t_ms)
        if not len(who):
            return
        m, rng, k = self.mechanism, self._rng, len(who)
        elapsed_days = (t_ms - self.start_ms) / DAY_MS
        self._plan[who] = rng.choice(len(PLANS), size=k, p=_normalized(m.plan_share))
        self._region[who] = rng.choice(len(REGIONS), size=k, p=_normalized(m.region_share))
        age = np.clip(rng.normal(41.0, 12.0, k), 18.0, 85.0).round()
        self._age0[who] = age - elapsed_days / 365.25  # so age at joining is ``age``
        income = np.clip(rng.lognormal(math.log(m.median_income), 0.45, k), 8_000, 500_000)
        self._income[who] = (income / 100).round() * 100
        self._tenure0[who] = -elapsed_days / MONTH_DAYS  # tenure 0 at joining
        self._activity[who] = rng.lognormal(-0.5 * m.activity_sd**2, m.activity_sd, k)
        self._taste[who] = rng.lognormal(0.0, 0.25, k)
        # The propensity's loyalty term is a latent trait drawn like the first customers'
        # tenure, so newcomers churn like the population they join (not all at once).
        loyalty = np.clip(rng.gamma(1.5, 16.0, k), 0.0, 240.0)
        logit = (
            np.asarray(m.plan_logit)[self._plan[who]]
            + np.asarray(m.region_logit)[self._region[who]]
            + m.logit_per_log_tenure * np.log1p(loyalty)
            + m.logit_per_decade_of_age * (age - 40.0) / 10.0
            + m.logit_per_log_income * np.log(self._income[who] / m.median_income)
            + rng.normal(0.0, m.logit_noise_sd, k)
        )
        self.propensity[who] = _sigmoid(logit + self.intercept)
        ids = range(self._next_id, self._next_id + k)
        self.customer_ids[who] = [f"c{i:0{self._id_width}d}" for i in ids]
        self._next_id += k
        self.joined_count += k
        self._joined[who] = t_ms
        self._last_profile[who] = -np.inf  # a newcomer's first event carries its profile
        self._draw_churn(who, np.full(k, float(t_ms)))

    def _generate_chunk(self, t0: int, t1: int) -> dict[str, np.ndarray]:
        self._renew(t0)
        return super()._generate_chunk(t0, t1)

    def active_at(self, t_ms: int) -> np.ndarray:
        """Boolean per slot: the occupant has joined and is not gone at ``t_ms``."""
        return (self._joined <= t_ms) & (self._gone > t_ms)

    # -- the past before the log ------------------------------------------------------

    def account_history(self) -> pd.DataFrame:
        """Thin pre-log events: a ``login`` with the profile every ``account_spacing``
        from each first customer's signup (``tenure_months`` before the start) to the
        start.  Prepend it to :meth:`generate_history` so the state's "first seen" is the
        signup.  Call it before generating (it reads the start-of-log profiles)."""
        spacing = self.account_spacing_ms
        tenure_ms = np.round(np.maximum(self._tenure0, 0.0) * MONTH_DAYS * DAY_MS)
        # Spaced back from the start (so the last gap before the log is one spacing at
        # most), down to the signup itself.
        counts = np.ceil(tenure_ms / spacing).astype(np.int64)
        who = np.repeat(np.arange(self.n_customers), counts)
        back = np.concatenate([np.arange(1, c + 1) for c in counts.tolist()] or [np.empty(0)])
        offset = np.minimum(back * spacing, tenure_ms[who]).astype(np.int64)
        times = self.start_ms - offset
        order = np.lexsort((who, times))
        who, times = who[order], times[order]
        count = len(times)
        elapsed_days = (times - self.start_ms) / DAY_MS  # negative
        columns: dict[str, Any] = {
            "event_id": np.array([f"{self.seed}-a{i}" for i in range(count)], dtype=object),
            "customer_id": self.customer_ids[who],
            "event_time": times.astype(np.int64),
            "event_type": np.full(count, "login", dtype=object),
            "amount": np.full(count, np.nan),
            "quantity": np.full(count, np.nan),
            "age": np.floor(self._age0[who] + elapsed_days / 365.25),
            "income": self._income[who],
            "tenure_months": np.maximum(self._tenure0[who] + elapsed_days / MONTH_DAYS, 0).round(1),
            "plan_type": np.asarray(PLANS, dtype=object)[self._plan[who]],
            "region": np.asarray(REGIONS, dtype=object)[self._region[who]],
        }
        frame = pd.DataFrame({name: columns[name] for name in EVENT_FIELDS})
        frame["event_time"] = frame["event_time"].astype(np.int64)
        return frame
