"""The economics of an uplift campaign: expected incremental response, cost and profit per user, and
the offer (discount level) of largest expected profit.

For a user with estimated effect ``tau`` (the uplift model's score: the past campaign's treatment
raises P(convert) by ``tau``), P(convert | treated) ``p1`` (the run's arm model) and order value ``v``,
an offer with discount ``d`` sent at channel cost ``c`` is worth, in expectation,

    profit(d) = v * (margin_rate * tau(d) - d * p1(d)) - c

(incremental conversions times the margin, minus the discount every treated buyer is given, minus
the channel). ``tau(d)`` and ``p1(d)``:

- learnt: when the past campaign randomised its offer levels (``training.uplift data.levels``), the
  run's effect model of level ``d`` and its arm model at ``d``;
- otherwise the stated price-sensitivity rule: a discount ``d`` multiplies P(convert | treated) by
  ``1 + offer.elasticity * price_sensitivity * d`` (price sensitivity from the profiles, 0.5 where
  unknown), control behaviour unchanged: ``p1(d) = min(1, p1 (1 + e s d))``, ``tau(d) = p1(d) - (p1 - tau)``.

With ``offer.levels`` each user gets the level of largest ``profit(d)``; else the tier discount
(``offer_discounts``). Users are ranked by expected profit when the offer
has a cost (some discount > 0), else by ``tau(d)``. Order value: ``evaluation.average_order_value``
when set, else the profile's ``monetary / frequency``, else the median of that over the users.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from serving.campaigns.eligibility import numeric
from serving.campaigns.spec import CampaignConfig, CampaignConfigError

UNKNOWN_PRICE_SENSITIVITY = 0.5
CURVE_POINTS = 60


@dataclass
class Economics:
    """Per user (rows of the frame it was computed on)."""

    uplift: np.ndarray          # effect on P(convert) at the chosen offer
    p_treated: np.ndarray       # P(convert | treated at the chosen offer)
    offer: np.ndarray           # chosen discount
    order_value: np.ndarray
    discount_cost: np.ndarray   # expected: order value x discount x p_treated
    profit: np.ndarray          # expected incremental profit, channel cost included
    value: np.ndarray           # what users are ranked by: profit or uplift
    mode: str                   # incremental_profit | incremental_response
    offer_rule: str

    def take(self, rows: np.ndarray) -> "Economics":
        """The same for a subset of the users (a mask or indices)."""
        return Economics(self.uplift[rows], self.p_treated[rows], self.offer[rows], self.order_value[rows],
                         self.discount_cost[rows], self.profit[rows], self.value[rows], self.mode, self.offer_rule)


def offer_has_cost(campaign: CampaignConfig) -> bool:
    o = campaign.offer
    return o.kind == "discount" and (any(d > 0 for d in o.levels) or o.default_discount > 0
                                     or any(t.discount > 0 for t in o.tiers))


def order_values(frame: pd.DataFrame, campaign: CampaignConfig) -> tuple[np.ndarray, str]:
    aov = campaign.evaluation.average_order_value
    if aov is not None:
        return np.full(len(frame), float(aov)), "evaluation.average_order_value"
    if {"monetary", "frequency"} <= set(frame.columns):
        mon = pd.to_numeric(frame["monetary"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        freq = pd.to_numeric(frame["frequency"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        v = np.where((mon > 0) & (freq > 0), mon / np.where(freq > 0, freq, 1.0), np.nan)
        if np.isfinite(v).any():
            return np.where(np.isfinite(v), v, np.nanmedian(v)), "profiles monetary / frequency (median where unknown)"
    raise CampaignConfigError("evaluation.average_order_value", "is needed to value a conversion: the profiles "
                              "have no monetary / frequency")


def economics(frame: pd.DataFrame, score: np.ndarray, channel_cost: np.ndarray, campaign: CampaignConfig,
              model) -> Economics:
    """The economics of every user of ``frame`` (``score``: the model's effect per row, from
    ``CampaignModel.score_matrix``; ``model``: a ``serving.campaigns.scoring.CampaignModel`` of a
    table uplift run)."""

    up = model.uplift
    if up is None:
        raise CampaignConfigError("model.kind", "uplift campaigns need a run folder of python -m training.uplift "
                                  f"in job.model_dir ({campaign.job.model_dir})")
    mode = "incremental_profit" if offer_has_cost(campaign) else "incremental_response"
    n = len(frame)
    if n == 0:
        z = np.zeros(0)
        return Economics(z, z, z, z, z, z, z, mode, "no users")
    tau0 = np.asarray(score, dtype=np.float64)
    x = model.feature_matrix(frame)
    p1_0 = up.p_treated_encoded(x)
    p0 = np.clip(p1_0 - tau0, 0.0, 1.0)
    ps = (pd.to_numeric(frame["price_sensitivity"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
          if "price_sensitivity" in frame.columns else np.full(n, np.nan))
    ps = np.clip(np.where(np.isnan(ps), UNKNOWN_PRICE_SENSITIVITY, ps), 0.0, 1.0)
    v, v_source = order_values(frame, campaign)
    m, e = campaign.evaluation.margin_rate, campaign.offer.elasticity
    learnt = up.predict_levels_encoded(x) if up.levels else {}

    def at(d: float) -> tuple[np.ndarray, np.ndarray]:
        if d in learnt:
            return learnt[d], up.p_treated_encoded(x, d)
        p1 = np.minimum(1.0, p1_0 * (1.0 + e * ps * d))
        return p1 - p0, p1

    o = campaign.offer
    if o.levels:
        levels = [float(d) for d in o.levels]
        taus, p1s = (np.stack(a, axis=1) for a in zip(*(at(d) for d in levels)))
        best = (v[:, None] * (m * taus - np.asarray(levels)[None, :] * p1s)).argmax(1)
        rows = np.arange(n)
        tau, p1, offer = taus[rows, best], p1s[rows, best], np.asarray(levels)[best]
        by_rule = [d for d in levels if d not in learnt]
        rule = "level of largest expected profit per user; " + "; ".join(
            ([f"learnt per level for {[d for d in levels if d in learnt]}"] if learnt else [])
            + ([f"price-sensitivity rule (elasticity {e}) for {by_rule}"] if by_rule else []))
    else:
        offer = np.asarray(offer_discounts(frame["price_sensitivity"], campaign), dtype=np.float64)
        tau, p1 = np.zeros(n), np.zeros(n)
        for d in np.unique(offer):
            sel = offer == d
            t_d, p_d = at(float(d))
            tau[sel], p1[sel] = t_d[sel], p_d[sel]
        rule = f"offer tiers by price sensitivity; a discount's effect by the price-sensitivity rule (elasticity {e})"
    discount_cost = v * offer * p1
    profit = v * m * tau - discount_cost - np.asarray(channel_cost, dtype=np.float64)
    value = profit if mode == "incremental_profit" else tau
    return Economics(tau, p1, offer, v, discount_cost, profit, value, mode, f"{rule}; order value: {v_source}")


def profit_curve(econ: Economics, channel_cost: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """Cumulative expected cost, incremental conversions and profit when treating the users best
    ``value`` first (everyone, before the budget): the curve of expected profit against budget."""
    order = np.argsort(-econ.value, kind="stable")
    cost = np.cumsum((np.asarray(channel_cost, dtype=np.float64) + econ.discount_cost)[order])
    conv = np.cumsum(econ.uplift[order])
    prof = np.cumsum(econ.profit[order])
    if len(order) == 0:
        return {"users": [], "cost": [], "incremental_conversions": [], "profit": []}
    idx = np.unique(np.linspace(0, len(order) - 1, min(points, len(order))).round().astype(np.int64))
    return {"users": [int(i + 1) for i in idx], "cost": [float(cost[i]) for i in idx],
            "incremental_conversions": [float(conv[i]) for i in idx], "profit": [float(prof[i]) for i in idx]}


def offer_discounts(price_sensitivity: pd.Series, campaign: CampaignConfig) -> np.ndarray:
    """Discount depth per user from the price-sensitivity tiers (default where unknown)."""
    o = campaign.offer
    ps = numeric(price_sensitivity)
    out = np.full(len(ps), o.default_discount, dtype=np.float64)
    if o.kind == "none" or not o.tiers:
        return out if o.kind != "none" else np.zeros(len(ps))
    bounds = np.array([t.max_price_sensitivity for t in o.tiers])
    depth = np.array([t.discount for t in o.tiers])
    known = ~np.isnan(ps)
    idx = np.clip(np.searchsorted(bounds, np.clip(ps[known], 0.0, 1.0), side="left"), 0, len(bounds) - 1)
    out[known] = depth[idx]
    return out
