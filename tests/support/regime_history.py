"""An event history whose churn mechanism changes at a known day, for the retrain tests.

Apart from ``driftline.simulate`` on purpose: the retrain loop must be shown to learn a
*changed mechanism*, so the change is stated here in three lines rather than inferred
from the simulator's knobs.

* Customers arrive over time; each is on plan ``basic`` or ``premium`` and, while active,
  purchases (~0.2/day) and logs in (~0.3/day); everyone files the odd support ticket and
  has the odd payment failure (0.01/day each).
* Churn is a hazard per day that depends on the plan and the **regime**: before
  ``switch_day`` basic customers churn ten times as often as premium ones; from
  ``switch_day`` on (``flip=True``) it is the other way round.
* In the 30 days before churning a customer sends a warning: support tickets in the old
  regime, payment failures in the new one.

So a model fitted on the old regime ranks the wrong plan as risky and watches the wrong
warning; one fitted on the new regime gets both right.  With ``flip=False`` nothing
changes and a newer model has nothing to gain.  Pure function of the seed, vectorized.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from driftline.simulate import DEFAULT_START_MS, EVENT_FIELDS

DAY_MS = 86_400_000
HIGH, LOW = 0.02, 0.002
WARNING_DAYS = 30.0


def regime_history(
    n_customers: int = 1500,
    days: int = 360,
    switch_day: int = 180,
    *,
    flip: bool = True,
    seed: int = 0,
    start_ms: int = DEFAULT_START_MS,
) -> pd.DataFrame:
    """Events in event-time order, with the columns of ``simulate`` (``EVENT_FIELDS``)."""
    rng = np.random.default_rng(seed)
    n = n_customers
    arrival = np.clip(rng.uniform(-90.0, days - 30.0, n), 0.0, None)
    basic = rng.random(n) < 0.5
    old_rate = np.where(basic, HIGH, LOW)
    new_rate = np.where(basic, LOW, HIGH) if flip else old_rate
    # Churn time under a piecewise-constant hazard: the time an Exp(1) draw is used up.
    need = rng.exponential(1.0, n)
    before_switch = np.clip(switch_day - arrival, 0.0, None)
    used_old = old_rate * before_switch
    churn = np.where(
        need < used_old,
        arrival + need / old_rate,
        np.maximum(arrival, switch_day) + (need - used_old) / new_rate,
    )
    end = np.minimum(churn, float(days))
    warn_start = np.maximum(churn - WARNING_DAYS, arrival)
    warn_end = np.minimum(churn, float(days))
    new_regime_warning = churn >= switch_day

    parts: list[tuple[np.ndarray, np.ndarray, str]] = []

    def poisson_events(rate: float, lo: np.ndarray, hi: np.ndarray, kind: str) -> None:
        span = np.clip(hi - lo, 0.0, None)
        counts = rng.poisson(rate * span)
        who = np.repeat(np.arange(n), counts)
        at = lo[who] + rng.random(who.size) * span[who]
        parts.append((who, at, kind))

    poisson_events(0.2, arrival, end, "purchase")
    poisson_events(0.3, arrival, end, "login")
    poisson_events(0.01, arrival, end, "support_ticket")
    poisson_events(0.01, arrival, end, "payment_failed")
    old_warn_hi = np.where(new_regime_warning, warn_start, warn_end)
    new_warn_lo = np.where(new_regime_warning, warn_start, warn_end)
    poisson_events(0.15, warn_start, old_warn_hi, "support_ticket")
    poisson_events(0.15, new_warn_lo, warn_end, "payment_failed")

    who = np.concatenate([p[0] for p in parts])
    at_days = np.concatenate([p[1] for p in parts])
    kind = np.concatenate([np.full(p[0].size, p[2], dtype=object) for p in parts])
    order = np.argsort(at_days, kind="stable")
    who, at_days, kind = who[order], at_days[order], kind[order]
    size = who.size
    purchase = kind == "purchase"
    amount = np.where(purchase, np.round(rng.lognormal(3.4, 0.4, size), 2), np.nan)
    frame = pd.DataFrame(
        {
            "event_id": [f"r{seed}-{i}" for i in range(size)],
            "customer_id": np.char.add("k", np.char.zfill(who.astype(str), 6)).astype(object),
            "event_time": (start_ms + at_days * DAY_MS).astype(np.int64),
            "event_type": kind,
            "amount": amount,
            "quantity": np.where(purchase, 1.0, np.nan),
            "age": np.nan,
            "income": np.nan,
            "tenure_months": np.nan,
            "plan_type": np.where(basic, "basic", "premium")[who].astype(object),
            "region": None,
        }
    )
    return frame[list(EVENT_FIELDS)]
