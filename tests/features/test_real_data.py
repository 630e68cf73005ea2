"""End-to-end preparation of the real datasets: published counts, reconciliation, splits."""
from __future__ import annotations

import pandas as pd
import pytest

from features.processed import load_events, load_items, load_manifest, load_split, load_users

pytestmark = pytest.mark.slow


def reconciled(m: dict) -> bool:
    return m["n_input_rows"] == m["n_events"] + m["n_quarantined"] + sum(m["n_dropped"].values())


@pytest.mark.parametrize("name,users,items,events", [
    ("amazon_toys", 19412, 11924, 167597),
])
def test_amazon_counts_equal_published(prepare_real, name, users, items, events):
    res = prepare_real(name)
    m = res.manifest
    assert (m["n_users"], m["n_items"], m["n_events"]) == (users, items, events)
    assert reconciled(m) and m["time_kind"] == "order"
    it = load_items(res.out_dir)
    assert it["attributes"].map(len).gt(0).mean() > 0.99
    assert it["category"].notna().mean() > 0.9
    # leave-one-out: one test and one valid event per user (every user has >= 5 items)
    test = load_split(res.out_dir, "loo", "test")
    valid = load_split(res.out_dir, "loo", "valid")
    train = load_split(res.out_dir, "loo", "train")
    assert len(test) == len(valid) == users
    assert len(train) + len(valid) + len(test) == events
    # the S3-Rec protocol: the test item is the last item of the user's line
    ev = load_events(res.out_dir)
    last = ev.groupby("user_id").tail(1).set_index("user_id")["item_id"]
    assert (test.set_index("user_id")["item_id"] == last.loc[test["user_id"]].to_numpy()).all()
    assert m["splits"].keys() == {"loo"}
    with pytest.raises(ValueError, match="temporal"):
        load_split(res.out_dir, "temporal", "train")


def test_online_retail(prepare_real, data_root):
    res = prepare_real("online_retail")
    m = res.manifest
    assert reconciled(m)
    raw1 = pd.read_parquet(data_root / "online-retail/online_retail_2010_2011.parquet")
    raw2 = pd.read_parquet(data_root / "online-retail/online_retail_II_2009_2010.parquet")
    assert m["n_input_rows"] == len(raw1) + len(raw2) == 1_067_370
    # published per-file figures (SOURCES.md): rows, invoices, stock codes, customers
    st = m["input_stats"]
    assert st["online_retail_2010_2011.parquet"] == {"rows": 541909, "distinct_orders": 25900,
                                                     "distinct_items": 4070, "distinct_users": 4372}
    assert st["online_retail_II_2009_2010.parquet"] == {"rows": 525461, "distinct_orders": 28816,
                                                        "distinct_items": 4632, "distinct_users": 4383}
    # the 1-9 Dec 2010 overlap is removed once, never counted twice
    assert m["n_dropped"]["overlap_duplicate"] > 10_000
    users = load_users(res.out_dir)
    # every customer with at least one valid product line is a user; ids never in clear text
    cust = pd.concat([raw1["CustomerID"], raw2["Customer ID"]]).dropna().astype(int).astype(str)
    assert len(users) <= cust.nunique() and len(users) > 5800
    assert not users["user_key"].isin(set(cust)).any()
    ev = load_events(res.out_dir)
    assert set(ev["event"].unique()) == {"purchase", "return"}
    assert (ev["quantity"] > 0).all()
    assert str(ev["ts"].dt.tz) == "UTC"
    # UK local time -> UTC: GMT in winter (first invoice 07:45 local = 07:45 UTC), BST in summer (-1 h)
    assert ev["ts"].min() == pd.Timestamp("2009-12-01 07:45", tz="UTC")
    # invoice 558638: 2011-07-01 08:16 London summer time
    assert set(ev.loc[ev["order_id"] == "558638", "ts"]) == {pd.Timestamp("2011-07-01 07:16", tz="UTC")}
    orders = ev.loc[ev["event"] == "purchase", "order_id"]
    assert not orders.str.startswith("C").any()
    assert ev.loc[ev["event"] == "return", "order_id"].str.startswith("C").all()
    q = pd.read_parquet(res.out_dir / "quarantine.parquet")
    assert set(q["reason"]) >= {"negative_quantity"}
    assert m["quarantine_by_reason"]["negative_quantity"] == (q["reason"] == "negative_quantity").sum()
    items = load_items(res.out_dir)
    assert not items["item_key"].isin(["POST", "DOT", "M"]).any()
    assert items["title"].notna().mean() > 0.99
    assert m["splits"]["temporal"]["test"] > 0 and m["splits"]["loo"]["test"] > 5000
    test = load_split(res.out_dir, "temporal", "test")
    assert test["ts"].min() >= pd.Timestamp("2011-11-09", tz="UTC")
    loo_test = load_split(res.out_dir, "loo", "test")
    assert (loo_test["event"] == "purchase").all()
    assert load_manifest(res.out_dir)["fingerprint"] == m["fingerprint"]


