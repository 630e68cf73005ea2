"""Small helpers shared by the profile modules: the purchase lines, percentile scores, time windows."""
from __future__ import annotations

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)


def days_between(earlier: pd.Series, later: pd.Timestamp) -> pd.Series:
    """Days (float) from each timestamp in ``earlier`` to ``later``."""
    return (later - earlier) / DAY


def quintile_score(values: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """Score 1-5 from the share of users strictly worse (5 = best fifth). Ties share a score, and the
    worst tie group always scores 1 (many one-order customers must not all land in 2). NaN scores 1."""
    n = values.notna().sum()
    below = values.rank(method="min", ascending=higher_is_better).to_numpy(dtype=float) - 1
    score = np.floor(5 * below / max(n, 1)) + 1
    score = np.where(np.isnan(score), 1, np.clip(score, 1, 5))
    return pd.Series(score.astype("int64"), index=values.index)


def percentile(values: pd.Series) -> pd.Series:
    """Percentile rank in [0, 1] (ties share a rank); NaN stays NaN."""
    return values.rank(method="average", pct=True)


def line_values(events: pd.DataFrame) -> pd.Series:
    """Revenue of each event line: price × quantity (quantity 1 when missing); NaN without a price."""
    qty = events["quantity"].astype("float64").fillna(1.0).abs()
    return events["price"].astype("float64") * qty


def split_purchases(
    events: pd.DataFrame, purchase_events: list[str], return_events: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The purchase lines and the return lines of ``events`` (copies, with a ``value`` column ≥ 0)."""
    purchases = events[events["event"].isin(purchase_events)].copy()
    returns = events[events["event"].isin(return_events)].copy()
    purchases["value"] = line_values(purchases)
    returns["value"] = line_values(returns)
    return purchases, returns
