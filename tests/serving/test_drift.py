"""Drift monitoring: the distances, the alert rule, a real Online Retail replay (later months alert, the training
period does not), and the service's gauges."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from serving.drift.monitor import Monitor, alerts, load_config
from serving.drift.reference import REFERENCE, build_reference
from serving.drift.stats import js, ks_to_quantiles, psi, quantiles


def test_distances():
    p = np.array([0.5, 0.3, 0.2])
    assert psi(p, p * 100) == pytest.approx(0.0) and js(p, p) == pytest.approx(0.0)
    assert psi(p, [0.2, 0.3, 0.5]) > 0.25 and 0 < js(p, [0.2, 0.3, 0.5]) < 1
    assert js([1, 0], [0, 1]) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    q = quantiles(rng.normal(size=5000))
    assert ks_to_quantiles(rng.normal(size=2000), q) < 0.05
    assert ks_to_quantiles(rng.normal(1.0, 1, size=2000), q) > 0.3


def test_alert_needs_consecutive_breaches_and_skipped_windows_do_not_reset():
    w = [{"end": i, "breaches": b} for i, b in enumerate([["x"], [], ["x"], ["x"]])]
    w.insert(3, {"end": 9, "skipped": "few", "breaches": []})
    assert [a["at"] for a in alerts(w, 2)] == [3]
    assert alerts(w, 3) == []


@pytest.fixture(scope="module")
def retail(data_root, tmp_path_factory):
    """A bundle trained on Online Retail up to 2011-08-01 (half of the customers) with its drift reference."""
    from features.privacy import pseudo_key, pseudonymise_one
    from tests.toy_bundle import build_bundle_from_events

    raw = pd.read_parquet(data_root / "online-retail" / "online_retail_2010_2011.parquet",
                          columns=["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "CustomerID"])
    raw = raw[raw["CustomerID"].notna() & (raw["Quantity"] > 0) & (raw["CustomerID"] % 2 == 0)]
    ev = pd.DataFrame({"user": raw["CustomerID"].astype("int64").astype(str), "item_key": raw["StockCode"].astype(str),
                       "ts": pd.to_datetime(raw["InvoiceDate"]).dt.tz_localize("UTC"),
                       "event": np.where(raw["InvoiceNo"].astype(str).str.startswith("C"), "return", "purchase")})
    key, _ = pseudo_key()
    users = ev["user"].unique()
    ev["user_key"] = ev["user"].map(dict(zip(users, (pseudonymise_one(u, key) for u in users))))
    cut = pd.Timestamp("2011-08-01", tz="UTC")
    train = ev[ev["ts"] < cut]
    root = tmp_path_factory.mktemp("drift") / "bundles"
    bundle = build_bundle_from_events(root / "early", train, dim=16, name="online_retail")
    (bundle / REFERENCE).write_text(json.dumps(build_reference(bundle, train)))  # test folder: not re-verified
    return bundle, ev, cut


@pytest.mark.slow
def test_later_months_alert_and_the_training_period_does_not(retail):
    bundle, ev, cut = retail
    monitor = Monitor(bundle, load_config())
    daily = monitor.cfg.windows["daily"]
    train = monitor.prepare(ev[ev["ts"] < cut], with_prefix=False)
    later = monitor.prepare(ev[ev["ts"] >= cut], with_prefix=True)
    assert alerts(monitor.evaluate(train, daily), daily.for_windows) == []
    fired = alerts(monitor.evaluate(later, daily), daily.for_windows)
    assert fired, "the later months raised no alert"
    assert pd.Timestamp(fired[0]["at"], unit="s", tz="UTC") < pd.Timestamp("2011-12-10", tz="UTC")


def test_service_exports_drift_gauges(make_client, artifacts):
    """A bundle with a reference: events posted to the service show up as drift gauges on /metrics."""
    from serving.bundle import publish_derived
    from training.synthetic_bundle import item_key

    root = artifacts / "bundles"
    users = pd.read_parquet(root / "b1" / "users.parquet")
    t0 = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=30)
    train = pd.DataFrame({"user_key": np.repeat(users["user_key"].to_numpy()[:100], 5),
                          "item_key": [item_key(i % 50) for i in range(500)], "event": "purchase",
                          "ts": [t0 + pd.Timedelta(minutes=i) for i in range(500)]})
    publish_derived(root / "b1", name="b1.1",
                    write=lambda d: (d / REFERENCE).write_text(json.dumps(build_reference(root / "b1", train))))
    client, svc = make_client()
    assert svc.bundle.name == "b1.1"
    body = [{"user_id": f"user-{u}", "item_id": item_key(400 + u % 90), "event": "purchase"} for u in range(250)]
    assert client.post("/v1/events", json=body).status_code == 202
    text = client.get("/metrics").text
    assert "shoprec_drift_reference 1.0" in text and "shoprec_drift_window_events 250.0" in text
    psi_line = next(line for line in text.splitlines() if line.startswith('shoprec_drift_psi{feature="item_popularity"}'))
    assert float(psi_line.split()[-1]) > 0.25          # items never bought in the reference period
    assert 'shoprec_drift_line{feature="item_popularity"}' in text
