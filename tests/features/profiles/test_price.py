"""Price sensitivity proxy."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.profiles.price import price_sensitivity

CFG = {"tolerance": 0.02, "min_item_lines": 3}
ITEMS = pd.DataFrame({"item_id": [0, 1], "category": ["a", "a"]})


def _p(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "price"])


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
