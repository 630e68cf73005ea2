"""Who may receive a campaign: targeting checked against the data, eligibility rules, consent, exclusions.

``check_profiles`` and ``check_targeting`` run before any scoring: a missing profile column, a
segment or country that no profile has, or a model feature that is not a profile column fails with
the campaign field and the known values. ``eligibility_steps`` then applies, vectorised over numpy
arrays, the eligibility rules (lifecycle, named segments, countries, recency range, minimum
frequency / monetary) and the exclusions (no consented channel among the campaign's channels,
contacted by another campaign within the frequency cap, already bought the objective's category,
churn probability above the cap), counting the users left after every step. Unknown consent counts
as opted out: opted-out users are never kept.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from serving.campaigns.spec import CampaignConfig, CampaignConfigError

REQUIRED_COLUMNS = ("user_key", "lifecycle", "named_segment", "segment", "recency_days", "frequency",
                    "monetary", "price_sensitivity", "active_hour", "preferred_channel", "country",
                    "opted_out_email", "opted_out_sms", "opted_out_push", "snapshot_date")
_LISTED = 12   # known values shown in an error


def check_profiles(profiles: pd.DataFrame, campaign: CampaignConfig) -> None:
    """Fail with the missing column's name before any work; a model feature that is no profile column
    names the field ``campaign.model.features``."""
    bad_features = [c for c in campaign.model.features if c not in profiles.columns]
    if bad_features:
        raise CampaignConfigError("model.features", f"profile column(s) {bad_features} do not exist "
                                  f"(profile columns: {', '.join(sorted(map(str, profiles.columns)))})")
    need = list(REQUIRED_COLUMNS)
    if campaign.exclusions.max_churn_prob is not None:
        need.append("churn_prob")
    missing = [c for c in need if c not in profiles.columns]
    if missing:
        raise ValueError(f"profiles lack column(s) {missing} needed by campaign {campaign.id!r}")


def _known(values: Iterable) -> list[str]:
    return sorted({str(v) for v in values if not pd.isna(v)})


def check_targeting(profiles: pd.DataFrame, campaign: CampaignConfig,
                    known_segments: Iterable[str] = ()) -> None:
    """Every targeting value must exist: a segment that is neither configured (``known_segments``, the
    profile config's named segments) nor present in the profiles, or a country no profile has, is an
    error naming the field and listing the known values (a typo would otherwise give an empty audience)."""
    e = campaign.eligibility
    checks = [("eligibility.segments", e.segments, "named_segment", set(known_segments)),
              ("eligibility.countries", e.countries, "country", set())]
    for field, wanted, column, configured in checks:
        if wanted is None:
            continue
        known = set(_known(pd.unique(profiles[column]))) | configured
        unknown = [v for v in wanted if v not in known]
        if unknown:
            shown = sorted(known)
            more = f" and {len(shown) - _LISTED} more" if len(shown) > _LISTED else ""
            raise CampaignConfigError(field, f"unknown value(s) {unknown}; known: "
                                             f"{', '.join(shown[:_LISTED])}{more} (profiles column {column})")


def _isin(col: pd.Series, values) -> np.ndarray:
    return col.isin(list(values)).to_numpy(dtype=bool, na_value=False)


def numeric(col: pd.Series) -> np.ndarray:
    """A column as float64 with NaN for nulls and non-numbers."""
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


def eligibility_steps(profiles: pd.DataFrame, campaign: CampaignConfig, recent_contacts: set[str] | None = None,
                      recent_buyers: set[str] | None = None) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """(kept mask, step counts ``[{"step", "users"}]``, channel index per user)."""
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
    rec = numeric(profiles["recency_days"]) if (e.min_recency_days is not None or e.max_recency_days is not None) else None
    if e.min_recency_days is not None:
        step("eligibility.min_recency_days", rec >= e.min_recency_days)
    if e.max_recency_days is not None:
        step("eligibility.max_recency_days", rec <= e.max_recency_days)
    if e.min_frequency is not None:
        step("eligibility.min_frequency", numeric(profiles["frequency"]) >= e.min_frequency)
    if e.min_monetary is not None:
        step("eligibility.min_monetary", numeric(profiles["monetary"]) >= e.min_monetary)
    channel = choose_channel(profiles, campaign)
    step("exclusions.opted_out", channel >= 0)
    if x.frequency_cap_days is not None and recent_contacts:
        step("exclusions.frequency_cap", ~_isin(profiles["user_key"], recent_contacts))
    if x.bought_category_within_days is not None and recent_buyers:
        step("exclusions.bought_category", ~_isin(profiles["user_key"], recent_buyers))
    if x.max_churn_prob is not None:
        churn = numeric(profiles["churn_prob"])
        step("exclusions.max_churn_prob", ~(churn > x.max_churn_prob))
    return keep, steps, channel
