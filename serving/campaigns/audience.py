"""Audience building: who gets a campaign, in which group, on which channel, when, with what.

``build_audience(profiles, campaign, scorer)`` runs, in order, counting the users left after each step:

1. eligibility and exclusions (``serving.campaigns.eligibility``);
2. scoring with the campaign model, batch-wise on CUDA when present (``job.device``), else the CPU;
   optional ``budget.min_score``; uplift campaigns (a past campaign's effect model) rank by expected
   incremental profit (or effect), never treat users with a negative estimated effect ("sleeping
   dogs") and choose the offer level by expected profit (``serving.campaigns.offers``);
3. a random control group: ``control.fraction`` of every stratum (``control.stratify_by``), seeded,
   drawn over all scored users so that control and treatment share the same score cut-off;
4. budget: users by score, best first, while the treated users stay within ``budget.max_users`` and
   ``budget.max_cost`` (channel cost); control users above the cut-off are kept (they cost nothing);
5. channel (preferred when consented, else the first consented in ``channels.order``), send time
   and offer (discount by price sensitivity) for every selected user. Send times are local: the
   user's active hour (computed in their own zone by ``features.profiles.activity``) on the send
   date, moved out of the quiet hours, both in the user's zone (profiles column ``timezone``, else
   ``send_time.default_timezone``); ``send_at`` is that moment in UTC and ``timezone`` the zone used.

An empty audience is not an error (a campaign may legitimately find nobody today) but it is logged
as a warning naming the step that removed the last users, and listed in ``AudienceResult.warnings``
(the job's manifest and command line repeat it). Everything is vectorised over numpy arrays, so a
million users take a few seconds on one core; ``serving.campaigns.ray_audience`` runs steps 1-2 in
Ray Data. Output rows carry only pseudonymised ``user_key``s.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from serving.campaigns import offers
from serving.campaigns.eligibility import check_profiles, eligibility_steps, numeric
from serving.campaigns.offers import offer_discounts
from serving.campaigns.spec import CampaignConfig

log = logging.getLogger(__name__)

AUDIENCE_COLUMNS = ("user_key", "score", "group", "channel", "send_at", "timezone", "offer", "segment", "cost")
Scorer = Callable[[pd.DataFrame], np.ndarray]


@dataclass
class AudienceResult:
    audience: pd.DataFrame                 # AUDIENCE_COLUMNS, best score first
    steps: list[dict]                      # [{"step": name, "users": count left}]
    timings_s: dict[str, float] = field(default_factory=dict)
    send_date: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {s["step"]: s["users"] for s in self.steps}


def empty_audience_warning(campaign: CampaignConfig, steps: list[dict]) -> str | None:
    """The warning for an audience without a single treated user (None otherwise): names the step
    that removed the last users."""
    counts = {s["step"]: s["users"] for s in steps}
    if counts.get("treatment", 0) > 0:
        return None
    culprit = next((s["step"] for s in steps if s["users"] == 0), "treatment")
    msg = (f"EMPTY AUDIENCE: campaign {campaign.id!r} selects no treated user; the last users were removed "
           f"at step {culprit!r} (" + " -> ".join(f"{s['step']}={s['users']}" for s in steps) + ")")
    log.warning(msg)
    return msg


def send_hours(active_hour: pd.Series, campaign: CampaignConfig) -> np.ndarray:
    """Each user's local active hour (default where unknown) moved to the end of the quiet hours if
    inside them (quiet hours are local hours too)."""
    st = campaign.send_time
    h = numeric(active_hour)
    h = np.where(np.isnan(h), st.default_hour, h).astype(np.int64)
    qs, qe = st.quiet_start, st.quiet_end
    if qs == qe:
        quiet = np.zeros(len(h), dtype=bool)
    elif qs > qe:   # wraps midnight, e.g. 21 -> 8
        quiet = (h >= qs) | (h < qe)
    else:
        quiet = (h >= qs) & (h < qe)
    return np.where(quiet, qe, h)


def user_zones(frame: pd.DataFrame, campaign: CampaignConfig) -> np.ndarray:
    """IANA zone per user: the profiles' ``timezone`` column where set, else ``send_time.default_timezone``.
    An unknown zone fails naming the column and the value."""
    default = campaign.send_time.default_timezone
    if "timezone" not in frame.columns:
        return np.full(len(frame), default, dtype=object)
    zones = frame["timezone"].astype("string").fillna(default).to_numpy(dtype=object)
    for z in pd.unique(zones):
        try:
            ZoneInfo(z)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"profiles column 'timezone': unknown time zone {z!r}") from exc
    return zones


def send_times_utc(send_date: pd.Timestamp, hours: np.ndarray, zones: np.ndarray) -> pd.DatetimeIndex:
    """UTC instants of local ``hours`` on the local calendar day ``send_date`` in each user's zone.

    One conversion per distinct zone. A local hour that does not exist (spring-forward gap) moves
    forward to the first valid time; an ambiguous one (fall-back) takes the first occurrence.
    """
    day = pd.Timestamp(send_date.date())                      # naive local calendar day
    local = day + pd.to_timedelta(np.asarray(hours, dtype=np.int64), unit="h")
    out = np.empty(len(local), dtype="datetime64[ns]")
    codes, uniq = pd.factorize(pd.Series(zones, dtype=object))
    for j, zone in enumerate(uniq):
        idx = np.flatnonzero(codes == j)
        ts = pd.DatetimeIndex(local[idx]).tz_localize(zone, ambiguous=np.ones(len(idx), dtype=bool),
                                                      nonexistent="shift_forward")
        out[idx] = ts.tz_convert("UTC").tz_localize(None).to_numpy()
    return pd.DatetimeIndex(out).tz_localize("UTC")


def stratified_control(strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool mask: exactly round(fraction * n_s) random members of every stratum s (seeded)."""
    n = len(strata)
    if n == 0 or fraction <= 0:
        return np.zeros(n, dtype=bool)
    rng = np.random.default_rng(seed)
    codes, inverse = np.unique(strata, return_inverse=True)
    order = np.lexsort((rng.random(n), inverse))          # random order within each stratum
    sizes = np.bincount(inverse, minlength=len(codes))
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n) - np.repeat(starts, sizes)
    quota = np.floor(sizes * fraction + 0.5).astype(np.int64)
    return pos < quota[inverse]