def test_amazon_sports_counts(prepare_real):
    m = prepare_real("amazon_sports").manifest
    assert (m["n_users"], m["n_items"], m["n_events"]) == (35598, 18357, 296337) and reconciled(m)


def test_taobao_truncated_line_quarantined_and_deterministic(prepare_real, prepared_root, data_root):
    res = prepare_real("taobao")
    m = res.manifest
    assert m["n_input_rows"] == 84476 and reconciled(m)
    assert m["quarantine_by_reason"] == {"malformed_row": 1}
    q = pd.read_parquet(res.out_dir / "quarantine.parquet")
    assert q["src_row"].tolist() == [84475] and "row 84476" in q["message"].iloc[0]
    assert q["raw"].iloc[0].endswith(",1968385,1875258,pv") and not q["raw"].iloc[0].startswith("1003703")
    assert m["event_counts"] == {"cart": 4497, "fav": 2356, "purchase": 1750, "view": 75873 - 1}
    assert (m["n_users"], m["n_items"]) == (815, 55368)
    assert load_items(res.out_dir)["category"].notna().all()
    # same inputs and config: byte-identical outputs
    again = prepare_real("taobao", "paths.processed=" + str(prepared_root / "again"))
    for rel, digest in m["outputs"].items():
        assert again.manifest["outputs"][rel] == digest, rel


def test_movielens(prepare_real):
    m = prepare_real("movielens_100k").manifest
    assert (m["n_users"], m["n_items"], m["n_events"]) == (943, 1682, 100000) and reconciled(m)
    ev = load_events(prepare_real("movielens_100k").out_dir)
    assert ev["rating"].value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]
    assert load_users(prepare_real("movielens_100k").out_dir)["age"].notna().all()
    m1 = prepare_real("movielens_1m").manifest
    assert (m1["n_users"], m1["n_items"], m1["n_events"]) == (6040, 3706, 1000209)
    assert m1["time_kind"] == "order" and set(m1["splits"]) == {"loo"}


def test_hillstrom_published_rates(prepare_real, data_root):
    from features.adapters.hillstrom import load_hillstrom
    from features.processed import load_table

    res = prepare_real("hillstrom")
    assert res.manifest["n_input_rows"] == 64000 and res.manifest["n_quarantined"] == 0
    df = load_table(res.out_dir, "hillstrom")
    assert len(df) == 64000
    assert round(df["visit"].mean(), 5) == 0.14678 and round(df["spend"].mean(), 5) == 1.05091
    assert df["treatment"].value_counts().to_dict() == {"womens": 21387, "mens": 21307, "control": 21306}
    assert df.equals(load_hillstrom(data_root / "hillstrom/hillstrom.csv"))


def test_completejourney(prepare_real):
    from features.processed import load_table

    res = prepare_real("completejourney")
    m = res.manifest
    assert m["n_input_rows"] == 75000 and reconciled(m)
    assert m["tables"]["campaigns"] == 6589 and m["tables"]["campaign_descriptions"] == 27
    assert m["tables"]["coupon_redemptions"] == 2102 and m["tables"]["demographics"] == 801
    camp = load_table(res.out_dir, "campaigns")
    assert "household_id" not in camp.columns and camp["user_key"].str.len().eq(16).all()
    users = load_users(res.out_dir)
    assert camp["user_key"].isin(users["user_key"]).mean() > 0.99   # same keyed hash as users
    assert users["age"].notna().sum() > 700
    assert load_items(res.out_dir)["category"].notna().mean() > 0.9
