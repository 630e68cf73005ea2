"""End to end on real data: UCI Online Retail invoices -> a bundle (SVD embeddings, mean encoder) ->
the service in-process. Checks what a storefront relies on with real ids, prices and histories."""
from __future__ import annotations

import pandas as pd
import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow
KEY = {"X-API-Key": "test-api-key"}


@pytest.fixture(scope="module")
def retail(data_root, tmp_path_factory):
    from tests.toy_bundle import build_bundle_from_events

    raw = pd.read_parquet(data_root / "online-retail" / "online_retail_2010_2011.parquet",
                          columns=["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"])
    raw = raw[raw["CustomerID"].notna() & (raw["Quantity"] > 0) & (raw["UnitPrice"] > 0)]
    raw = raw[~raw["InvoiceNo"].astype(str).str.startswith("C")]
    ev = pd.DataFrame({"user": raw["CustomerID"].astype("int64").astype(str), "item_key": raw["StockCode"].astype(str),
                       "ts": pd.to_datetime(raw["InvoiceDate"]).dt.tz_localize("UTC"), "event": "purchase",
                       "price": raw["UnitPrice"].astype(float)})
    art = tmp_path_factory.mktemp("retail")
    build_bundle_from_events(art / "bundles" / "retail", ev, dim=32, name="online_retail")
    return art, ev


@pytest.fixture(scope="module")
def client(retail):
    from serving.api import create_app
    from serving.app import compose_config
    from serving.service import Service

    art, _ = retail
    cfg = compose_config([f"paths.artifacts={art}", "serve.watch_interval_s=0", "serve.budget_ms.retrieve=2000",
                          "serve.budget_ms.rank=2000", "serve.budget_ms.rules=2000"])
    svc = Service(cfg.serve, background=False)
    yield TestClient(create_app(svc), headers=KEY), svc
    svc.stop()


def test_customer_gets_new_items_with_reasons(client, retail):
    c, svc = client
    _, ev = retail
    top_customer = ev["user"].value_counts().index[5]
    r = c.post("/v1/recommendations", json={"user_id": top_customer, "k": 10})
    assert r.status_code == 200
    out = r.json()
    assert out["cold_start"] is False and out["degraded"] is None and len(out["items"]) == 10
    history = set(ev.loc[ev["user"] == top_customer, "item_key"].tail(20))
    assert not history & {i["item_id"] for i in out["items"]}  # the last items they bought are not pushed again
    assert all(i["reason"].startswith(("similar to", "popular")) for i in out["items"])


def test_price_context_and_cold_start(client, retail):
    c, svc = client
    r = c.post("/v1/recommendations", json={"user_id": "not-a-customer", "k": 20, "context": {"price_max": 1.0}})
    out = r.json()
    assert r.status_code == 200 and out["cold_start"] is True and len(out["items"]) == 20
    items = svc.bundle.items
    assert all(items.price[items.key_to_id[i["item_id"]]] <= 1.0 for i in out["items"])


def test_similar_and_events_on_real_items(client, retail):
    c, svc = client
    _, ev = retail
    popular_item = ev["item_key"].value_counts().index[0]
    r = c.get(f"/v1/items/{popular_item}/similar", params={"k": 5})
    assert r.status_code == 200 and len(r.json()["items"]) == 5
    assert c.post("/v1/events", json={"user_id": "web-visitor-1", "item_id": popular_item, "event": "view"}).status_code == 202
    out = c.post("/v1/recommendations", json={"user_id": "web-visitor-1", "k": 5}).json()
    assert out["cold_start"] is False and out["items"][0]["reason"] == f"similar to {popular_item} you viewed"
    log_text = svc.store.path.read_text()
    assert "web-visitor-1" not in log_text and svc.user_key("web-visitor-1") in log_text
