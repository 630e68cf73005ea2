"""serving.rules: availability/context mask, no-repurchase window, category cap, reasons."""
from __future__ import annotations

import numpy as np

from serving.rules import RuleSettings, allowed_mask, blocked_items, reason_text, select_top_k


def test_allowed_mask_context_and_unknown_prices():
    available = np.array([True, True, False, True])
    cat = np.array([0, 1, 0, 0])
    price = np.array([5.0, 10.0, 5.0, np.nan])
    assert allowed_mask(available, cat, price).tolist() == [True, True, False, True]
    assert allowed_mask(available, cat, price, category=0).tolist() == [True, False, False, True]
    assert allowed_mask(available, cat, price, price_min=6).tolist() == [False, True, False, False]
    assert allowed_mask(available, cat, price, category=-2).sum() == 0


def test_blocked_items_window():
    now = 1_000_000.0
    s = RuleSettings(no_repurchase_days=30, max_per_category=3)
    blocked = blocked_items(purchases=np.array([1, 2]), purchase_ts=np.array([now - 86400 * 31, now - 86400 * 29]),
                            now=now, settings=s, exclude=[7], seen=[9])
    assert blocked == {2, 7, 9}
    assert blocked_items(purchases=np.array([2]), purchase_ts=np.array([now]), now=now,
                         settings=RuleSettings(no_repurchase_days=0)) == set()


def test_select_top_k_caps_categories():
    ids = np.arange(6)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    cat = np.array([0, 0, 0, 1, -1, -1])
    assert select_top_k(ids, scores, cat, 4, max_per_category=2).tolist() == [0, 1, 3, 4]
    assert select_top_k(ids, scores, cat, 4, max_per_category=0).tolist() == [0, 1, 2, 3]
    assert select_top_k(ids, scores, cat, 10, max_per_category=1).tolist() == [0, 3, 4, 5]


def test_reason_texts():
    assert reason_text("similar", anchor_key="X") == "similar to X you viewed"
    assert reason_text("bought_together", anchor_key="Y") == "often bought with Y"
    assert reason_text("popular", category="toys") == "popular in toys"
    assert reason_text("popular", category="toys", trending=True) == "trending in toys"


def _select_top_k_reference(ids, scores, category_code, k, cap):
    """The rule written as a loop: best first, skip a category once it has ``cap`` items."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    counts, picked = {}, []
    for pos in order:
        c = int(category_code[ids[pos]])
        if c >= 0 and cap > 0:
            if counts.get(c, 0) >= cap:
                continue
            counts[c] = counts.get(c, 0) + 1
        picked.append(int(pos))
        if len(picked) == k:
            break
    return picked


def test_select_top_k_equals_the_loop_on_random_pools():
    rng = np.random.default_rng(7)
    for trial in range(300):
        n = int(rng.integers(0, 60))
        cat = rng.integers(-1, 6, 80)
        ids = rng.choice(80, size=n, replace=False)
        scores = rng.integers(0, 5, n).astype(float) if trial % 2 else rng.random(n)  # ties too
        k, cap = int(rng.integers(1, 20)), int(rng.integers(0, 4))
        assert select_top_k(ids, scores, cat, k, cap).tolist() == _select_top_k_reference(ids, scores, cat, k, cap)
