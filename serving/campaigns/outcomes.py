"""Each audience user's campaign outcome: from the events after ``send_at``, from a file, or simulated.

Outcome columns, one row per audience user (treatment and control alike): ``responded`` (0/1),
``converted`` (0/1), ``revenue`` (>= 0, what the user paid) and ``retained`` (0/1).

- ``outcomes_from_events`` (the default): from the processed events, per user in
  ``[send_at, send_at + attribution_days)``: ``responded`` = any event, ``converted`` = an
  ``objective.event`` (in ``objective.category`` when set), ``revenue`` = price x quantity of those
  events; ``retained`` = any event in ``[send_at, send_at + evaluation.retention_days)``. A window that
  runs past the last event of the data is incomplete: counted and reported, never silently shortened.
- ``load_outcomes``: a parquet or csv file with ``user_key`` and the four columns (validated).
- ``simulate_outcomes``: a seeded, documented simulation (conversion follows the model score,
  treatment adds a lift that grows with the discount). It demos the readout; it is not evidence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.processed import load_events, load_items, load_users
from serving.campaigns.spec import CampaignConfig

OUTCOME_COLUMNS = ("responded", "converted", "revenue", "retained")


@dataclass
class Outcomes:
    frame: pd.DataFrame                 # user_key + OUTCOME_COLUMNS
    source: str                         # events | file | simulate
    info: dict = field(default_factory=dict)


def outcomes_from_events(audience: pd.DataFrame, events: pd.DataFrame, users: pd.DataFrame,
                         campaign: CampaignConfig, items: pd.DataFrame | None = None) -> Outcomes:
    """Outcomes of every audience user from ``events`` (``user_id, item_id, event, ts, price, quantity``);
    ``users`` maps ``user_key`` to ``user_id``."""
    attribution = pd.Timedelta(days=campaign.attribution_days)
    retention = pd.Timedelta(days=campaign.evaluation.retention_days)
    aud = pd.DataFrame({"user_key": audience["user_key"].astype(str).to_numpy(),
                        "send_at": pd.to_datetime(audience["send_at"], utc=True).to_numpy()})
    ids = users[["user_key", "user_id"]].assign(user_key=lambda d: d["user_key"].astype(str))
    aud = aud.merge(ids, on="user_key", how="left")
    unknown = int(aud["user_id"].isna().sum())
    known = aud.dropna(subset=["user_id"]).astype({"user_id": np.int64})
    ev = events[events["user_id"].isin(known["user_id"])]
    ev = ev.merge(known[["user_id", "send_at"]], on="user_id")
    since = ev["ts"] - ev["send_at"]
    in_window = (since >= pd.Timedelta(0)) & (since < attribution)
    in_retention = (since >= pd.Timedelta(0)) & (since < retention)
    hit = ev["event"] == campaign.objective.event
    if campaign.objective.category is not None:
        if items is None:
            raise ValueError("objective.category is set: outcomes_from_events needs the items table")
        cat = items.set_index("item_id")["category"]
        hit &= ev["item_id"].map(cat).eq(campaign.objective.category).fillna(False).to_numpy(dtype=bool)
    money = (pd.to_numeric(ev["price"], errors="coerce").fillna(0.0)
             * pd.to_numeric(ev["quantity"], errors="coerce").fillna(1.0)).clip(lower=0.0)
    g = pd.DataFrame({"user_id": ev["user_id"], "responded": in_window, "converted": in_window & hit,
                      "revenue": np.where(in_window & hit, money, 0.0), "retained": in_retention})
    per = g.groupby("user_id").agg(responded=("responded", "max"), converted=("converted", "max"),
                                   revenue=("revenue", "sum"), retained=("retained", "max"))
    out = aud[["user_key", "user_id"]].merge(per, left_on="user_id", right_index=True, how="left")
    for col in ("responded", "converted", "retained"):
        out[col] = out[col].fillna(False).astype(int)
    out["revenue"] = out["revenue"].fillna(0.0).astype(float).round(2)
    last = events["ts"].max() if len(events) else pd.NaT
    ends = aud["send_at"] + max(attribution, retention)
    info = {"attribution_days": campaign.attribution_days, "retention_days": campaign.evaluation.retention_days,
            "objective_event": campaign.objective.event, "objective_category": campaign.objective.category,
            "last_event": str(last), "audience_users_unknown_to_events": unknown,
            "users_with_incomplete_window": int((ends > last).sum()) if pd.notna(last) else int(len(aud))}
    return Outcomes(out[["user_key", *OUTCOME_COLUMNS]], "events", info)


def outcomes_from_processed(audience: pd.DataFrame, processed: str | Path, campaign: CampaignConfig) -> Outcomes:
    """``outcomes_from_events`` on a prepared dataset folder."""
    processed = Path(processed)
    if not (processed / "events.parquet").is_file():
        raise FileNotFoundError(f"processed events {processed / 'events.parquet'} not found (campaign.job.processed): "
                                "prepare the data, or pass outcomes=<file> or outcomes=simulate")
    events = load_events(processed, columns=["user_id", "item_id", "event", "ts", "price", "quantity"])
    items = load_items(processed) if campaign.objective.category is not None else None
    out = outcomes_from_events(audience, events, load_users(processed), campaign, items)
    out.info["processed"] = str(processed)
    return out


def load_outcomes(path: str | Path) -> Outcomes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"outcomes file {path} (setting outcomes) not found")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"user_key": "string"})
    missing = [c for c in ("user_key", *OUTCOME_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(f"outcomes file {path} lacks column(s) {missing}")
    for col in ("responded", "converted", "retained"):
        bad = ~df[col].isin([0, 1, True, False])
        if bad.any():
            raise ValueError(f"outcomes file {path}: column {col} must be 0/1, got {df.loc[bad, col].iloc[0]!r}")
    if (pd.to_numeric(df["revenue"], errors="coerce").fillna(-1) < 0).any():
        raise ValueError(f"outcomes file {path}: column revenue must be a number >= 0")
    if df["user_key"].duplicated().any():
        raise ValueError(f"outcomes file {path}: user_key {df.loc[df['user_key'].duplicated(), 'user_key'].iloc[0]!r} appears twice")
    return Outcomes(df, "file", {"path": str(path)})


def simulate_outcomes(audience: pd.DataFrame, profiles: pd.DataFrame, campaign: CampaignConfig, seed: int) -> Outcomes:
    """A seeded, documented simulation of campaign outcomes (see the module docstring)."""
    rng = np.random.default_rng(seed)
    prof = profiles.set_index(profiles["user_key"].astype(str))
    keys = audience["user_key"].astype(str)
    freq = prof["frequency"].reindex(keys).to_numpy(dtype=float)
    monetary = prof["monetary"].reindex(keys).to_numpy(dtype=float)
    aov_default = campaign.evaluation.average_order_value or 20.0
    aov = np.nan_to_num(np.clip(monetary, 0, None) / np.clip(freq, 1, None), nan=aov_default)
    treated = (audience["group"] == "treatment").to_numpy()
    offer = audience["offer"].to_numpy(dtype=float)
    p0 = np.clip(audience["score"].to_numpy(dtype=float), 0.01, 0.95)
    p1 = np.clip(p0 * (1.15 + 1.5 * offer) + 0.01, 0, 0.99)
    p_conv = np.where(treated, p1, p0)
    converted = rng.random(len(p0)) < p_conv
    responded = converted | (rng.random(len(p0)) < np.where(treated, 0.12, 0.04))
    revenue = np.where(converted, aov * rng.lognormal(0.0, 0.4, len(p0)) * np.where(treated, 1 - offer, 1.0), 0.0)
    retained = rng.random(len(p0)) < np.where(converted, 0.8, 0.45)
    frame = pd.DataFrame({"user_key": keys.to_numpy(), "responded": responded.astype(int),
                          "converted": converted.astype(int), "revenue": np.round(revenue, 2),
                          "retained": retained.astype(int)})
    return Outcomes(frame, "simulate", {"seed": seed})
