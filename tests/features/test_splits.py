"""Leave-one-out and temporal splits."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.adapters import DataConfigError
from features.splits import loo_split, next_baskets, shop_targets, temporal_split


def events(rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df["src_row"] = np.arange(len(df))
    return df.sort_values(["user_id", "ts", "src_row"], kind="stable").reset_index(drop=True)


def test_loo_last_is_test_second_last_is_valid():
    ev = events([(0, i, "view", f"2024-01-0{i + 1}") for i in range(5)] + [(1, 9, "view", "2024-01-01")])
    sp = loo_split(ev)
    f = sp.frames(ev)
    assert list(f["test"]["item_id"]) == [4] and list(f["valid"]["item_id"]) == [3]
    # user 1 has < 3 events: everything in train
    assert sorted(f["train"]["item_id"]) == [0, 1, 2, 9]
    assert sp.counts() == {"train": 4, "valid": 1, "test": 1, "excluded": 0}


def test_loo_equal_timestamps_use_src_row():
    ev = events([(0, i, "purchase", "2024-01-01") for i in range(4)])
    f = loo_split(ev).frames(ev)
    assert list(f["test"]["item_id"]) == [3] and list(f["valid"]["item_id"]) == [2]


def test_loo_target_events_skip_returns():
    ev = events([(0, 1, "purchase", "2024-01-01"), (0, 2, "purchase", "2024-01-02"), (0, 3, "view", "2024-01-03"),
                 (0, 4, "purchase", "2024-01-04"), (0, 5, "purchase", "2024-01-05"), (0, 5, "return", "2024-01-06")])
    sp = loo_split(ev, ["purchase"])
    f = sp.frames(ev)
    assert list(f["test"]["item_id"]) == [5] and list(f["test"]["event"]) == ["purchase"]
    assert list(f["valid"]["item_id"]) == [4]
    assert list(f["train"]["item_id"]) == [1, 2, 3]   # every event type before the valid one
    assert sp.n_excluded == 1                          # the return after the valid purchase


def test_temporal():
    ev = events([(0, 1, "view", "2024-01-01"), (0, 2, "view", "2024-02-15"), (1, 3, "view", "2024-03-05")])
    f = temporal_split(ev, "2024-02-01", "2024-03-01").frames(ev)
    assert [list(f[p]["item_id"]) for p in ("train", "valid", "test")] == [[1], [2], [3]]
    with pytest.raises(DataConfigError, match="valid_start"):
        temporal_split(ev, "2024-03-01", "2024-02-01")


def orders(rows):
    """Events with an order id: (user, item, event, ts, order_id)."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts", "order_id"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df["src_row"] = np.arange(len(df))
    return df


def test_next_basket_is_the_first_order_purchases_only():
    period = orders([
        (0, 5, "purchase", "2024-02-03 10:00", "B2"),   # the second basket of user 0
        (0, 1, "purchase", "2024-02-01 09:00", "A1"),
        (0, 2, "purchase", "2024-02-01 09:00", "A1"),
        (0, 2, "return", "2024-02-01 12:00", "CA1"),    # a return: never a target
        (0, 3, "view", "2024-02-01 08:00", None),       # a view before the basket: not a target either
        (1, 7, "return", "2024-02-02 10:00", "C9"),     # user 1 only returned something: no target
    ])
    t = next_baskets(period)
    assert sorted(t["item_id"]) == [1, 2] and set(t["event"]) == {"purchase"} and set(t["user_id"]) == {0}
    assert sorted(next_baskets(period, baskets=2)["item_id"]) == [1, 2, 5]
    with pytest.raises(ValueError, match="baskets"):
        next_baskets(period, baskets=0)


def test_next_basket_without_order_ids_is_a_calendar_day():
    period = orders([(0, 1, "purchase", "2024-02-01 09:00", None), (0, 2, "purchase", "2024-02-01 23:00", None),
                     (0, 3, "purchase", "2024-02-02 01:00", None), (0, 4, "cart", "2024-02-01 09:30", None)])
    assert sorted(next_baskets(period)["item_id"]) == [1, 2]


def test_shop_targets_only_for_users_with_a_history():
    history = orders([(0, 9, "purchase", "2024-01-01", "H")])
    period = orders([(0, 1, "purchase", "2024-02-01", "A"), (1, 2, "purchase", "2024-02-01", "B")])
    assert shop_targets(history, period)["user_id"].tolist() == [0]
