"""Batch audience building: who gets a campaign, in which group, on which channel, when, with what.

``build_audience(profiles, campaign, model)`` runs, in order, counting the users left after each step:

1. eligibility (lifecycle, named segments, countries, recency range, minimum frequency / monetary);
2. exclusions: no consented channel among the campaign's channels (opted-out users are never kept),
   contacted by another campaign within the frequency cap, already bought the objective's category,
   churn probability above the cap;
3. scoring with the campaign model, batch-wise on CUDA when present (``job.device``), else the CPU;
   optional ``budget.min_score``;
4. a random control group: ``control.fraction`` of every stratum (``control.stratify_by``), seeded,
   drawn over all scored users so that control and treatment share the same score cut-off;
5. budget: users by score, best first, while the treated users stay within ``budget.max_users`` and
   ``budget.max_cost`` (channel cost); control users above the cut-off are kept (they cost nothing);
6. channel (preferred when consented, else the first consented in ``channels.order``), send time
   and offer (discount by price sensitivity) for every selected user. Send times are local: the
   user's active hour (computed in their own zone by ``features.profiles.activity``) on the send
   date, moved out of the quiet hours, both in the user's zone (profiles column ``timezone``, else
   ``send_time.default_timezone``); ``send_at`` is that moment in UTC and ``timezone`` the zone used.

Everything is vectorised over numpy arrays (string columns become categorical codes once), so a
million users take a few seconds on one core. ``score_with_ray`` runs steps 1-3 through Ray Data.
Output rows carry only pseudonymised ``user_key``s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from serving.campaign_config import CampaignConfig

AUDIENCE_COLUMNS = ("user_key", "score", "group", "channel", "send_at", "timezone", "offer", "segment", "cost")
REQUIRED_COLUMNS = ("user_key", "lifecycle", "named_segment", "segment", "recency_days", "frequency",
                    "monetary", "price_sensitivity", "active_hour", "preferred_channel", "country",
                    "opted_out_email", "opted_out_sms", "opted_out_push", "snapshot_date")
Scorer = Callable[[pd.DataFrame], np.ndarray]


@dataclass
class AudienceResult:
    audience: pd.DataFrame                 # AUDIENCE_COLUMNS, best score first
    steps: list[dict]                      # [{"step": name, "users": count left}]
    timings_s: dict[str, float] = field(default_factory=dict)
    send_date: str = ""

    @property
    def counts(self) -> dict[str, int]:
        return {s["step"]: s["users"] for s in self.steps}


def check_profiles(profiles: pd.DataFrame, campaign: CampaignConfig) -> None:
    """Fail with the missing column's name before any work."""
    need = list(REQUIRED_COLUMNS) + [c for c in campaign.model.features if c not in REQUIRED_COLUMNS]
    if campaign.exclusions.max_churn_prob is not None:
        need.append("churn_prob")
    missing = [c for c in need if c not in profiles.columns]
    if missing:
        raise ValueError(f"profiles lack column(s) {missing} needed by campaign {campaign.id!r}")


def _isin(col: pd.Series, values) -> np.ndarray:
    return col.isin(list(values)).to_numpy(dtype=bool, na_value=False)


def _num(col: pd.Series) -> np.ndarray:
    return pd.to_numeric(col, errors="coerce").astype("float64").to_numpy(na_value=np.nan)


def consent_matrix(profiles: pd.DataFrame, channels: tuple[str, ...]) -> np.ndarray:
    """(n, len(channels)) bool: may we contact the user on that channel? Unknown consent = no."""
    cols = []
    for ch in channels:
        col = profiles[f"opted_out_{ch}"]
        opted_out = (col.to_numpy(dtype=bool) if col.dtype == bool
                     else col.astype("boolean").fillna(True).to_numpy(dtype=bool))
        cols.append(~opted_out)
    return np.column_stack(cols) if cols else np.zeros((len(profiles), 0), dtype=bool)


