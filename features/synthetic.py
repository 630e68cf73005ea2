"""A seeded generator of realistic shop clickstreams, to test scale (10M+ events) and behaviour.

What it models (every knob in ``conf/data/synthetic.yaml`` under ``synthetic``):

- a catalogue of ``n_items`` in ``n_categories``; category sizes and item popularity follow power
  laws (Zipf exponent ``item_zipf``); prices are log-normal around a per-category level;
- ``n_users`` whose activity is power-law too, each with a country;
- sessions: a user browses one category (with some off-category views), a view → cart → purchase
  funnel (``p_cart`` per view, cheaper items convert better; ``p_purchase`` per cart), purchased
  quantities, and later ``return`` events (``p_return``);
- time: sessions start on days drawn from a seasonal curve (a yearly wave plus a late-November to
  December peak) and at hours drawn from a daily curve (evening peak, quiet nights).

``scale`` is the total number of events (``n_events``): users and items grow with it unless given.
Everything is vectorised numpy; the same seed gives the same rows.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from features.adapters.base import DataConfigError, RawData

EVENTS = np.array(["view", "cart", "purchase", "return"])
COUNTRIES = np.array(["United Kingdom", "Germany", "France", "Spain", "Netherlands", "Italy", "Poland", "Sweden"])
COUNTRY_WEIGHTS = np.array([0.45, 0.15, 0.12, 0.08, 0.07, 0.06, 0.04, 0.03])
# Relative activity per hour of day (UTC): quiet nights, a lunch bump and an evening peak.
HOUR_WEIGHTS = np.array([2, 1, 1, 1, 1, 1, 2, 4, 6, 7, 7, 8, 9, 8, 7, 7, 8, 9, 11, 13, 14, 12, 8, 4], dtype=float)


@dataclass
class SyntheticSpec:
    n_events: int = 1_000_000
    seed: int = 42
    n_users: int | None = None        # default n_events / 40
    n_items: int | None = None        # default max(1000, n_events / 250)
    n_categories: int = 40
    start: str = "2024-01-01"
    days: int = 365
    item_zipf: float = 1.1
    user_zipf: float = 0.8
    views_per_session: float = 5.0
    p_off_category: float = 0.2
    p_cart: float = 0.12
    p_purchase: float = 0.35
    p_return: float = 0.05
    season_amplitude: float = 0.25
    holiday_boost: float = 0.8

    @classmethod
    def from_cfg(cls, cfg: Any) -> "SyntheticSpec":
        known = {f.name for f in fields(cls)}
        given = dict(cfg or {})
        unknown = sorted(set(given) - known)
        if unknown:
            raise DataConfigError(f"data.synthetic.{unknown[0]} is not a generator setting; known: {sorted(known)}")
        spec = cls(**{k: v for k, v in given.items() if v is not None})
        if spec.n_events < 1:
            raise DataConfigError(f"data.synthetic.n_events={spec.n_events} must be positive")
        return spec

    def resolved(self) -> "SyntheticSpec":
        n_users = self.n_users or max(100, self.n_events // 40)
        n_items = self.n_items or max(1000, self.n_events // 250)
        return SyntheticSpec(**{**self.__dict__, "n_users": int(n_users), "n_items": int(n_items)})


def _zipf_probs(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return p / p.sum()


def _catalogue(spec: SyntheticSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Items sorted by category; within a category by popularity (item 0 of a category = its best seller)."""
    cat_share = _zipf_probs(spec.n_categories, 0.7)
    sizes = np.maximum(1, np.round(cat_share * spec.n_items)).astype(np.int64)
    sizes[0] += spec.n_items - sizes.sum()
    category = np.repeat(np.arange(spec.n_categories), sizes)
    level = rng.lognormal(mean=2.3, sigma=0.8, size=spec.n_categories)  # median price per category
    price = np.round(level[category] * rng.lognormal(0.0, 0.5, size=spec.n_items), 2) + 0.49
    return pd.DataFrame({"item": np.arange(spec.n_items), "category_id": category, "base_price": price})


def _day_weights(spec: SyntheticSpec, start: pd.Timestamp) -> np.ndarray:
    days = start + pd.to_timedelta(np.arange(spec.days), unit="D")
    doy = days.dayofyear.to_numpy()
    w = 1.0 + spec.season_amplitude * np.sin(2 * np.pi * (doy - 100) / 365.25)
    holiday = (days.month.to_numpy() == 12) & (days.day.to_numpy() <= 23) | (days.month.to_numpy() == 11) & (days.day.to_numpy() >= 24)
    w = w * (1.0 + spec.holiday_boost * holiday)
    weekend = days.dayofweek.to_numpy() >= 5
    return w * np.where(weekend, 1.15, 1.0)


