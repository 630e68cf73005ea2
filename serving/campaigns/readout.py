"""Did the campaign pay? Effects of treatment vs the random control group, and ROI on margin.

Per metric (treatment minus control):

- proportions (response, conversion, retention): the difference with Newcombe's hybrid score
  interval (from two Wilson intervals, ``serving.stats``), which stays valid at 0 % and 100 % where
  the Wald interval collapses to a point, and the pooled two-proportion z-test;
- means (revenue per user, margin per user): Welch's interval and test.

Money, with ``m`` = ``evaluation.margin_rate`` (gross margin as a share of list-price revenue) and
``d`` = a treated user's discount: outcomes carry what a user *paid*; a treated user's list-price
spend is ``paid / (1 - d)`` and the discount given ``list - paid``. Margin per user after discounts
is ``list * m - discount`` for treated users and ``paid * m`` for control users.

- incremental margin = n_treated x (mean treated margin - mean control margin): the discount is
  counted here, once;
- net incremental profit = incremental margin - channel cost;
- campaign cost = channel cost + discounts given; ROI = net incremental profit / campaign cost.

With no causal effect the treated users buy what they would have bought anyway, at a discount: ROI
is -1 (the whole cost lost). A backtest (nothing was sent) counts no discount and no channel cost:
every interval should cover zero, and ``aa_check`` says whether it does.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from serving.campaigns.outcomes import OUTCOME_COLUMNS
from serving.campaigns.spec import CampaignConfig
from serving.stats import MeanStats, newcombe_interval, two_proportion_test, welch_test

ALPHA = 0.05


@dataclass
class Effect:
    metric: str
    treatment: float
    control: float
    uplift: float
    ci_low: float
    ci_high: float
    p_value: float
    interval: str


def proportion_effect(metric: str, t: np.ndarray, c: np.ndarray, alpha: float = ALPHA) -> Effect:
    """Difference of two proportions: Newcombe interval, pooled two-sided z-test."""
    x1, n1, x2, n2 = float(np.sum(t)), len(t), float(np.sum(c)), len(c)
    low, high = newcombe_interval(x1, n1, x2, n2, alpha)
    _, p = two_proportion_test(x1, n1, x2, n2)
    pt, pc = (x1 / n1 if n1 else np.nan), (x2 / n2 if n2 else np.nan)
    return Effect(metric, float(pt), float(pc), float(pt - pc), float(low), float(high), float(p), "newcombe")


def mean_effect(metric: str, t: np.ndarray, c: np.ndarray, alpha: float = ALPHA) -> Effect:
    """Difference of means: Welch interval and two-sided p."""
    a, b = MeanStats.of(t), MeanStats.of(c)
    w = welch_test(a, b, alpha)
    return Effect(metric, a.mean, b.mean, float(w.diff), float(w.ci[0]), float(w.ci[1]), float(w.p_value), "welch")


def user_money(frame: pd.DataFrame, margin_rate: float, discounted: bool) -> pd.DataFrame:
    """Per user: ``paid``, ``list_revenue``, ``discount`` and ``margin`` (after the discount).
    ``discounted``: treated users paid ``(1 - offer)`` of list price (False in a backtest)."""
    paid = frame["revenue"].to_numpy(dtype=float)
    d = np.where((frame["group"] == "treatment").to_numpy() & discounted, frame["offer"].to_numpy(dtype=float), 0.0)
    list_rev = paid / (1.0 - d)
    discount = list_rev - paid
    return pd.DataFrame({"paid": paid, "list_revenue": list_rev, "discount": discount,
                         "margin": list_rev * margin_rate - discount}, index=frame.index)


def economics(frame: pd.DataFrame, margin_rate: float, discounted: bool = True, alpha: float = ALPHA) -> dict:
    """Incremental revenue and margin, costs and ROI (see the module docstring) with intervals."""
    money = user_money(frame, margin_rate, discounted)
    is_t = (frame["group"] == "treatment").to_numpy()
    n_t = int(is_t.sum())
    margin_e = mean_effect("margin_per_user", money["margin"].to_numpy()[is_t], money["margin"].to_numpy()[~is_t], alpha)
    channel = float(frame.loc[is_t, "cost"].sum()) if discounted else 0.0
    discounts = float(money.loc[is_t, "discount"].sum())
    inc_margin = margin_e.uplift * n_t
    net = inc_margin - channel
    cost = channel + discounts
    paid_t, paid_c = money["paid"].to_numpy()[is_t], money["paid"].to_numpy()[~is_t]
    roi = net / cost if cost > 0 else None
    roi_ci = ([(margin_e.ci_low * n_t - channel) / cost, (margin_e.ci_high * n_t - channel) / cost]
              if cost > 0 and np.isfinite(margin_e.ci_low) else None)
    return {
        "margin_rate": margin_rate,
        "incremental_revenue": float((paid_t.mean() - paid_c.mean()) * n_t),
        "incremental_list_revenue": float((money["list_revenue"].to_numpy()[is_t].mean()
                                           - money["list_revenue"].to_numpy()[~is_t].mean()) * n_t),
        "incremental_margin": float(inc_margin),
        "incremental_margin_ci": [float(margin_e.ci_low * n_t), float(margin_e.ci_high * n_t)],
        "net_incremental_profit": float(net),
        "costs": {"channel": channel, "discounts": discounts, "total": cost},
        "roi": roi,
        "roi_ci": roi_ci,          # from the margin interval; costs taken as known
        "_margin_effect": margin_e,
    }


def evaluate(audience: pd.DataFrame, outcomes: pd.DataFrame, campaign: CampaignConfig, backtest: bool = False) -> dict:
    """The readout of one campaign: effects, economics, by segment and channel, A/A check in a backtest."""
    df = audience.merge(outcomes, on="user_key", how="left")
    unmatched = int(df["converted"].isna().sum())
    for col in OUTCOME_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype(float)
    t, c = df[df["group"] == "treatment"], df[df["group"] == "control"]
    if len(t) < 2 or len(c) < 2:
        raise ValueError(f"need at least 2 treatment and 2 control users, got {len(t)} and {len(c)} "
                         "(campaign.control.fraction too small, or an empty audience?)")
    money = economics(df, campaign.evaluation.margin_rate, discounted=not backtest)
    effects = [proportion_effect("response", t["responded"].to_numpy(), c["responded"].to_numpy()),
               proportion_effect("conversion", t["converted"].to_numpy(), c["converted"].to_numpy()),
               mean_effect("revenue_per_user", t["revenue"].to_numpy(), c["revenue"].to_numpy()),
               money.pop("_margin_effect"),
               proportion_effect(f"retention_{campaign.evaluation.retention_days}d", t["retained"].to_numpy(),
                                 c["retained"].to_numpy())]
    by = {e.metric: e for e in effects}
    segs = []
    for name, g in df.groupby("segment", dropna=False):
        gt, gc = g[g["group"] == "treatment"], g[g["group"] == "control"]
        if len(gt) >= 2 and len(gc) >= 2:
            e = proportion_effect("conversion", gt["converted"].to_numpy(), gc["converted"].to_numpy())
            segs.append({"segment": str(name), "treatment": len(gt), "control": len(gc),
                         **{k: v for k, v in asdict(e).items() if k not in ("metric", "interval")}})
    chans = [{"channel": str(ch), "treatment": int(len(g)), "conversion": float(g["converted"].mean()),
              "cost": float(g["cost"].sum())} for ch, g in t.groupby("channel", observed=True)]
    res = {
        "n_treatment": int(len(t)), "n_control": int(len(c)), "unmatched_audience_users": unmatched,
        "alpha": ALPHA, "effects": [asdict(e) for e in effects],
        "incremental_conversions": by["conversion"].uplift * len(t),
        **money, "by_segment": segs, "by_channel": chans, "backtest": backtest, "_frame": df,
    }
    if backtest:
        cover = {e.metric: bool(e.ci_low <= 0.0 <= e.ci_high) for e in effects}
        res["aa_check"] = {
            "nothing_sent": True, "ci_covers_zero": cover, "passed": all(cover.values()),
            "statement": ("Backtest: nothing was sent, so treatment and control differ only by chance. "
                          + ("Every 95 % interval covers zero: the A/A check passes."
                             if all(cover.values()) else
                             "Interval(s) not covering zero: " + ", ".join(m for m, ok in cover.items() if not ok)
                             + " (expected for about 1 metric in 20 by chance; more points to a broken split)."))}
    return res


def aa_false_positive_rate(frame: pd.DataFrame, fraction: float, draws: int = 200, seed: int = 0,
                           alpha: float = ALPHA) -> dict:
    """How often the readout's intervals exclude zero when there is no effect by construction: the
    audience's real outcomes (``frame``: ``segment``, ``converted``, ``revenue``) are split again and
    again into a random control group (``fraction`` of every segment, as the audience job draws it)
    and the rest. A calibrated readout excludes zero in about ``alpha`` of the draws."""
    from serving.campaigns.audience import stratified_control

    strata = pd.factorize(frame["segment"].astype("string").fillna("<null>"))[0]
    conv = frame["converted"].to_numpy(dtype=float)
    rev = frame["revenue"].to_numpy(dtype=float)
    miss = {"conversion": 0, "revenue_per_user": 0}
    for i in range(draws):
        ctrl = stratified_control(strata, fraction, seed + i)
        e = proportion_effect("conversion", conv[~ctrl], conv[ctrl], alpha)
        m = mean_effect("revenue_per_user", rev[~ctrl], rev[ctrl], alpha)
        miss["conversion"] += not e.ci_low <= 0.0 <= e.ci_high
        miss["revenue_per_user"] += not m.ci_low <= 0.0 <= m.ci_high
    return {"draws": draws, "alpha": alpha, "false_positive_rate": {k: v / draws for k, v in miss.items()}}