def budget_cut(score: np.ndarray, control: np.ndarray, cost: np.ndarray, max_users: int | None,
               max_cost: float | None) -> np.ndarray:
    """Indices (best score first) kept under the budget, which counts treated users only."""
    order = np.argsort(-score, kind="stable")
    treated = ~control[order]
    n_treated = np.cumsum(treated)
    spent = np.cumsum(np.where(treated, cost[order], 0.0))
    ok = np.ones(len(order), dtype=bool)
    if max_users is not None:
        ok &= n_treated <= max_users
    if max_cost is not None:
        ok &= spent <= max_cost + 1e-9
    # keep the longest prefix that is within budget
    bad = np.flatnonzero(~ok)
    end = bad[0] if len(bad) else len(order)
    return order[:end]


def send_date_of(profiles: pd.DataFrame, campaign: CampaignConfig) -> pd.Timestamp:
    """The send day (midnight UTC; its calendar date is each user's local send date)."""
    if campaign.send_time.send_date is not None:
        return pd.Timestamp(campaign.send_time.send_date, tz="UTC")
    snap = pd.to_datetime(profiles["snapshot_date"], utc=True).max() if len(profiles) else pd.Timestamp.now(tz="UTC")
    return (snap + pd.Timedelta(days=1)).normalize()