def generate(spec: SyntheticSpec) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(events, items, users) with raw keys: exactly ``spec.n_events`` event rows in session order."""
    spec = spec.resolved()
    rng = np.random.default_rng(spec.seed)
    items = _catalogue(spec, rng)
    cat = items["category_id"].to_numpy()
    cat_start = np.searchsorted(cat, np.arange(spec.n_categories))
    cat_size = np.bincount(cat, minlength=spec.n_categories)
    base_price = items["base_price"].to_numpy()

    # Sessions: enough to reach n_events (expected events per session from the funnel), then cut.
    per_session = spec.views_per_session * (1 + spec.p_cart * (1 + spec.p_purchase * (1 + spec.p_return)))
    n_sessions = int(spec.n_events / per_session * 1.1) + 10
    user_p = _zipf_probs(spec.n_users, spec.user_zipf)
    s_user = rng.permutation(spec.n_users)[rng.choice(spec.n_users, size=n_sessions, p=user_p)]
    s_cat = rng.choice(spec.n_categories, size=n_sessions, p=_zipf_probs(spec.n_categories, 0.7))
    start = pd.Timestamp(spec.start, tz="UTC")
    dw = _day_weights(spec, start)
    s_day = rng.choice(spec.days, size=n_sessions, p=dw / dw.sum())
    s_hour = rng.choice(24, size=n_sessions, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    s_start = (start.value // 1000) + ((s_day * 24 + s_hour) * 3600 + rng.integers(0, 3600, n_sessions)) * 1_000_000
    n_views = 1 + rng.geometric(1.0 / spec.views_per_session, size=n_sessions) - 1
    n_views = np.maximum(n_views, 1)

    # Views: item from the session's category (power law within it) or, sometimes, from anywhere.
    v_sess = np.repeat(np.arange(n_sessions), n_views)
    nv = len(v_sess)
    vc = s_cat[v_sess]
    off = rng.random(nv) < spec.p_off_category
    vc[off] = cat[rng.choice(spec.n_items, size=int(off.sum()), p=_zipf_probs(spec.n_items, spec.item_zipf * 0.9))]
    u = rng.random(nv)
    rank = np.minimum((cat_size[vc] * u ** (1.0 + 2.0 * (spec.item_zipf - 0.5))).astype(np.int64), cat_size[vc] - 1)
    v_item = cat_start[vc] + rank
    gaps = rng.exponential(45.0, size=nv) * 1e6  # ~45 s between views
    first = np.r_[True, v_sess[1:] != v_sess[:-1]]
    cum = np.cumsum(gaps)
    cum -= np.repeat(cum[first] - gaps[first], n_views)
    v_ts = s_start[v_sess] + cum.astype(np.int64)

    # Funnel: cheaper items convert better.
    rel_price = base_price[v_item] / np.median(base_price)
    p_cart = np.clip(spec.p_cart * rel_price ** -0.3, 0.0, 0.9)
    c_idx = np.flatnonzero(rng.random(nv) < p_cart)
    c_ts = v_ts[c_idx] + rng.integers(5, 120, len(c_idx)) * 1_000_000
    p_idx = c_idx[rng.random(len(c_idx)) < spec.p_purchase]
    p_ts = v_ts[p_idx] + rng.integers(120, 1800, len(p_idx)) * 1_000_000
    qty = rng.geometric(0.6, size=len(p_idx)).astype(np.int64)
    discount = np.where(rng.random(len(p_idx)) < 0.15, 0.8, 1.0)
    p_price = np.round(base_price[v_item[p_idx]] * discount, 2)
    r_pick = rng.random(len(p_idx)) < spec.p_return
    r_idx = p_idx[r_pick]
    r_ts = p_ts[r_pick] + rng.integers(2, 30, len(r_idx)) * 86_400_000_000

    kind = np.concatenate([np.zeros(nv, np.int8), np.full(len(c_idx), 1, np.int8), np.full(len(p_idx), 2, np.int8),
                           np.full(len(r_idx), 3, np.int8)])
    src = np.concatenate([np.arange(nv), c_idx, p_idx, r_idx])
    ts = np.concatenate([v_ts, c_ts, p_ts, r_ts])
    price = np.concatenate([base_price[v_item], base_price[v_item[c_idx]], p_price, p_price[r_pick]])
    quantity = np.concatenate([np.zeros(nv, np.int64), np.ones(len(c_idx), np.int64), qty, qty[r_pick]])
    # Order rows by session, then time: the "file order" of the generated log.
    sess = v_sess[src]
    sel = np.lexsort((kind, ts, sess))[: spec.n_events]
    k = kind[sel]
    session = sess[sel]
    has_order = k >= 2
    is_view = k == 0
    events = pd.DataFrame({
        "user": s_user[session].astype(np.int64),
        "item": v_item[src[sel]].astype(np.int64),
        "event": pd.Categorical.from_codes(k, categories=list(EVENTS)),
        "ts": pd.DatetimeIndex(ts[sel].astype("datetime64[us]")).tz_localize("UTC"),
        "price": price[sel],
        "quantity": pd.arrays.IntegerArray(quantity[sel], is_view),
        "session_id": session.astype(np.int64),
        "order_id": pd.arrays.IntegerArray(session.astype(np.int64), ~has_order),
    })
    names = np.array([f"category_{c:03d}" for c in range(spec.n_categories)])
    item_side = pd.DataFrame({"key": items["item"].astype(str), "category": names[cat]})
    users = pd.DataFrame({"key": np.arange(spec.n_users).astype(str),
                          "country": COUNTRIES[rng.choice(len(COUNTRIES), size=spec.n_users, p=COUNTRY_WEIGHTS)]})
    return events, item_side, users


def load_synthetic(cfg: Any) -> RawData:
    """Adapter entry (``adapter: synthetic``): generate ``data.synthetic`` and hand over raw rows."""
    spec = SyntheticSpec.from_cfg(cfg.get("synthetic"))
    events, items, users = generate(spec)
    n = len(events)
    events.insert(0, "file_row", np.arange(1, n + 1, dtype=np.int64))
    events.insert(0, "src_row", np.arange(n, dtype=np.int64))
    events.insert(0, "src_file", np.int16(0))
    return RawData(frame=events, files=[f"synthetic(seed={spec.seed}, n_events={spec.n_events})"], n_input_rows=n,
                   time_kind="time", items=items, users=users)
