"""Price sensitivity proxy."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.profiles.price import price_sensitivity

CFG = {"tolerance": 0.02, "min_item_lines": 3, "quantity_tiers": []}
ITEMS = pd.DataFrame({"item_id": [0, 1], "category": ["a", "a"]})


def _p(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "price", "quantity"][: len(rows[0])])
    return frame if "quantity" in frame.columns else frame.assign(quantity=1)


def test_share_below_item_median():
    # item 0 sells at 10 (3 lines) and 7 (1 line): median 10. User 1 always pays 7 -> 1.0; user 0 -> 0.
    p = _p([(0, 0, 10.0), (0, 0, 10.0), (2, 0, 10.0), (1, 0, 7.0), (2, 0, 9.95)])
    out = price_sensitivity(pd.Index([0, 1, 2, 3]), p, ITEMS, CFG)
    assert out.loc[0, "price_sensitivity"] == 0.0
    assert out.loc[1, "price_sensitivity"] == 1.0
    assert out.loc[2, "price_sensitivity"] == 0.0          # 9.95 is within the 2 % tolerance
    assert np.isnan(out.loc[3, "price_sensitivity"]) and out.loc[3, "n_priced_lines"] == 0


def test_rare_items_use_the_category_median():
    p = _p([(0, 0, 10.0), (0, 0, 10.0), (0, 0, 10.0), (1, 1, 5.0)])   # item 1 has one line: category median 10
    out = price_sensitivity(pd.Index([0, 1]), p, ITEMS, CFG)
    assert out.loc[1, "price_sensitivity"] == 1.0


def test_no_prices_gives_null():
    p = _p([(0, 0, np.nan)])
    out = price_sensitivity(pd.Index([0]), p, ITEMS, CFG)
    assert out["price_sensitivity"].isna().all()


def test_bad_tolerance_is_named():
    with pytest.raises(ValueError, match="profile.price.tolerance"):
        price_sensitivity(pd.Index([0]), _p([(0, 0, 1.0)]), ITEMS, {**CFG, "tolerance": 1.5})


def test_bulk_prices_are_compared_within_their_quantity_tier():
    # Item 0: 10 a piece singly, 6 a piece by the dozen. User 0 buys dozens at 6 (the usual bulk price):
    # not price-sensitive. User 1 buys single pieces at 8: below the single-piece price.
    rows = [(2, 0, 10.0, 1)] * 3 + [(0, 0, 6.0, 12)] * 3 + [(1, 0, 8.0, 1)]
    tiered = price_sensitivity(pd.Index([0, 1]), _p(rows), ITEMS, {**CFG, "quantity_tiers": [1, 12]})
    assert tiered.loc[0, "price_sensitivity"] == 0.0 and tiered.loc[1, "price_sensitivity"] == 1.0
    flat = price_sensitivity(pd.Index([0, 1]), _p(rows), ITEMS, CFG)
    assert flat.loc[0, "price_sensitivity"] == 1.0     # without tiers bulk buying looks like bargain hunting