def choose_channel(profiles: pd.DataFrame, campaign: CampaignConfig) -> np.ndarray:
    """Index into ``campaign.channels.order`` per user, -1 where no channel is consented."""
    order = campaign.channels.order
    allowed = consent_matrix(profiles, order)
    first = np.where(allowed.any(1), allowed.argmax(1), -1)
    if campaign.channels.use_preference:
        pref = profiles["preferred_channel"]
        for j, ch in enumerate(order):
            use = _isin(pref, [ch]) & allowed[:, j]
            first = np.where(use, j, first)
    return first


def send_hours(active_hour: pd.Series, campaign: CampaignConfig) -> np.ndarray:
    """Each user's local active hour (default where unknown) moved to the end of the quiet hours if
    inside them (quiet hours are local hours too)."""
    st = campaign.send_time
    h = _num(active_hour)
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


def offer_discounts(price_sensitivity: pd.Series, campaign: CampaignConfig) -> np.ndarray:
    """Discount depth per user from the price-sensitivity tiers (default where unknown)."""
    o = campaign.offer
    ps = _num(price_sensitivity)
    out = np.full(len(ps), o.default_discount, dtype=np.float64)
    if o.kind == "none" or not o.tiers:
        return out if o.kind != "none" else np.zeros(len(ps))
    bounds = np.array([t.max_price_sensitivity for t in o.tiers])
    depth = np.array([t.discount for t in o.tiers])
    known = ~np.isnan(ps)
    idx = np.clip(np.searchsorted(bounds, np.clip(ps[known], 0.0, 1.0), side="left"), 0, len(bounds) - 1)
    out[known] = depth[idx]
    return out


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


def _send_date(profiles: pd.DataFrame, campaign: CampaignConfig) -> pd.Timestamp:
    """The send day (midnight UTC; its calendar date is each user's local send date)."""
    if campaign.send_time.send_date is not None:
        return pd.Timestamp(campaign.send_time.send_date, tz="UTC")
    snap = pd.to_datetime(profiles["snapshot_date"], utc=True).max() if len(profiles) else pd.Timestamp.now(tz="UTC")
    return (snap + pd.Timedelta(days=1)).normalize()