def select_and_assign(kept: pd.DataFrame, score: np.ndarray, channel: np.ndarray, campaign: CampaignConfig,
                      steps: list[dict], send_date: pd.Timestamp, model=None) -> pd.DataFrame:
    """Steps 3b-6 on the eligible, scored users: min score, control group, budget, channel/time/offer.

    Uplift campaigns (``model.kind: uplift``; ``model`` = the ``CampaignModel`` that scored them, else
    loaded from ``job.model_dir``) first drop the sleeping dogs (negative estimated effect) and, when
    the offer has a cost, the users of negative expected profit; users are then ranked by expected
    incremental profit (or effect) and the offer is chosen by ``serving.campaigns.offers``. The
    summary (counts, expected conversions, cost and profit, the profit curve) is in the returned
    frame's ``attrs["uplift"]``.

    The result does not depend on the order of the rows: they are put in ``user_key`` order first (a stable
    sort; profiles files are written in that order already), so the seeded control draw and the tie-breaks
    of the budget cut are the same whether the rows come from one file or from Ray Data's blocks."""
    order = np.argsort(kept["user_key"].astype("string").to_numpy(dtype=object), kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        kept = kept.iloc[order].reset_index(drop=True)
        score, channel = np.asarray(score)[order], np.asarray(channel)[order]
    b, c = campaign.budget, campaign.control
    costs = np.array([campaign.channels.cost[ch] for ch in campaign.channels.order], dtype=np.float64)
    econ, summary = None, {}
    rank = score
    if campaign.model.kind == "uplift":
        if model is None:
            from serving.campaigns.scoring import CampaignModel

            model = CampaignModel.load(campaign.job.model_dir)
        econ = offers.economics(kept, score, costs[channel], campaign, model)
        summary = {"mode": econ.mode, "offer_rule": econ.offer_rule, "outcome": model.uplift.outcome,
                   "margin_rate": campaign.evaluation.margin_rate, "scored": int(len(kept)),
                   "profit_curve": offers.profit_curve(econ, costs[channel])}
        ok = econ.uplift >= 0
        summary["sleeping_dogs"] = int((~ok).sum())
        steps.append({"step": "uplift.sleeping_dogs", "users": int(ok.sum())})
        if econ.mode == "incremental_profit":
            summary["unprofitable"] = int((ok & ~(econ.profit > 0)).sum())
            ok &= econ.profit > 0
            steps.append({"step": "uplift.unprofitable", "users": int(ok.sum())})
        kept, score, channel = kept[ok], score[ok], channel[ok]
        econ = econ.take(ok)
        rank = econ.value
    if b.min_score is not None:
        ok = score >= b.min_score
        kept, score, channel, rank = kept[ok], score[ok], channel[ok], rank[ok]
        econ = econ.take(ok) if econ is not None else None
        steps.append({"step": "budget.min_score", "users": int(ok.sum())})
    strata = (np.zeros(len(kept), dtype=np.int64) if c.stratify_by == "none"
              else pd.factorize(kept[c.stratify_by].astype("string").fillna("<null>"))[0])
    control = stratified_control(strata, c.fraction, c.seed)
    cost = costs[channel]
    idx = budget_cut(rank, control, cost, b.max_users, b.max_cost)
    steps.append({"step": "budget", "users": int(len(idx))})
    sel = kept.iloc[idx]
    hours = send_hours(sel["active_hour"], campaign)
    zones = user_zones(sel, campaign)
    is_ctrl = control[idx]
    channels = np.asarray(campaign.channels.order, dtype=object)[channel[idx]]
    out = pd.DataFrame({
        "user_key": sel["user_key"].astype("string").to_numpy(),
        "score": score[idx].astype(np.float32),
        "group": np.where(is_ctrl, "control", "treatment"),
        "channel": channels,
        "send_at": send_times_utc(send_date, hours, zones),
        "timezone": pd.Series(zones, dtype="string").to_numpy(),
        "offer": offer_discounts(sel["price_sensitivity"], campaign).astype(np.float32),
        "segment": sel[c.stratify_by].astype("string").to_numpy() if c.stratify_by != "none" else pd.NA,
        "cost": np.where(is_ctrl, 0.0, cost[idx]),
    })
    out["group"] = out["group"].astype("category")
    out["channel"] = out["channel"].astype("category")
    steps.append({"step": "treatment", "users": int((~is_ctrl).sum())})
    steps.append({"step": "control", "users": int(is_ctrl.sum())})
    out = out.reset_index(drop=True)
    if econ is not None:
        out["offer"] = econ.offer[idx].astype(np.float32)
        out["uplift"] = econ.uplift[idx].astype(np.float32)
        out["p_treated"] = econ.p_treated[idx].astype(np.float32)
        out["expected_profit"] = econ.profit[idx]
        t = ~is_ctrl
        summary.update({
            "expected_incremental_conversions": float(econ.uplift[idx][t].sum()),
            "expected_cost": {"channel": float(cost[idx][t].sum()), "discounts": float(econ.discount_cost[idx][t].sum()),
                              "total": float(cost[idx][t].sum() + econ.discount_cost[idx][t].sum())},
            "expected_incremental_profit": float(econ.profit[idx][t].sum()),
            "offer_levels": {f"{d:g}": int(k) for d, k in zip(*np.unique(econ.offer[idx][t], return_counts=True))},
        })
        out.attrs["uplift"] = summary
    return out


def build_audience(profiles: pd.DataFrame, campaign: CampaignConfig, scorer: Scorer,
                   recent_contacts: set[str] | None = None, recent_buyers: set[str] | None = None,
                   model=None) -> AudienceResult:
    """The whole pipeline on one process. ``scorer(frame) -> scores`` (see ``model_scorer``); ``model``
    (the scorer's ``CampaignModel``) gives uplift campaigns their economics (else ``job.model_dir``)."""
    check_profiles(profiles, campaign)
    timings = {}
    t0 = time.perf_counter()
    keep, steps, channel = eligibility_steps(profiles, campaign, recent_contacts, recent_buyers)
    kept = profiles[keep]
    timings["filters"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    score = np.asarray(scorer(kept), dtype=np.float32) if len(kept) else np.zeros(0, dtype=np.float32)
    if len(score) != len(kept):
        raise ValueError(f"the scorer returned {len(score)} scores for {len(kept)} users")
    timings["scoring"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    send_date = send_date_of(profiles, campaign)
    audience = select_and_assign(kept, score, channel[keep], campaign, steps, send_date, model=model)
    timings["select_assign"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    warning = empty_audience_warning(campaign, steps)
    return AudienceResult(audience, steps, timings, str(send_date.date()), [warning] if warning else [])


def model_scorer(model, device: str = "auto", batch_size: int = 262144) -> Scorer:
    """Wrap a ``serving.campaigns.scoring.CampaignModel`` as a frame -> scores function."""
    def score(frame: pd.DataFrame) -> np.ndarray:
        return model.score_matrix(model.feature_matrix(frame), device=device, batch_size=batch_size)
    return score
