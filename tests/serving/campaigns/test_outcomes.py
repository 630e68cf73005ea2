"""Outcomes from events: each audience user's response, conversion and revenue in the attribution
window after *their own* send_at, treatment and control alike."""
from __future__ import annotations

import pandas as pd
import pytest

from serving.campaigns.outcomes import outcomes_from_events


def _ts(s):
    return pd.Timestamp(s, tz="UTC")


@pytest.fixture()
def log():
    users = pd.DataFrame({"user_id": [0, 1, 2, 3], "user_key": ["ka", "kb", "kc", "kd"]})
    rows = [  # user, item, event, ts, price, quantity
        (0, 1, "purchase", "2011-09-01 09:00", 5.0, 2),    # before a's send_at: not counted
        (0, 1, "purchase", "2011-09-03 10:00", 5.0, 2),    # in a's window: 10.0
        (0, 2, "purchase", "2011-09-20 10:00", 1.5, 4),    # in a's window: 6.0
        (0, 2, "purchase", "2011-10-15 10:00", 100.0, 1),  # after a's 30-day window: retained only
        (1, 3, "return", "2011-09-05 10:00", 7.0, 1),      # b responded (an event) but did not convert
        (2, 3, "purchase", "2011-09-02 08:59", 9.0, 1),    # c's send_at is 09:00: one minute early
        (2, 3, "purchase", "2011-10-02 09:00", 9.0, 1),    # exactly 30 days after: outside [s, s+30d)
        (3, 3, "purchase", "2011-09-02 12:00", 3.0, 1),    # d is not in the audience
    ]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts", "price", "quantity"])
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    return ev, users


def test_outcomes_in_each_users_window(log, campaign):
    ev, users = log
    audience = pd.DataFrame({"user_key": ["ka", "kb", "kc", "kz"], "group": ["treatment", "control", "control", "treatment"],
                             "send_at": [_ts("2011-09-02 10:00"), _ts("2011-09-02 10:00"), _ts("2011-09-02 09:00"),
                                         _ts("2011-09-02 10:00")]})
    c = campaign.replace(objective={"within_days": 30}, evaluation={"retention_days": 60, "attribution_days": None})
    out = outcomes_from_events(audience, ev, users, c)
    o = out.frame.set_index("user_key")
    assert o.loc["ka"].tolist() == [1, 1, pytest.approx(16.0), 1]
    assert o.loc["kb"].tolist() == [1, 0, 0.0, 1]
    assert o.loc["kc"].tolist() == [0, 0, 0.0, 1]          # one minute early, and exactly 30 days: retention only
    assert o.loc["kz"].tolist() == [0, 0, 0.0, 0]          # unknown to the events: no outcome
    assert out.source == "events" and out.info["audience_users_unknown_to_events"] == 1
    assert list(out.frame["user_key"]) == ["ka", "kb", "kc", "kz"]


def test_attribution_window_setting_and_incomplete_windows(log, campaign):
    ev, users = log
    audience = pd.DataFrame({"user_key": ["ka"], "group": ["treatment"], "send_at": [_ts("2011-09-02 10:00")]})
    c = campaign.replace(evaluation={"attribution_days": 5})
    o = outcomes_from_events(audience, ev, users, c).frame.iloc[0]
    assert o["converted"] == 1 and o["revenue"] == pytest.approx(10.0)   # the 2011-09-20 purchase is outside 5 days
    late = audience.assign(send_at=[_ts("2011-10-10 10:00")])
    info = outcomes_from_events(late, ev, users, c).info
    assert info["users_with_incomplete_window"] == 1                     # the data ends before its window does
