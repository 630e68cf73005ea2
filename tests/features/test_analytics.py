"""Behaviour analytics on hand-made events: steps reconcile, funnels, abandonment, durations, repeat
purchases, paths, and the live recommendation funnel from hand-written service logs."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from features.analytics import funnels as fn
from features.analytics.live import live_funnel

T0 = pd.Timestamp("2024-03-01 10:00", tz="UTC")
MIN, H, D = pd.Timedelta(minutes=1), pd.Timedelta(hours=1), pd.Timedelta(days=1)
MAPPING = fn.step_map({"view": ["view", "click"], "cart": ["cart"], "purchase": ["purchase"]})


def _events() -> pd.DataFrame:
    rows = [  # user, item, event, ts, order_id
        (1, "A", "view", T0, None), (1, "A", "view", T0 + 10 * MIN, None), (1, "A", "cart", T0 + 20 * MIN, None),
        (1, "A", "purchase", T0 + 30 * MIN, "o1"), (1, "B", "fav", T0 + 40 * MIN, None),
        (2, "B", "view", T0, None), (2, "B", "purchase", T0 + 15 * MIN, None), (2, "B", "return", T0 + D, None),
        (3, "C", "cart", T0, None), (3, "C", "view", T0 + 5 * MIN, None),           # cart before its first view
        (4, "D", "purchase", T0, "o2"), (4, "D", "purchase", T0 + 2 * D, "o3"),
        (5, "E", "click", T0, None),
    ]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts", "order_id"])
    ev["step"] = fn.assign_steps(ev["event"], MAPPING)
    return ev


def test_every_event_is_in_exactly_one_step():
    ev = _events()
    counts = fn.step_counts(ev["step"])
    assert counts == {"view": 5, "cart": 2, "purchase": 4, "other:fav": 1, "other:return": 1}
    type_counts = ev["event"].value_counts().to_dict()
    fn.reconcile(counts, len(ev), type_counts, MAPPING)   # consistent: no error
    with pytest.raises(fn.ReconciliationError, match="step 'view': 5 events counted but the events hold 4"):
        fn.reconcile(counts, len(ev), {**type_counts, "click": 0, "return": 2}, MAPPING)
    with pytest.raises(fn.ReconciliationError, match="13 events"):
        fn.reconcile({**counts, "cart": 1}, len(ev), type_counts, MAPPING)


def test_a_breakdown_that_drops_events_is_caught():
    ev = _events()
    counts = fn.step_counts(ev["step"])
    ev["category"] = ev["item_id"].map({"A": "x", "B": "x", "C": "y"})   # D and E have none
    with pytest.raises(fn.ReconciliationError, match="breakdown by category"):
        fn.check_breakdown("category", fn.ordered_funnel(ev, ["user_id"], ["category"]), counts)
    ev["category"] = ev["category"].fillna("(no category)")
    fn.check_breakdown("category", fn.ordered_funnel(ev, ["user_id"], ["category"]), counts)


def test_step_map_refuses_a_type_in_two_steps():
    with pytest.raises(ValueError, match="'click' is in two steps"):
        fn.step_map({"view": ["click"], "cart": ["click"]})
    with pytest.raises(ValueError, match="unknown step 'checkout'"):
        fn.step_map({"checkout": ["purchase"]})


def test_ordered_funnel_counts_units_in_order():
    ev = _events()
    row = fn.ordered_funnel(ev, ["user_id"]).iloc[0]
    assert (row["units"], row["viewed"], row["carted_after_view"], row["purchased_after_cart"]) == (5, 4, 1, 1)
    assert (row["purchased_after_view"], row["with_cart"], row["with_purchase"]) == (2, 2, 3)
    assert (row["view_to_cart"], row["cart_to_purchase"], row["view_to_purchase"]) == (0.25, 1.0, 0.5)
    ev["day"] = ev["ts"].dt.strftime("%Y-%m-%d")
    by_day = fn.ordered_funnel(ev, ["user_id"], ["day"]).set_index("day")
    assert by_day.loc["2024-03-02", "events_other:return"] == 1 and by_day.loc["2024-03-02", "units"] == 0
    assert by_day.loc["2024-03-03", "with_purchase"] == 1 and by_day["events_purchase"].sum() == 4


def test_abandonment_durations_and_repeat_purchases():
    ev = _events()
    ab = fn.cart_abandonment(ev)
    assert (ab["carted_pairs"], ab["abandoned_pairs"], ab["abandonment_rate_pairs"]) == (2, 1, 0.5)
    assert (ab["carted_users"], ab["abandoned_users"]) == (2, 1)
    hours = fn.view_to_purchase_hours(ev).sort_values().tolist()
    assert hours == [0.25, 0.5]
    fig, dist, gap = fn.repeat_purchases(ev)
    assert (fig["buyers"], fig["repeat_buyers"], fig["occasions"]) == (3, 1, 4)
    assert fig["repeat_purchase_rate"] == round(1 / 3, 6) and fig["item_repeat_rate"] == round(1 / 3, 6)
    assert gap.tolist() == [48.0] and dist.to_dict() == {1: 2, 2: 1}


def test_paths_collapse_repeats_within_a_session():
    ev = _events().sort_values(["user_id", "ts"], kind="stable")
    paths = fn.purchase_paths(ev, gap_min=30, length=4).set_index("path")["checkouts"].to_dict()
    assert paths == {"start > purchase": 2, "start > view > cart > purchase": 1, "start > view > purchase": 1}
    short = fn.purchase_paths(ev, gap_min=30, length=1).set_index("path")["checkouts"].to_dict()
    assert short["… > cart > purchase"] == 1


def _write_service_logs(tmp_path):
    t = "2024-03-01T10:00:0{}+00:00"
    lines = ["user_key,item_key,event,ts,received_at,event_id",
             f"00000000000000a1,A,click,{t.format(1)},{t.format(1)},e1",
             f"00000000000000a1,A,purchase,{t.format(5)},{t.format(5)},e2",
             f"00000000000000a2,B,click,{t.format(2)},{t.format(2)},e3",
             f"00000000000000a2,C,view,{t.format(3)},{t.format(3)},e4",
             f"00000000000000a3,D,purchase,{t.format(4)},{t.format(4)},e5",
             f"00000000000000a3,D,click,{t.format(4)},{t.format(4)},e6",
             "garbage,only",
             "a,b,c,d,e,f,g,h"]
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    logs = tmp_path / "experiments"
    logs.mkdir()
    exp = [{"request_id": "r1", "user_key": "00000000000000a1", "unit": "00000000000000a1", "experiment": "home",
            "variant": "control", "bundle": "b", "items": ["A", "B", "C"], "ts": t.format(0)},
           {"request_id": "r2", "user_key": "00000000000000a2", "unit": "00000000000000a2", "experiment": "home",
            "variant": "treatment", "bundle": "b", "items": ["B", "B2", "C"], "ts": t.format(0)},
           {"request_id": "r3", "user_key": "00000000000000a3", "unit": "00000000000000a3", "experiment": "home",
            "variant": "control", "bundle": "b", "items": ["X"], "ts": t.format(0)}]
    (logs / "exposures.jsonl").write_text("\n".join(json.dumps(e) for e in exp) + "\nnot json\n")
    att = [("e1", "r1", 0), ("e2", "r1", 0), ("e3", "r2", 1), ("e4", "r2", 2), ("e6", "r9", 0)]
    (logs / "attributions.jsonl").write_text(
        "\n".join(json.dumps({"event_id": e, "request_id": r, "position": p}) for e, r, p in att) + "\n{bad\n")
    return tmp_path / "events.csv", logs


def test_live_funnel_from_service_logs(tmp_path):
    event_log, logs = _write_service_logs(tmp_path)
    live = live_funnel(event_log, logs)
    f = live.summary["funnel"]
    assert (f["responses"], f["impressions"], f["users"]) == (3, 7, 3)
    assert (f["clicked_responses"], f["clicked_impressions"], f["clicked_users"]) == (2, 2, 2)
    assert (f["purchased_responses"], f["purchased_users"], f["purchased_after_click_responses"]) == (1, 1, 1)
    assert f["ctr"] == round(2 / 7, 6) and f["click_to_purchase"] == 0.5
    assert live.summary["events_by_bucket"] == {"attributed_click": 2, "attributed_purchase": 1, "attributed_other": 1,
                                                "attributed_unknown_response": 1, "unattributed": 1, "malformed": 2}
    assert live.summary["event_log_lines"] == 8
    assert (live.summary["malformed_exposure_lines"], live.summary["malformed_attribution_lines"]) == (1, 1)
    v = live.by_variant.set_index("variant")
    assert v.loc["control", "responses"] == 2 and v.loc["treatment", "clicked_impressions"] == 1


def test_live_funnel_without_exposures_says_so(tmp_path):
    event_log, _ = _write_service_logs(tmp_path)
    live = live_funnel(event_log, tmp_path / "nowhere")
    assert live.summary["funnel"]["responses"] == 0 and "no exposure log" in live.notes[0]
    assert live.summary["events_by_bucket"]["unattributed"] == 6


def test_live_funnel_refuses_a_file_that_is_not_the_event_log(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="is not the event log's"):
        live_funnel(tmp_path / "x.csv", tmp_path)
