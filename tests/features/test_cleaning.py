"""One test per cleaning rule, on small hand-made CSV files through the real entry point (run)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.adapters import DataConfigError
from features.prepare import run
from features.processed import load_events, load_manifest, load_quarantine
from tests.features.conftest import make_cfg

HEADER = "user,item,ts,event,price,quantity,order\n"


def prepare_csv(tmp_path: Path, rows: str, *overrides: str, header: str = HEADER):
    path = tmp_path / "events.csv"
    path.write_text(header + rows)
    cfg = make_cfg(
        "data=events_csv", f"data.path={path}", f"paths.artifacts={tmp_path / 'art'}", "data.name=t",
        "data.columns.user=user", "data.columns.item=item", "data.columns.ts=ts", "data.columns.event=event",
        "+data.columns.price=price", "+data.columns.quantity=quantity", "+data.columns.order_id=order", "force=true",
        *overrides,
    )
    res = run(cfg)
    m = res.manifest
    assert m["n_input_rows"] == m["n_events"] + m["n_quarantined"] + sum(m["n_dropped"].values())
    return res


def test_exact_duplicates_dropped_and_counted(tmp_path):
    rows = ("u1,a,2024-01-01T10:00:00,purchase,1.5,1,o1\n"
            "u1,a,2024-01-01T10:00:00,purchase,1.5,1,o1\n"   # exact duplicate
            "u1,a,2024-01-01T10:00:00,purchase,1.5,2,o1\n")  # differs in quantity: kept
    res = prepare_csv(tmp_path, rows)
    assert res.manifest["n_dropped"]["exact_duplicate"] == 1
    assert res.manifest["n_events"] == 2


def test_exact_duplicates_off(tmp_path):
    rows = "u1,a,2024-01-01T10:00:00,view,,,\n" * 3
    res = prepare_csv(tmp_path, rows, "data.cleaning.exact_duplicates=false")
    assert res.manifest["n_events"] == 3


def test_repeats_within_window(tmp_path):
    rows = ("u1,a,2024-01-01T10:00:00,view,,,\n"
            "u1,a,2024-01-01T10:00:20,view,,,\n"     # 20 s later: a repeat
            "u1,a,2024-01-01T10:05:00,view,,,\n"     # 5 min later: kept
            "u1,a,2024-01-01T10:05:10,purchase,1,1,o\n")  # not a view: rule applies to views only
    res = prepare_csv(tmp_path, rows, "data.cleaning.repeat_window_s=30", "data.cleaning.repeat_events=[view]")
    assert res.manifest["n_dropped"]["repeat_in_window"] == 1
    assert res.manifest["n_events"] == 3


def test_unknown_event_and_bad_time_and_number_quarantined(tmp_path):
    rows = ("u1,a,2024-01-01T10:00:00,teleport,,,\n"
            "u1,a,not-a-time,view,,,\n"
            "u1,a,2024-01-01T10:00:00,purchase,abc,1,o\n"
            "u1,a,2024-01-01T10:00:00,purchase,1.0,1.5,o\n"
            "u1,b,2024-01-01T11:00:00,view,,,\n")
    res = prepare_csv(tmp_path, rows)
    q = load_quarantine(res.out_dir)
    assert sorted(q["reason"]) == ["bad_number", "bad_number", "bad_timestamp", "unknown_event"]
    assert res.manifest["quarantine_by_reason"] == {"bad_number": 2, "bad_timestamp": 1, "unknown_event": 1}
    msg = q.set_index("reason").loc["unknown_event", "message"]
    assert "events.csv row 1" in msg and "teleport" in msg
    assert res.manifest["n_events"] == 1


def test_negative_quantity_is_quarantined_unless_return(tmp_path):
    rows = ("u1,a,2024-01-01T10:00:00,purchase,2.0,-3,o1\n"   # bad
            "u1,a,2024-01-02T10:00:00,return,2.0,-3,o2\n"     # a return: kept, stored positive
            "u1,a,2024-01-03T10:00:00,purchase,-2.0,1,o3\n"   # negative price: bad
            "u1,a,2024-01-04T10:00:00,purchase,2.0,0,o4\n")   # zero quantity: bad by default
    res = prepare_csv(tmp_path, rows)
    q = load_quarantine(res.out_dir)
    assert sorted(q["reason"]) == ["negative_price", "negative_quantity", "zero_quantity"]
    ev = load_events(res.out_dir)
    assert list(ev["event"]) == ["return"] and list(ev["quantity"]) == [3]


def test_return_by_order_prefix(tmp_path):
    rows = "u1,a,2024-01-01T10:00:00,purchase,2.0,2,536365\nu1,a,2024-01-02T10:00:00,purchase,2.0,-2,C536365\n"
    res = prepare_csv(tmp_path, rows, "data.events.return_order_prefix=C")
    assert list(load_events(res.out_dir)["event"]) == ["purchase", "return"]


@pytest.mark.parametrize("policy,n_events,dropped,quarantined", [
    ("drop", 1, {"missing_user": 1}, 0),
    ("quarantine", 1, {}, 1),
])
def test_missing_user_policy(tmp_path, policy, n_events, dropped, quarantined):
    rows = "u1,a,2024-01-01T10:00:00,view,,,\n,a,2024-01-01T10:00:00,view,,,\n"
    res = prepare_csv(tmp_path, rows, f"data.missing.user={policy}")
    m = res.manifest
    assert m["n_events"] == n_events and m["n_quarantined"] == quarantined
    assert {k: v for k, v in m["n_dropped"].items() if v} == dropped


def test_missing_fill_and_null_tokens(tmp_path):
    rows = "u1,a,2024-01-01T10:00:00,purchase,,,o\nu1,b,2024-01-01T10:00:00,purchase,Unknown,2,o\n"
    res = prepare_csv(tmp_path, rows, "+data.missing.quantity={policy: fill, value: 1}", "+data.null_values.price=[Unknown]")
    ev = load_events(res.out_dir).sort_values("item_id")
    assert list(ev["quantity"]) == [1, 2]
    assert ev["price"].isna().all()


def test_keep_policy_rejected_for_user(tmp_path):
    with pytest.raises(DataConfigError, match="data.missing.user"):
        prepare_csv(tmp_path, "u1,a,2024-01-01T10:00:00,view,,,\n", "data.missing.user=keep")


def test_time_zone_local_to_utc(tmp_path):
    # London: GMT in January (UTC+0), BST in July (UTC+1); 01:30 on 31 Mar 2024 does not exist.
    rows = ("u1,a,2024-01-15 10:00:00,view,,,\n"
            "u1,b,2024-07-15 10:00:00,view,,,\n"
            "u1,c,2024-03-31 01:30:00,view,,,\n")
    res = prepare_csv(tmp_path, rows, "data.time.timezone=Europe/London")
    ev = load_events(res.out_dir).sort_values("ts")
    assert list(ev["ts"]) == [pd.Timestamp("2024-01-15 10:00", tz="UTC"), pd.Timestamp("2024-07-15 09:00", tz="UTC")]
    assert list(load_quarantine(res.out_dir)["reason"]) == ["bad_timestamp"]


def test_unix_seconds(tmp_path):
    res = prepare_csv(tmp_path, "u1,a,1511544070,view,,,\n", "data.time.unit=s")
    assert load_events(res.out_dir)["ts"].iloc[0] == pd.Timestamp("2017-11-24 17:21:10", tz="UTC")


def test_bot_filter_drops_user(tmp_path):
    bot = "".join(f"bot,i{i},2024-01-01T10:00:{i:02d},view,,,\n" for i in range(40))
    human = "u1,a,2024-01-01T10:00:00,view,,,\nu1,b,2024-01-01T10:00:30,view,,,\n"
    res = prepare_csv(tmp_path, bot + human, "data.cleaning.max_events_per_minute=30")
    assert res.manifest["n_dropped"]["bot_user"] == 40
    assert res.manifest["n_users"] == 1


def test_outlier_quantity(tmp_path):
    rows = "u1,a,2024-01-01T10:00:00,purchase,1,80995,o\nu1,b,2024-01-01T10:00:00,purchase,1,2,o\n"
    res = prepare_csv(tmp_path, rows, "data.cleaning.max_quantity=10000")
    assert res.manifest["n_dropped"]["outlier_quantity"] == 1


def test_kcore(tmp_path):
    # u1 and u2 share items a,b; u3 has one event on a rare item c: 2-core removes u3.
    rows = "".join(f"{u},{i},2024-01-01T10:0{n}:00,view,,,\n" for n, (u, i) in enumerate(
        [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "c")]))
    res = prepare_csv(tmp_path, rows, "data.cleaning.kcore_users=2", "data.cleaning.kcore_items=2")
    assert res.manifest["n_dropped"]["kcore"] == 1
    assert (res.manifest["n_users"], res.manifest["n_items"]) == (2, 2)


def test_excluded_items(tmp_path):
    rows = "u1,POST,2024-01-01T10:00:00,purchase,1,1,o\nu1,b,2024-01-01T10:00:00,purchase,1,2,o\n"
    res = prepare_csv(tmp_path, rows, "data.cleaning.exclude_items=[POST]")
    assert res.manifest["n_dropped"]["excluded_item"] == 1


def test_overlap_between_files(tmp_path):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("user,item,ts,order\nu1,x,2024-01-01T10:00:00,o1\nu1,x,2024-01-01T10:00:00,o1\nu1,y,2024-01-02T10:00:00,o2\n")
    b.write_text("user,item,ts,order\nu1,y,2024-01-02T10:00:00,o2\nu2,z,2024-01-03T10:00:00,o3\n")
    cfg = make_cfg("data=events_csv", f"paths.artifacts={tmp_path / 'art'}", "data.name=t",
                   f"data.files=[{{path: {a}}}, {{path: {b}}}]", "data.columns.event=null",
                   "data.columns.user=user", "data.columns.item=item", "data.columns.ts=ts", "+data.columns.order_id=order",
                   "data.cleaning.overlap_key=[order_id,item,ts]")
    m = run(cfg).manifest
    # the repeated line inside a.csv is an exact duplicate; y/o2 of b.csv is the overlap
    assert m["n_dropped"] == {"exact_duplicate": 1, "overlap_duplicate": 1}
    assert m["n_events"] == 3
