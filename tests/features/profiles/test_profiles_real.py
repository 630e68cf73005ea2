"""End to end on the real data: Online Retail (prices, returns, countries, titles) and the Taobao head
(clickstream, no prices), prepared by ``features.prepare`` (session fixture shared with the data tests)."""
from __future__ import annotations

import pandas as pd
import pytest

from features.profile import run
from tests.features.profiles.toydata import compose_cfg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retail(prepare_real, prepared_root, data_root):
    prepare_real("online_retail")
    cfg = compose_cfg(["data=online_retail", f"paths.artifacts={prepared_root}", f"paths.data_root={data_root}"])
    return run(cfg)


def test_online_retail_profiles(retail, data_root):
    p = pd.read_parquet(retail.out_dir / "profiles.parquet")
    assert 5000 < len(p) < 7000 and p["user_id"].is_unique          # ~5.9k customers over the two years
    assert set(p["lifecycle"]) == {"new", "active", "at_risk", "dormant", "churned"}
    assert p["price_sensitivity"].notna().mean() > 0.95 and p["price_sensitivity"].dropna().between(0, 1).all()
    assert p["clv"].notna().mean() > 0.95 and (p["clv"].dropna() >= 0).all()
    assert p["top_categories"].map(len).gt(0).mean() > 0.95         # product types from title keywords
    assert p["country"].notna().mean() > 0.99 and p["preferred_channel"].isna().all()
    assert {"high_value", "potential", "price_sensitive"} <= set(p["named_segment"])
    # churn probability follows the lifecycle: churned customers are far likelier not to come back
    by_stage = p.groupby("lifecycle")["churn_prob"].mean()
    assert by_stage["churned"] > by_stage["at_risk"] > by_stage["active"]
    # champions spend more than lost customers
    by_group = p.groupby("rfm_group")["monetary"].median()
    assert by_group["champions"] > 5 * by_group["lost"]
    # no clear-text customer ids anywhere in the outputs
    raw = pd.read_parquet(data_root / "online-retail" / "online_retail_2010_2011.parquet", columns=["CustomerID"])
    raw_ids = set(raw["CustomerID"].dropna().astype("int64").astype(str))
    assert not raw_ids & set(p["user_key"])
    for name in ("profiles.parquet", "consent.parquet", "affinity.parquet"):
        cols = pd.read_parquet(retail.out_dir / name).columns
        assert not {"customer_id", "CustomerID", "email", "name"} & set(cols)
    assert retail.manifest["notes"]["category_source"].startswith("title keywords")


def test_online_retail_report(retail):
    html = (retail.report_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "champions" in html
    flows = pd.read_parquet(retail.out_dir / "lifecycle_flows.parquet")
    assert flows["n_users"].sum() == retail.n_users


def test_taobao_clickstream_profiles(prepare_real, prepared_root, data_root):
    prepare_real("taobao")
    cfg = compose_cfg(["data=taobao", "profile=short_horizon", f"paths.artifacts={prepared_root}", f"paths.data_root={data_root}"])
    result = run(cfg)
    p = pd.read_parquet(result.out_dir / "profiles.parquet")
    assert len(p) == 815
    assert p["monetary"].isna().all() and p["price_sensitivity"].isna().all() and p["clv"].isna().all()
    assert p.loc[p["frequency"] > 0, "churn_prob"].notna().all()
    assert {"casual_browser", "rational_researcher"} <= set(p["named_segment"])
    assert (p.loc[p["named_segment"] == "casual_browser", "frequency"] == 0).all()
    assert p["top_categories"].map(len).gt(0).all()
    assert result.manifest["notes"]["has_prices"] is False
