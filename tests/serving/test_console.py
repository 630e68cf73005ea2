"""The console (serving.console) in-process: sign-in and sessions, what each view reads from the
artifacts, start/stop rights, and the two report fixes that came with it (per-segment labels and
the funnel axis of the campaign report, "purchased" in reasons).

``console_artifacts`` builds, once per session, small artifacts with the real jobs: profiles of a
toy shop (``features.profile``), a winback audience from an untrained model (``build_audience``), its
readout on simulated outcomes, and an experiment spec running now. The browser tests reuse it.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.serving.conftest import ADMIN_KEY, API_KEY, GENEROUS_BUDGETS

_BUILT: dict[str, Path] = {}
EXPERIMENT = "console_ab"
CAMPAIGN_OVERRIDES = ["campaign=winback", "campaign.data=toy", "campaign.job.write_bundle=false",
                      "campaign.job.device=cpu", "campaign.eligibility.lifecycle=[at_risk,dormant,active]",
                      "campaign.eligibility.min_recency_days=null", "campaign.eligibility.max_recency_days=null"]


def build_console_artifacts(root: Path, bundles_root: Path) -> Path:
    """``root`` filled with bundles (links), toy profiles, a campaign audience + readout, an experiment spec."""
    import torch

    from features.profile import run as profile_run
    from models.uplift import CampaignEnsemble, CampaignNet
    from serving.campaigns.build_audience import run as build_run
    from serving.campaigns.evaluate import run as evaluate_run
    from serving.campaigns.scoring import save_campaign_model
    from tests.features.profiles.toydata import compose_cfg, make_toy, write_processed

    (root / "bundles").mkdir(parents=True)
    for b in ("b1", "b2"):
        (root / "bundles" / b).symlink_to(bundles_root / "bundles" / b)
    (root / "bundles" / "LATEST").write_text("b1\n")
    write_processed(root, "toy", make_toy())
    profile_run(compose_cfg(["data.name=toy", f"paths.artifacts={root}", "profile.report.dpi=30"]))
    torch.manual_seed(0)
    feats = ["recency_days", "frequency", "monetary", "price_sensitivity", "clv", "churn_prob", "n_purchase_lines",
             "n_categories"]
    save_campaign_model(root / "campaign_models" / "winback", CampaignEnsemble([CampaignNet(len(feats), 8, 1)]).eval(),
                        feats, "response")
    overrides = [*CAMPAIGN_OVERRIDES, f"paths.artifacts={root}"]
    build_run(compose_cfg(overrides))
    evaluate_run(compose_cfg([*overrides, "campaign.job.outcomes=simulate"]))
    exp_dir = root / "experiment"
    exp_dir.mkdir()
    now = dt.datetime.now(dt.timezone.utc)
    (exp_dir / f"{EXPERIMENT}.yaml").write_text(
        f"name: {EXPERIMENT}\ndescription: trained bundle vs popularity-only\nsalt: console-ab-test-salt\n"
        f"start: {(now - dt.timedelta(days=1)).isoformat()}\nend: {(now + dt.timedelta(days=30)).isoformat()}\n"
        "control: popular\nvariants:\n  - {name: popular, weight: 0.5, overrides: {retrieval: popular}}\n"
        "  - {name: trained, weight: 0.5}\nprimary_metric: {name: conversion, window_hours: 24}\n"
        "mde: {relative: 0.25, baseline: 0.05}\n")
    return root


@pytest.fixture(scope="session")
def console_artifacts(bundles_root, tmp_path_factory) -> Path:
    if "root" not in _BUILT:
        _BUILT["root"] = build_console_artifacts(tmp_path_factory.mktemp("console") / "artifacts", bundles_root)
    return _BUILT["root"]


def console_overrides(art: Path) -> list[str]:
    return [f"paths.artifacts={art}", "serve.watch_interval_s=0", *GENEROUS_BUDGETS,
            f"serve.experiments.dir={art / 'experiment'}", "serve.experiments.watch_interval_s=0",
            "serve.experiments.fsync=request"]


@pytest.fixture()
def console_client(console_artifacts, tmp_path):
    """``make(*overrides) -> (TestClient, Service)`` over the console artifacts (fresh event and exposure logs)."""
    from fastapi.testclient import TestClient

    from serving.api import create_app
    from serving.app import compose_config
    from serving.service import Service

    made = []

    def make(*overrides: str):
        cfg = compose_config([*console_overrides(console_artifacts), f"serve.store.event_log={tmp_path}/events.csv",
                              f"serve.experiments.log_dir={tmp_path}/exp", *overrides])
        svc = Service(cfg.serve, background=False)
        made.append(svc)
        return TestClient(create_app(svc), base_url="https://testserver"), svc

    yield make
    for s in made:
        s.stop()


def login(c, key: str) -> str:
    r = c.post("/console/login", data={"key": key}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = c.get("/console").text
    return page.split('name="csrf-token" content="')[1].split('"')[0]


# ------------------------------------------------------------------------------------------------ sign-in
def test_no_key_no_page_wrong_key_gets_the_login_page_with_a_message(console_client):
    c, _ = console_client()
    r = c.get("/console")
    assert r.status_code == 200 and 'name="key"' in r.text and "segments" not in r.text.lower()
    assert "default-src 'none'" in r.headers["content-security-policy"]
    for path in ("segments", "campaigns", "experiments", "models", "health"):
        assert c.get(f"/console/api/{path}").status_code == 401
    r = c.post("/console/login", data={"key": "not-a-key"})
    assert r.status_code == 403 and "This key is not accepted" in r.text and "Traceback" not in r.text
    assert "shoprec_console" not in r.headers.get("set-cookie", "")
    r = c.post("/console/login", data={})
    assert r.status_code == 401 and "Enter an API key" in r.text
    r = c.post("/console/login", content=b"\xff\xfe", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "could not read the form" in r.text


def test_session_cookie_is_signed_secure_http_only_and_never_holds_the_key(console_client):
    c, _ = console_client()
    r = c.post("/console/login", data={"key": API_KEY}, follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert r.status_code == 303 and r.headers["location"] == "/console"
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    value = r.cookies["shoprec_console"]
    assert API_KEY not in value and API_KEY not in json.dumps(dict(r.headers))
    assert c.get("/console/api/segments").status_code == 200
    payload, sig = value.split(".")
    forged = payload.replace(payload[5], "A" if payload[5] != "A" else "B", 1) + "." + sig
    fresh, _ = console_client()
    assert fresh.get("/console/api/segments", headers={"cookie": f"shoprec_console={value}"}).status_code == 200
    assert fresh.get("/console/api/segments", headers={"cookie": f"shoprec_console={forged}"}).status_code == 401


def test_analyst_reads_but_cannot_start_and_writes_need_the_csrf_token(console_client, tmp_path, monkeypatch):
    audit_log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SHOPREC_AUDIT_LOG", str(audit_log))
    c, _ = console_client()
    csrf = login(c, API_KEY)
    refused = [r for r in audit_log.read_text().splitlines() if "auth.failure" in r] if audit_log.exists() else []
    assert refused == []  # an analyst key is never tried (and refused) as an admin key
    assert c.get("/console/api/experiments").json()["can_act"] is False
    r = c.post(f"/console/api/experiments/{EXPERIMENT}/start", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    c2, _ = console_client()
    login(c2, ADMIN_KEY)
    r = c2.post(f"/console/api/experiments/{EXPERIMENT}/start")
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]


def test_static_files_only_from_the_package(console_client):
    c, _ = console_client()
    assert c.get("/console/static/charts.js").status_code == 200
    assert c.get("/console/static/..%2Fsession.py").status_code == 404
    assert c.get("/console/static/session.py").status_code == 404


# ------------------------------------------------------------------------------------------------ views
def test_views_show_the_artifacts_numbers(console_client, console_artifacts):
    c, _ = console_client()
    login(c, API_KEY)
    seg = c.get("/console/api/segments").json()
    table = pd.read_parquet(console_artifacts / "profiles" / "toy" / "segments.parquet")
    assert {(s["kind"], s["name"]): s["size"] for s in seg["segments"]} == {
        (k, n): int(s) for k, n, s in zip(table["kind"], table["name"], table["size"])}
    prof = pd.read_parquet(console_artifacts / "profiles" / "toy" / "profiles.parquet")
    assert seg["users"] == len(prof) and sum(seg["lifecycle"].values()) == len(prof)
    assert sum(map(sum, seg["rfm"]["counts"])) == int((prof["rfm_group"] != "no_purchase").sum())
    camp = c.get("/console/api/campaigns").json()["campaigns"][0]
    m = json.loads((console_artifacts / "campaigns" / "winback" / "manifest.json").read_text())
    assert camp["counts"] == m["counts"] and camp["steps"] == m["steps"]
    assert sum(camp["schedule"]["treatment"]) == m["counts"]["treatment"]
    assert sum(camp["schedule"]["control"]) == m["counts"]["control"]
    (readout,) = camp["readouts"]
    res = json.loads((console_artifacts / "reports" / "campaigns" / "winback" / "results.json").read_text())
    assert readout["simulated"] is True and readout["roi"] == res["roi"]
    assert readout["incremental_conversions"] == pytest.approx(res["incremental_conversions"])
    models = c.get("/console/api/models").json()
    assert models["serving"] == "b1" and models["loaded_here"] == "b1"
    assert {v["version"] for v in models["versions"]} == {"b1", "b2"}
    health = c.get("/console/api/health").json()
    assert health["bundle"] == "b1" and health["totals"]["recommendations"] == 0


def test_send_schedule_is_in_local_hours():
    from serving.console.marketing import send_schedule

    aud = pd.DataFrame({"group": ["treatment", "treatment", "control"],
                        "send_at": pd.to_datetime(["2026-06-01 09:00", "2026-06-01 09:00", "2026-06-01 23:30"], utc=True),
                        "timezone": ["Europe/London", "Asia/Tokyo", None]})
    s = send_schedule(aud)
    assert s["treatment"][10] == 1 and s["treatment"][18] == 1 and s["control"][23] == 1


def test_a_view_without_data_says_what_to_run(console_client, tmp_path):
    c, _ = console_client(f"serve.console.artifacts={tmp_path}/empty")
    login(c, API_KEY)
    seg = c.get("/console/api/segments").json()
    assert seg["available"] is False and "python -m features.profile" in seg["missing"]["command"]
    camp = c.get("/console/api/campaigns").json()
    assert camp["available"] is False and "build_audience.py campaign=" in camp["missing"]["command"]


def test_admin_starts_and_stops_an_experiment_and_it_is_audited(console_client, tmp_path, monkeypatch):
    audit_log = tmp_path / "audit.jsonl"
    monkeypatch.setenv("SHOPREC_AUDIT_LOG", str(audit_log))
    c, svc = console_client()
    csrf = login(c, ADMIN_KEY)
    h = {"X-CSRF-Token": csrf}
    assert svc.experiments is None
    r = c.post(f"/console/api/experiments/{EXPERIMENT}/start", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "running"
    assert c.post(f"/console/api/experiments/{EXPERIMENT}/start", headers=h).status_code == 409
    api = {"X-API-Key": API_KEY}
    variants = [c.post("/v1/recommendations", json={"user_id": f"u{i}", "k": 3}, headers=api).json()["variant"]
                for i in range(12)]
    assert set(variants) == {"popular", "trained"}
    (x,) = [e for e in c.get("/console/api/experiments").json()["experiments"] if e["name"] == EXPERIMENT]
    assert x["status"] == "running"
    assert sum(s["users"] for s in x["readout"]["split"]) == 12
    assert c.post(f"/console/api/experiments/{EXPERIMENT}/stop", headers=h).json()["status"] == "stopped"
    assert "experiment" not in c.post("/v1/recommendations", json={"user_id": "u1", "k": 3}, headers=api).json()
    assert c.post("/console/api/experiments/nope/start", headers=h).status_code == 404
    try:
        import serving.audit  # noqa: F401
    except ImportError:
        return
    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    mine = [(r["action"], r["actor"].split(":")[:2], r["details"]["experiment"]) for r in records
            if r["action"].startswith("console.")]
    assert mine == [("console.experiment.start", ["console", "admin"], EXPERIMENT),
                    ("console.experiment.stop", ["console", "admin"], EXPERIMENT)]


# ------------------------------------------------------------------------------------------------ fixes
def test_campaign_report_labels_count_users_and_the_funnel_axis_labels_decades(tmp_path):
    import base64

    import matplotlib.pyplot as plt
    import numpy as np

    from serving.campaigns.report import plots

    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"segment": rng.integers(0, 2, n).astype(str), "group": np.where(rng.random(n) < 0.8, "treatment", "control"),
                          "converted": rng.random(n) < 0.2, "score": rng.random(n)})
    by_seg = []
    for s in ("0", "1"):  # as the readout writes them: "treatment"/"control" are conversion rates
        by_seg.append({"segment": s, "treatment": 0.2486187845303867, "control": 0.18, "uplift": 0.05,
                       "ci_low": -0.05, "ci_high": 0.15, "p_value": 0.3})
    eff = [{"metric": "conversion", "treatment": 0.2, "control": 0.18, "uplift": 0.02, "ci_low": -0.05,
            "ci_high": 0.09, "p_value": 0.5, "interval": "newcombe"}] * 2
    steps = [{"step": "all_profiles", "users": 5248}, {"step": "eligibility", "users": 2409},
             {"step": "treatment", "users": 600}, {"step": "control", "users": 149}]
    captured = {}
    real_subplots = plt.subplots

    def spy(*a, **k):
        fig, ax = real_subplots(*a, **k)
        captured.setdefault("axes", []).append(ax)
        return fig, ax

    plt.subplots = spy
    try:
        images = plots({"effects": eff, "by_segment": by_seg, "_frame": frame}, steps, tmp_path)
    finally:
        plt.subplots = real_subplots
    assert {"funnel", "segments"} <= set(images)
    funnel_ax, seg_ax = captured["axes"][1], captured["axes"][2]
    labels = [t.get_text() for t in seg_ax.get_yticklabels()]
    counts = frame.groupby(["segment", "group"]).size()
    assert labels == [f"segment {s} (n={counts[(s, 'treatment')]:,} treated, {counts[(s, 'control')]:,} control)"
                      for s in ("0", "1")]
    assert not any("0.248" in lab for lab in labels)
    shown = [t.get_text() for t in funnel_ax.get_xticklabels(minor=True) if t.get_text()]
    assert shown == []  # minor ticks carry no labels (they overlapped)
    lo, hi = funnel_ax.get_xlim()
    assert lo == 100 and hi >= 5248 * 2
    assert base64.b64decode(images["funnel"])[:4] == b"\x89PNG"


def test_reason_says_purchased_when_the_user_bought_the_anchor(make_client):
    c, _ = make_client()
    for event, verb in (("purchase", "purchased"), ("view", "viewed")):
        user = f"reason-{event}"
        assert c.post("/v1/events", json={"user_id": user, "item_id": "SKU000007", "event": event}).status_code == 202
        out = c.post("/v1/recommendations", json={"user_id": user, "k": 3}).json()
        assert out["items"][0]["reason"] == f"similar to SKU000007 you {verb}"


def test_admin_rolls_back_and_this_replica_serves_it_at_once(console_client, console_artifacts, tmp_path):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for b in ("b1", "b2"):
        (bundles / b).symlink_to((console_artifacts / "bundles" / b).resolve())
    (bundles / "LATEST").write_text("b1\n")
    c, _ = console_client(f"serve.bundles_dir={bundles}")
    analyst = login(c, API_KEY)
    assert c.post("/console/api/models/rollback", json={"to": "b2"}, headers={"X-CSRF-Token": analyst}).status_code == 403
    c2, svc = console_client(f"serve.bundles_dir={bundles}")
    csrf = login(c2, ADMIN_KEY)
    r = c2.post("/console/api/models/rollback", json={"to": "b2"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["version"] == "b2"
    assert (bundles / "LATEST").read_text().strip() == "b2" and svc.bundle.name == "b2"
    m = c2.get("/console/api/models").json()
    assert m["serving"] == "b2" and m["loaded_here"] == "b2" and m["history"][0]["action"] == "rollback"
    r = c2.post("/console/api/models/rollback", json={"to": "nope"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 409 and "nope" in r.json()["detail"]