def eligibility_steps(profiles: pd.DataFrame, campaign: CampaignConfig, recent_contacts: set[str] | None = None,
                      recent_buyers: set[str] | None = None) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Steps 1-2: (kept mask, step counts, channel index per user)."""
    e, x = campaign.eligibility, campaign.exclusions
    keep = np.ones(len(profiles), dtype=bool)
    steps = [{"step": "all_profiles", "users": int(keep.sum())}]

    def step(name: str, mask: np.ndarray) -> None:
        nonlocal keep
        keep &= mask
        steps.append({"step": name, "users": int(keep.sum())})

    if e.lifecycle is not None:
        step("eligibility.lifecycle", _isin(profiles["lifecycle"], e.lifecycle))
    if e.segments is not None:
        step("eligibility.segments", _isin(profiles["named_segment"], e.segments))
    if e.countries is not None:
        step("eligibility.countries", _isin(profiles["country"], e.countries))
    rec = _num(profiles["recency_days"]) if (e.min_recency_days is not None or e.max_recency_days is not None) else None
    if e.min_recency_days is not None:
        step("eligibility.min_recency_days", rec >= e.min_recency_days)
    if e.max_recency_days is not None:
        step("eligibility.max_recency_days", rec <= e.max_recency_days)
    if e.min_frequency is not None:
        step("eligibility.min_frequency", _num(profiles["frequency"]) >= e.min_frequency)
    if e.min_monetary is not None:
        step("eligibility.min_monetary", _num(profiles["monetary"]) >= e.min_monetary)
    channel = choose_channel(profiles, campaign)
    step("exclusions.opted_out", channel >= 0)
    if x.frequency_cap_days is not None and recent_contacts:
        step("exclusions.frequency_cap", ~_isin(profiles["user_key"], recent_contacts))
    if x.bought_category_within_days is not None and recent_buyers:
        step("exclusions.bought_category", ~_isin(profiles["user_key"], recent_buyers))
    if x.max_churn_prob is not None:
        churn = _num(profiles["churn_prob"])
        step("exclusions.max_churn_prob", ~(churn > x.max_churn_prob))
    return keep, steps, channel


def select_and_assign(kept: pd.DataFrame, score: np.ndarray, channel: np.ndarray, campaign: CampaignConfig,
                      steps: list[dict], send_date: pd.Timestamp) -> pd.DataFrame:
    """Steps 3b-6 on the eligible, scored users: min score, control group, budget, channel/time/offer."""
    b, c = campaign.budget, campaign.control
    if b.min_score is not None:
        ok = score >= b.min_score
        kept, score, channel = kept[ok], score[ok], channel[ok]
        steps.append({"step": "budget.min_score", "users": int(ok.sum())})
    strata = (np.zeros(len(kept), dtype=np.int64) if c.stratify_by == "none"
              else pd.factorize(kept[c.stratify_by].astype("string").fillna("<null>"))[0])
    control = stratified_control(strata, c.fraction, c.seed)
    costs = np.array([campaign.channels.cost[ch] for ch in campaign.channels.order], dtype=np.float64)
    cost = costs[channel]
    idx = budget_cut(score, control, cost, b.max_users, b.max_cost)
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
    return out.reset_index(drop=True)


def build_audience(profiles: pd.DataFrame, campaign: CampaignConfig, scorer: Scorer,
                   recent_contacts: set[str] | None = None, recent_buyers: set[str] | None = None) -> AudienceResult:
    """The whole pipeline on one process. ``scorer(frame) -> scores`` (see ``model_scorer``)."""
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
    send_date = _send_date(profiles, campaign)
    audience = select_and_assign(kept, score, channel[keep], campaign, steps, send_date)
    timings["select_assign"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    return AudienceResult(audience, steps, timings, str(send_date.date()))


def model_scorer(model, device: str = "auto", batch_size: int = 262144) -> Scorer:
    """Wrap a ``serving.campaign_scoring.CampaignModel`` as a frame -> scores function."""
    def score(frame: pd.DataFrame) -> np.ndarray:
        return model.score_matrix(model.feature_matrix(frame), device=device, batch_size=batch_size)
    return score


def score_with_ray(profiles: pd.DataFrame, campaign: CampaignConfig, model_dir: str, address: str,
                   recent_contacts: set[str] | None = None, recent_buyers: set[str] | None = None) -> AudienceResult:
    """Steps 1-3 (filters, consent, scoring) in Ray Data ``map_batches`` on the cluster at ``address``;
    the global steps (control group, budget) then run here on the scored eligible users."""
    import ray

    check_profiles(profiles, campaign)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t0 = time.perf_counter()
    batch_size = campaign.job.batch_size

    def work(batch: pd.DataFrame) -> pd.DataFrame:
        from serving.campaign_scoring import CampaignModel

        keep, _, channel = eligibility_steps(batch, campaign, recent_contacts, recent_buyers)
        out = batch[keep].copy()
        model = CampaignModel.load(model_dir)
        score = model.score_matrix(model.feature_matrix(out), device=campaign.job.device) if len(out) else np.zeros(0)
        out["_score"] = np.asarray(score, dtype=np.float32)
        out["_channel"] = channel[keep].astype(np.int64)
        return out

    def counts(batch: pd.DataFrame) -> pd.DataFrame:
        _, steps, _ = eligibility_steps(batch, campaign, recent_contacts, recent_buyers)
        return pd.DataFrame([{s["step"]: s["users"] for s in steps}])

    frame = profiles.copy()
    frame["_row"] = np.arange(len(frame))   # to restore the local order (same control draw as build_audience)
    for col in frame.columns:       # Arrow-friendly types for the trip through the object store
        if isinstance(frame[col].dtype, pd.CategoricalDtype):
            frame[col] = frame[col].astype("string")
    ds = ray.data.from_pandas(frame)
    rows = ds.map_batches(work, batch_format="pandas", batch_size=batch_size).to_pandas()
    per_batch = ds.map_batches(counts, batch_format="pandas", batch_size=batch_size).to_pandas()
    steps = [{"step": str(k), "users": int(per_batch[k].sum())} for k in per_batch.columns]
    rows = rows.sort_values("_row", kind="stable").drop(columns="_row").reset_index(drop=True)
    score = rows.pop("_score").to_numpy(dtype=np.float32)
    channel = rows.pop("_channel").to_numpy(dtype=np.int64)
    t1 = time.perf_counter()
    send_date = _send_date(profiles, campaign)
    audience = select_and_assign(rows, score, channel, campaign, steps, send_date)
    return AudienceResult(audience, steps, {"ray_filters_scoring": t1 - t0, "total": time.perf_counter() - t0},
                          str(send_date.date()))


# ---------------------------------------------------------------------------------------------
# Synthetic profiles (benchmarks and tests): the columns and value ranges of features.profile.

LIFECYCLES = np.array(["new", "active", "at_risk", "dormant", "churned"])
NAMED = np.array(["high_value", "price_sensitive", "potential", "rational_researcher", "casual_browser", "regular"])
COUNTRIES = np.array(["United Kingdom", "Germany", "France", "EIRE", "Spain", "Netherlands"])
COUNTRY_ZONES = {"United Kingdom": "Europe/London", "Germany": "Europe/Berlin", "France": "Europe/Paris",
                 "EIRE": "Europe/Dublin", "Spain": "Europe/Madrid", "Netherlands": "Europe/Amsterdam"}


def synthetic_profiles(n: int, seed: int = 0, snapshot: str = "2011-12-10") -> pd.DataFrame:
    """``n`` made-up profile rows with categorical string columns (for speed and memory)."""
    rng = np.random.default_rng(seed)

    def cat(values: np.ndarray, p=None) -> pd.Categorical:
        return pd.Categorical.from_codes(rng.choice(len(values), n, p=p).astype(np.int16), categories=values)

    frequency = rng.geometric(0.3, n).astype(np.int64)
    monetary = np.round(rng.lognormal(5.5, 1.2, n), 2)
    ps = rng.beta(2, 3, n)
    ps[rng.random(n) < 0.05] = np.nan
    hour = rng.integers(0, 24, n).astype(np.float64)
    pref = pd.Categorical.from_codes(rng.choice(4, n, p=[0.4, 0.1, 0.2, 0.3]).astype(np.int16) - 1,
                                     categories=["email", "sms", "push"])   # -1 = null
    country = cat(COUNTRIES, [0.8, 0.05, 0.05, 0.04, 0.03, 0.03])
    zone = pd.Categorical.from_codes(country.codes, categories=[COUNTRY_ZONES[c] for c in COUNTRIES])
    return pd.DataFrame({
        "user_id": np.arange(n, dtype=np.int64),
        "user_key": pd.Categorical(np.char.add("u", np.arange(n).astype(str))) if n <= 2_000_000
        else pd.Series(np.arange(n)).map("{:016x}".format).astype("category"),
        "snapshot_date": pd.Timestamp(snapshot, tz="UTC"),
        "recency_days": rng.exponential(120, n),
        "frequency": frequency,
        "monetary": monetary,
        "price_sensitivity": ps,
        "clv": monetary * rng.uniform(0.1, 1.0, n),
        "churn_prob": rng.uniform(0, 1, n),
        "n_purchase_lines": frequency * rng.integers(1, 20, n),
        "n_categories": rng.integers(1, 10, n),
        "lifecycle": cat(LIFECYCLES, [0.1, 0.3, 0.25, 0.2, 0.15]),
        "named_segment": cat(NAMED),
        "segment": rng.integers(0, 6, n).astype(np.int64),
        "active_hour": hour,
        "preferred_channel": pref,
        "country": country,
        "timezone": zone,
        "opted_out_email": rng.random(n) < 0.3,
        "opted_out_sms": rng.random(n) < 0.65,
        "opted_out_push": rng.random(n) < 0.5,
    })
