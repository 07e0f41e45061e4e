"""Concept drift for the demo's world: the churn warning moves to customers who stay.

``driftline demo --inject concept`` needs a change a model trained on the past gets
wrong while the inputs look as before (so the drift monitor stays OK: that is what
concept drift is, and why live quality is watched beside input drift).  In the steady
world (:mod:`driftline.simulate_steady`) a churner runs into trouble before it leaves:
for ``warning_days`` before its onset it files support tickets, has payment failures
and buys less; the model learns that trouble means churn.

:class:`ConceptPopulation` keeps every rate of its parent until :meth:`swap_warning`;
from then on the warning (the same ticket and failure rates, the same slowdown of
purchases, for ``warning_days``) comes from *decoys*, customers who then carry on as
before, while real churners leave without one (their purchases still decay after the
onset, so silence stays learnable from recent purchases).  Decoy onsets come as often as
real ones, to the customers least likely to churn.  A decoy shows the warning only before
its onset: at full engagement, that puts as many tickets and failures on the events the
worker scores as a churner's longer, fading trouble did (the unit test holds every served
feature within PSI 0.1 of the model's reference; the score moves more, ~0.11, since the
tickets now come with steady purchases).  What
the counts mean for churn is reversed.  A model retrained on the new regime learns it;
the old one ranks the decoys as the riskiest customers.

A world for this scenario also churns faster than the demo's default one (``churn_rate``
per ``horizon_days``, :data:`CONCEPT_CHURN`): with the default (30 % per year), who
leaves within a 30-day label horizon is mostly a matter of how often a customer buys,
which no churn mechanism changes, and a live AUC would barely move.

Decoys draw from a generator of their own, so the history (before the swap) is the
parent's, event for event.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from driftline.simulate import (
    _PAYMENT_FAILED,
    _PURCHASE,
    _SUPPORT,
    DAY_MS,
    Mechanism,
    _sigmoid,
)
from driftline.simulate_steady import SteadyPopulation

__all__ = ["CONCEPT_CHURN", "CONCEPT_MECHANISM", "ConceptPopulation"]

#: (churn_rate, horizon_days) of the world the concept scenario runs in: 60 % of the
#: customers churn within 90 days (a constant hazard; leavers are replaced).
CONCEPT_CHURN = (0.6, 90.0)
#: Its warning, louder than the default world's (tickets 0.08, failures 0.05 a day): the
#: more a model leans on it, the more the swap costs a model trained before it (offline,
#: 2026-12-05, 1,000 customers, 30-day label: the old model's ROC AUC fell from 0.91 to
#: 0.83-0.85 with the default rates, to 0.79-0.83 with these, where a model trained on
#: the new concept reached 0.85-0.87).
CONCEPT_MECHANISM = Mechanism(trouble_support_rate=0.12, trouble_payment_failure_rate=0.08)


class ConceptPopulation(SteadyPopulation):
    """A steady population whose churn warning can be handed to decoys (see module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.swapped_at_ms: int | None = None
        self._decoy_rng = np.random.default_rng(self.seed + 7_919)
        self._decoy_onset = np.full(self.n_customers, np.inf)

    def swap_warning(self) -> None:
        """From the clock on, decoys show the warning and churners leave silently."""
        self.swapped_at_ms = self.clock_ms
        # Waits are memoryless: drawn from now, the count in trouble starts level.
        n = self.n_customers
        self._draw_decoys(np.arange(n), np.full(n, float(self.clock_ms)))

    def _decoy_hazard(self) -> np.ndarray:
        """Decoy onsets per day per customer: the churn hazard's logit mirrored about
        its mean, so the customers least likely to churn show the warning, scaled so
        that decoy onsets come exactly as often as real ones did (as many customers in
        trouble at a time, so ticket and failure counts keep their distribution)."""
        p = np.clip(self.propensity, 1e-6, 1 - 1e-6)
        hazard = -np.log1p(-p) / self.horizon_days
        terms = -(np.log(p / (1 - p)) - self.intercept)
        mirrored = -np.log1p(-np.clip(_sigmoid(terms + self.intercept), 1e-6, 1 - 1e-6))
        return np.asarray(mirrored * hazard.sum() / mirrored.sum())

    def _draw_decoys(self, who: np.ndarray, since_ms: np.ndarray) -> None:
        wait = self._decoy_rng.exponential(1.0 / self._decoy_hazard()[who])
        self._decoy_onset[who] = since_ms + wait * DAY_MS

    def _generate_chunk(self, t0: int, t1: int) -> dict[str, np.ndarray]:
        if self.swapped_at_ms is not None:
            # A decoy's trouble is over (or its slot has a newcomer): draw its next onset.
            over = self._decoy_onset <= t0
            renewed = self._gone <= t0  # SteadyPopulation replaces these in this chunk
            who = np.flatnonzero(over | renewed)
            if len(who):
                self._draw_decoys(who, np.full(len(who), float(t0)))
        return super()._generate_chunk(t0, t1)

    def _rates(self, t_ms: float) -> np.ndarray:
        rates = super()._rates(t_ms)
        if self.swapped_at_ms is None:
            return rates
        m = self.mechanism
        alive = rates[_PURCHASE] + rates[_SUPPORT] > 0  # gone customers emit nothing
        real = (t_ms - self._onset) / DAY_MS  # -inf for non-churners
        decoy = (t_ms - self._decoy_onset) / DAY_MS
        real_trouble = (real >= -m.warning_days) & (real < m.gone_after_days)
        real_warning = (real >= -m.warning_days) & (real < 0)
        # A churner's trouble lasts until it is gone, but few of its events show it after
        # the onset (engagement decays); a decoy's, at full engagement, only for the
        # warning: the same ticket and failure counts per event (measured 2026-12-05:
        # to the onset + 20 days, 28 % more tickets per event than before the swap).
        decoy_warning = (decoy >= -m.warning_days) & (decoy < 0) & alive
        decoy_trouble = decoy_warning
        # Churners: no tickets or failures beyond the base, full purchases until onset.
        rates[_SUPPORT] -= np.where(real_trouble, m.trouble_support_rate, 0.0)
        rates[_PAYMENT_FAILED] -= np.where(real_trouble, m.trouble_payment_failure_rate, 0.0)
        with np.errstate(invalid="ignore"):
            ramp = np.clip(
                1.0 + np.where(real_warning, real, -m.warning_days) / m.warning_days, 0, 1
            )
            floor = 1.0 - (1.0 - m.warning_purchase_floor) * ramp
        rates[_PURCHASE] = np.where(real_warning, rates[_PURCHASE] / floor, rates[_PURCHASE])
        # Decoys: the trouble the churners used to show, then they carry on.
        rates[_SUPPORT] += np.where(decoy_trouble, m.trouble_support_rate, 0.0)
        rates[_PAYMENT_FAILED] += np.where(decoy_trouble, m.trouble_payment_failure_rate, 0.0)
        with np.errstate(invalid="ignore"):
            d_ramp = np.clip(1.0 + np.where(decoy_warning, decoy, 0.0) / m.warning_days, 0, 1)
        d_floor = 1.0 - (1.0 - m.warning_purchase_floor) * d_ramp
        rates[_PURCHASE] = np.where(decoy_warning, rates[_PURCHASE] * d_floor, rates[_PURCHASE])
        np.maximum(rates, 0.0, out=rates)
        return rates
