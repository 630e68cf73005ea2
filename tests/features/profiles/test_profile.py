"""The entry point: files, the profiles contract (shared interface 6), manifest, report, bad input."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.artifacts import read_json
from features.profile import run
from features.profiles.build import build_profiles
from tests.features.profiles.toydata import compose_cfg, make_toy, write_processed

CONTRACT = {
    "user_id": "int64", "user_key": "string", "snapshot_date": "timestamp[us, tz=UTC]", "recency_days": "double",
    "frequency": "int64", "monetary": "double", "r_score": "int64", "f_score": "int64", "m_score": "int64",
    "rfm_group": "string", "lifecycle": "string", "price_sensitivity": "double", "top_categories": "list<element: string>",
    "active_hour": "int64", "active_dow": "int64", "preferred_channel": "string", "clv": "double", "churn_prob": "double",
    "segment": "int64", "named_segment": "string", "opted_out_email": "bool", "opted_out_sms": "bool",
    "opted_out_push": "bool", "country": "string", "timezone": "string",
}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("profile")
    write_processed(root, "toy", make_toy())
    cfg = compose_cfg(["data.name=toy", f"paths.artifacts={root}", "profile.report.dpi=40"])
    return run(cfg), root


def test_writes_every_artifact(toy_run):
    result, root = toy_run
    assert result.out_dir == root / "profiles" / "toy"
    for name in ("profiles.parquet", "segments.parquet", "lifecycle_flows.parquet", "consent.parquet", "affinity.parquet", "manifest.json"):
        assert (result.out_dir / name).exists(), name
    for name in ("report.html", "segment_sizes.png", "segment_profiles.png", "rfm_grid.png", "lifecycle_flows.png", "clv_churn.png"):
        assert (result.report_dir / name).stat().st_size > 1000, name
    assert result.report_dir == root / "reports" / "profiles" / "toy"
    assert not list(result.out_dir.parent.glob(".*tmp*"))


def test_profiles_follow_the_contract(toy_run):
    result, _ = toy_run
    schema = pq.read_schema(result.out_dir / "profiles.parquet")
    types = {f.name: str(f.type) for f in schema}
    for col, typ in CONTRACT.items():
        assert types.get(col, "").replace("large_", "") == typ, (col, types.get(col))
    p = pd.read_parquet(result.out_dir / "profiles.parquet")
    assert p["user_id"].is_unique and len(p) == 240
    assert set(p["lifecycle"]) <= {"new", "active", "at_risk", "dormant", "churned"}
    assert p[["r_score", "f_score", "m_score"]].isin(range(1, 6)).all().all()
    assert p["price_sensitivity"].dropna().between(0, 1).all()
    assert p["active_hour"].between(0, 23).all() and p["active_dow"].between(0, 6).all()
    assert p["churn_prob"].dropna().between(0, 1).all() and p["clv"].notna().sum() > 100
    assert p["top_categories"].map(len).max() == 3
    assert set(p["named_segment"]) >= {"high_value", "casual_browser", "price_sensitive"}
    assert p["preferred_channel"].isna().all()   # the toy data has no channel
    want = p["country"].map({"United Kingdom": "Europe/London", "France": "Europe/Paris"})
    assert (p["timezone"] == want).all()                       # country -> zone from conf/profile


def test_segments_consent_flows_and_manifest(toy_run):
    result, _ = toy_run
    p = pd.read_parquet(result.out_dir / "profiles.parquet")
    seg = pd.read_parquet(result.out_dir / "segments.parquet")
    clusters, named = seg[seg["kind"] == "cluster"], seg[seg["kind"] == "named"]
    assert clusters["size"].sum() == len(p) and named["size"].sum() == len(p)
    assert (named.set_index("name")["size"] == p["named_segment"].value_counts().reindex(named["name"]).fillna(0)).all()
    assert seg["description"].str.len().gt(0).all() and "centre_monetary" in seg.columns
    consent = pd.read_parquet(result.out_dir / "consent.parquet")
    assert list(consent.columns[:3]) == ["user_key", "channel", "opted_in"] and len(consent) == 3 * len(p)
    email = consent[consent["channel"] == "email"].set_index("user_key")["opted_in"]
    assert (p.set_index("user_key")["opted_out_email"] == ~email.reindex(p["user_key"])).all()
    flows = pd.read_parquet(result.out_dir / "lifecycle_flows.parquet")
    assert flows["n_users"].sum() == len(p)
    m = read_json(result.out_dir / "manifest.json")
    assert m["consent"]["synthetic"] is True and m["counts"]["users"] == len(p)
    assert m["device"] == "cpu" and m["code_version"] and set(m["inputs"]) >= {"events.parquet", "users.parquet"}
    assert m["notes"]["segments"]["k"] == clusters.shape[0]


def test_opted_out_users_keep_their_profile(tmp_path, pcfg):
    data = make_toy(n_users=80, seed=3)
    consent = tmp_path / "consent.csv"
    pd.DataFrame({"user_key": data["users"]["user_key"], "channel": "email", "opted_in": False}).to_csv(consent, index=False)
    pcfg["consent"]["path"] = str(consent)
    pcfg["segments"]["k_max"] = 3
    tables = build_profiles(data["events"], data["items"], data["users"], pcfg, seed=0)
    p = tables.profiles
    assert len(p) == 80 and p["opted_out_email"].all() and p["opted_out_sms"].all()   # sms: default not opted in
    assert p["rfm_group"].notna().all() and p["clv"].notna().sum() > 30              # ... and keep their profile
    assert tables.consent.source == "input"


def test_unchanged_inputs_are_not_recomputed(toy_run, monkeypatch):
    result, root = toy_run
    # Other commits may land in this checkout meanwhile: pin the code version to the first run's.
    monkeypatch.setattr("features.profile.code_version", lambda: result.manifest["code_version"])
    before = (result.out_dir / "manifest.json").stat().st_mtime_ns
    again = run(compose_cfg(["data.name=toy", f"paths.artifacts={root}", "profile.report.dpi=40"]))
    assert again.skipped and again.n_users == result.n_users
    assert (result.out_dir / "manifest.json").stat().st_mtime_ns == before
    changed = run(compose_cfg(["data.name=toy", f"paths.artifacts={root}", "profile.report.dpi=40", "profile.segments.k_max=4"]))
    assert not changed.skipped and changed.manifest["notes"]["segments"]["k"] <= 4


def test_bad_config_fails_before_writing(tmp_path):
    write_processed(tmp_path, "toy", make_toy(n_users=40))
    cfg = compose_cfg(["data.name=toy", f"paths.artifacts={tmp_path}", "profile.lifecycle.active_days=500"])
    with pytest.raises(ValueError, match="active_days"):
        run(cfg)
    assert not (tmp_path / "profiles").exists()


def test_cli_reports_one_line_and_exits_nonzero(tmp_path, repo_root):
    proc = subprocess.run([sys.executable, "-m", "features.profile", "data.name=missing", f"paths.artifacts={tmp_path}"],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "features.profile: error:" in proc.stderr and "missing" in proc.stderr
