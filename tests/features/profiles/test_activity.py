"""Active hour / weekday, preferred channel, browsing counts."""
from __future__ import annotations

import pandas as pd

from features.profiles.activity import active_times, browsing_counts, preferred_channel, user_timezones


def _ev(rows, cols=("user_id", "item_id", "event", "ts")):
    ev = pd.DataFrame(rows, columns=list(cols))
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True, format="ISO8601")
    return ev


EV = _ev([(0, 0, "view", "2024-03-04 09:10"), (0, 1, "view", "2024-03-11 09:50"), (0, 1, "purchase", "2024-03-06 20:00"),
          (1, 1, "view", "2024-03-09 23:30")])
ITEMS = pd.DataFrame({"item_id": [0, 1], "category": ["a", "b"]})


def test_active_hour_and_day():
    out = active_times(EV, pd.Index([0, 1]), {"timezone": "UTC"}, "timestamp")
    assert out.loc[0, "active_hour"] == 9 and out.loc[0, "active_dow"] == 0      # two Monday-morning events
    assert out.loc[1, "active_hour"] == 23 and out.loc[1, "active_dow"] == 5
    local = active_times(EV, pd.Index([1]), {"timezone": "Asia/Shanghai"}, "timestamp")
    assert local.loc[1, "active_hour"] == 7 and local.loc[1, "active_dow"] == 6


def test_order_only_time_gives_null():
    out = active_times(EV, pd.Index([0, 1]), {"timezone": "UTC"}, "order")
    assert out["active_hour"].isna().all() and out["active_dow"].isna().all()


def test_preferred_channel_only_when_known():
    users = pd.DataFrame({"user_id": [0, 1]})
    assert preferred_channel(EV, users, pd.Index([0, 1])).isna().all()
    with_channel = EV.assign(channel=["app", "web", "app", None])
    got = preferred_channel(with_channel, users, pd.Index([0, 1]))
    assert got.loc[0] == "app" and pd.isna(got.loc[1])


def test_browsing_counts():
    out = browsing_counts(EV, ITEMS, pd.Index([0, 1, 2]), ["purchase"])
    assert out.loc[0, ["n_events", "n_views", "n_purchase_lines", "n_items", "n_categories"]].tolist() == [3, 2, 1, 2, 2]
    assert out.loc[0, "view_to_purchase"] == 2.0 and out.loc[1, "view_to_purchase"] == 1.0
    assert out.loc[2, "n_events"] == 0


def test_unknown_time_zone_is_named():
    import pytest

    with pytest.raises(ValueError, match="profile.activity.timezone"):
        active_times(EV, pd.Index([0]), {"timezone": "Mars/Olympus"}, "timestamp")


def test_local_active_hour_per_user_zone():
    """Both users are active at 23:30 / 09:xx UTC; read in their own zones the hours differ."""
    users = pd.DataFrame({"user_id": [0, 1], "country": ["Japan", "Atlantis"]})
    cfg = {"timezone": "Europe/London", "country_timezones": {"Japan": "Asia/Tokyo", "Germany": "Europe/Berlin"}}
    zones = user_timezones(users, pd.Index([0, 1]), cfg)
    assert zones.tolist() == ["Asia/Tokyo", "Europe/London"]          # unknown country -> default zone
    out = active_times(EV, pd.Index([0, 1]), cfg, "timestamp", zones)
    assert out.loc[0, "active_hour"] == 18 and out.loc[0, "active_dow"] == 0    # 09:xx UTC = 18:xx JST, Monday
    assert out.loc[1, "active_hour"] == 23 and out.loc[1, "active_dow"] == 5    # London = UTC in March before BST


def test_unknown_zone_in_country_table_is_named():
    import pytest

    users = pd.DataFrame({"user_id": [0], "country": ["Japan"]})
    with pytest.raises(ValueError, match=r"profile.activity.country_timezones.Japan.*Asia/Tokio"):
        user_timezones(users, pd.Index([0]), {"timezone": "UTC", "country_timezones": {"Japan": "Asia/Tokio"}})


def test_no_country_column_means_default_zone():
    zones = user_timezones(pd.DataFrame({"user_id": [0, 1]}), pd.Index([0, 1]),
                           {"timezone": "Asia/Shanghai", "country_timezones": {"Japan": "Asia/Tokyo"}})
    assert zones.tolist() == ["Asia/Shanghai"] * 2
