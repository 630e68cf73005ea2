"""Business rules applied after ranking, and the human-readable reason of each recommended item.

- ``allowed_mask``: items that may be shown at all (available, inside the request's category and
  price range);
- ``blocked_items``: items never shown to this user now (bought in the last N days, excluded by the
  request, optionally already seen);
- ``select_top_k``: the best k by score with at most M items per category (the cap is off when the
  request itself asks for one category), then, with ``diversity`` > 0, the category re-ranking below;
- ``diversify``: maximal marginal relevance by category: the list is built greedily, each next item the one
  maximising ``(1 - lambda) * relevance - lambda * [its category is already in the list]`` (relevance: the
  score min-max scaled to [0, 1] over the candidates; items without a category never count as a repeat).
  ``lambda = 0`` is the score order; ``lambda >= 0.5`` puts every new category before any repeat.
  Its effect on NDCG and on diversity, novelty and exposure: ``scripts/bench_diversity.py``, ``docs/diversity.md``;
- ``reason_text``: "similar to X you viewed" (or "purchased"), "often bought with Y", "popular in Z".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class RuleSettings:
    """``serve.rules``."""

    no_repurchase_days: float = 30.0
    max_per_category: int = 3  # 0 = no cap
    diversity: float = 0.0     # lambda of the category re-ranking (``diversify``); 0 = off


def allowed_mask(available: np.ndarray, category_code: np.ndarray, price: np.ndarray, *,
                 category: int | None = None, price_min: float | None = None,
                 price_max: float | None = None) -> np.ndarray:
    """Bool mask over items: available and inside the context. ``category`` is a category code
    (-2 for a category the catalogue does not have: nothing qualifies). Items without a price are
    left out when a price bound is given."""
    mask = available.copy()
    if category is not None:
        mask &= category_code == category
    if price_min is not None:
        mask &= price >= price_min  # nan compares False: unknown prices drop out
    if price_max is not None:
        mask &= price <= price_max
    return mask


def blocked_items(*, purchases: np.ndarray, purchase_ts: np.ndarray, now: float, settings: RuleSettings,
                  exclude: Iterable[int] = (), seen: Iterable[int] = ()) -> set[int]:
    """Item ids this user must not get now."""
    out = {int(i) for i in exclude}
    out.update(int(i) for i in seen)
    if settings.no_repurchase_days > 0 and len(purchases):
        recent = np.asarray(purchase_ts) >= now - settings.no_repurchase_days * SECONDS_PER_DAY
        out.update(int(i) for i in np.asarray(purchases)[recent])
    return out


def diversify(categories: np.ndarray, scores: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Positions of ``k`` candidates in the order of maximal marginal relevance by category (module docstring).

    ``categories``: each candidate's category code (-1 = none); ``scores``: higher is better. Ties keep the
    input order. ``lam`` in [0, 1]; 0 returns the score order."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"rules.diversity must lie in [0, 1], got {lam}")
    s = np.asarray(scores, np.float64)
    n = len(s)
    k = min(int(k), n)
    if lam == 0.0 or n == 0:
        return np.argsort(-s, kind="stable")[:k].astype(np.int64)
    span = s.max() - s.min()
    rel = (s - s.min()) / span if span > 0 else np.zeros(n)
    cats = np.asarray(categories, np.int64)
    used_cat = np.zeros(int(cats.max()) + 2 if n else 1, bool)       # index code + 1: slot 0 (no category) never set
    free = np.ones(n, bool)
    out = np.empty(k, np.int64)
    for j in range(k):
        gain = (1.0 - lam) * rel - lam * used_cat[cats + 1]
        gain[~free] = -np.inf
        best = int(np.argmax(gain))                                   # the first of equal gains: input order
        out[j] = best
        free[best] = False
        if cats[best] >= 0:
            used_cat[cats[best] + 1] = True
    return out


def select_top_k(ids: np.ndarray, scores: np.ndarray, category_code: np.ndarray, k: int,
                 max_per_category: int, diversity: float = 0.0) -> np.ndarray:
    """Positions (into ``ids``) of the best ``k`` candidates, best first, at most ``max_per_category``
    per category (items without a category, code -1, are not capped). Ties keep the input order.
    ``diversity`` > 0: the capped candidates are re-ranked by ``diversify`` with that lambda."""
    if diversity > 0:
        allowed = select_top_k(ids, scores, category_code, len(ids), max_per_category)
        cats = np.asarray(category_code)[np.asarray(ids)[allowed]]
        return allowed[diversify(cats, np.asarray(scores)[allowed], k, float(diversity))].astype(np.int64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    if max_per_category <= 0:
        return order[:k]
    # Rank of each candidate inside its category, in score order (numpy; no per-candidate Python loop):
    # a candidate stays when fewer than max_per_category better ones share its category.
    cats = np.asarray(category_code)[np.asarray(ids)[order]].astype(np.int64)
    by_cat = np.argsort(cats, kind="stable")  # score order kept inside each category
    sorted_cats = cats[by_cat]
    starts = np.r_[0, np.flatnonzero(sorted_cats[1:] != sorted_cats[:-1]) + 1]
    group_len = np.diff(np.r_[starts, len(cats)])
    rank = np.empty(len(cats), np.int64)
    rank[by_cat] = np.arange(len(cats)) - np.repeat(starts, group_len)
    keep = (cats < 0) | (rank < max_per_category)
    return order[keep][:k].astype(np.int64)


def reason_text(source: str, *, anchor_key: str | None = None, category: str | None = None,
                trending: bool = False, anchor_purchased: bool = False) -> str:
    """The sentence shown next to an item (``anchor_purchased``: the user bought the anchor item)."""
    where = f" in {category}" if category else ""
    if source == "similar" and anchor_key:
        return f"similar to {anchor_key} you {'purchased' if anchor_purchased else 'viewed'}"
    if source == "bought_together" and anchor_key:
        return f"often bought with {anchor_key}"
    if source == "popular_fallback":
        return f"popular{where} right now"
    if trending:
        return f"trending{where}"
    return f"popular{where}"
