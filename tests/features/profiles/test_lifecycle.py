"""Lifecycle stages at a snapshot and flows between two snapshots."""
from __future__ import annotations

import pandas as pd
import pytest

from features.profiles.lifecycle import STAGES, activity_span, check_windows, lifecycle_flows, stages

LC = {"activity": "purchase", "new_days": 30, "active_days": 90, "at_risk_days": 180, "dormant_days": 365}
SNAP = pd.Timestamp("2024-12-31", tz="UTC")


def _ev(rows):
    ev = pd.DataFrame(rows, columns=["user_id", "event", "ts"])
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True, format="ISO8601")
    return ev


def test_stages_follow_the_windows():
    days_ago = {0: (10, 10), 1: (400, 60), 2: (400, 120), 3: (400, 300), 4: (800, 500), 5: (91, 91)}
    span = pd.DataFrame({"first": [SNAP - pd.Timedelta(days=a) for a, _ in days_ago.values()],
                         "last": [SNAP - pd.Timedelta(days=b) for _, b in days_ago.values()]}, index=list(days_ago))
    got = stages(span, SNAP, LC).to_dict()
    assert got == {0: "new", 1: "active", 2: "at_risk", 3: "dormant", 4: "churned", 5: "at_risk"}


def test_purchase_activity_uses_last_purchase_and_first_event():
    ev = _ev([(0, "view", "2024-01-01"), (0, "purchase", "2024-03-01"), (0, "view", "2024-12-30"),
              (1, "view", "2024-12-20")])
    span = activity_span(ev, SNAP, LC, ["purchase"])
    assert span.loc[0, "first"] == pd.Timestamp("2024-01-01", tz="UTC")
    assert span.loc[0, "last"] == pd.Timestamp("2024-03-01", tz="UTC")      # views do not keep a buyer active
    assert span.loc[1, "last"] == pd.Timestamp("2024-12-20", tz="UTC")      # never bought: last event
    assert stages(span, SNAP, LC).to_dict() == {0: "dormant", 1: "new"}
    span_any = activity_span(ev, SNAP, {**LC, "activity": "any"}, ["purchase"])
    assert stages(span_any, SNAP, {**LC, "activity": "any"}).loc[0] == "active"


@pytest.mark.parametrize("bad,field", [({"active_days": 0}, "every window"), ({"at_risk_days": 50}, "must satisfy"),
                                       ({"activity": "clicks"}, "activity")])
def test_bad_windows_are_named(bad, field):
    with pytest.raises(ValueError, match=field):
        check_windows({**LC, **bad})


def test_flows_count_every_user_once():
    ev = _ev([(0, "purchase", "2024-01-05"), (0, "purchase", "2024-12-01"),   # at_risk (162 d) -> active
              (1, "purchase", "2024-06-01"),                                  # new (14 d) -> dormant (213 d)
              (2, "purchase", "2024-12-20")])                                 # not seen -> new
    start = pd.Timestamp("2024-06-15", tz="UTC")
    flows = lifecycle_flows(ev, start, SNAP, LC, ["purchase"])
    assert flows["n_users"].sum() == 3
    pairs = {(r.from_stage, r.to_stage): r.n_users for r in flows.itertuples()}
    assert pairs == {("at_risk", "active"): 1, ("new", "dormant"): 1, ("not_seen", "new"): 1}
    assert set(flows["to_stage"]) <= set(STAGES)
    assert flows.groupby("from_stage")["share_of_from"].sum().round(6).eq(1).all()
    with pytest.raises(ValueError, match="flows_from"):
        lifecycle_flows(ev, SNAP, start, LC, ["purchase"])
