"""features.forget on a slice of real data (Online Retail): the user leaves every artifact (Parquet contents
included), a re-run of features.prepare keeps them out, an unknown user is "not found" but tombstoned, and an
artifact made with another key is named with both fingerprints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from features.forget import run as forget
from features.prepare import run as prepare
from features.privacy import key_fingerprint, pseudonymise_one
from features.tombstones import load_tombstones, tombstone_dir
from tests.features.conftest import CONF, REPO, make_cfg


def forget_cfg(artifacts: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("forget", overrides=[f"paths.artifacts={artifacts}", *overrides])


def holds_key(path: Path, key: str) -> bool:
    """The key in a file's bytes, or in any text value of a Parquet file (compressed pages hide bytes)."""
    if key.encode() in path.read_bytes():
        return True
    if path.suffix == ".parquet":
        t = pq.read_table(path)
        for c in t.column_names:
            if pa.types.is_string(t[c].type) or pa.types.is_large_string(t[c].type):
                if any(key in v for v in t[c].drop_null().to_pylist()):
                    return True
    return False


@pytest.fixture()
def shop(tmp_path, data_root):
    """A prepared 3000-line slice of Online Retail, a profile table, an event log, exposures, an audience."""
    raw = pd.read_parquet(data_root / "online-retail/online_retail_2010_2011.parquet").dropna(subset=["CustomerID"])
    raw = raw.head(3000)
    csv = tmp_path / "slice.csv"
    pd.DataFrame({"u": raw["CustomerID"].astype(int), "i": raw["StockCode"].astype(str),
                  "t": pd.to_datetime(raw["InvoiceDate"]).dt.strftime("%Y-%m-%dT%H:%M:%S"),
                  "e": "purchase"}).to_csv(csv, index=False)
    art = tmp_path / "artifacts"
    args = ["data=events_csv", f"data.path={csv}", "data.columns.user=u", "data.columns.item=i",
            "data.columns.ts=t", "data.columns.event=e", "data.name=retail_slice", f"paths.artifacts={art}"]
    res = prepare(make_cfg(*args))
    users = pd.read_parquet(res.out_dir / "users.parquet")
    prof = art / "profiles" / "retail_slice"
    prof.mkdir(parents=True)
    users[["user_id", "user_key"]].assign(recency_days=1.0).to_parquet(prof / "profiles.parquet")
    (prof / "manifest.json").write_text(json.dumps({"kind": "profiles", "data": "retail_slice",
                                                    "pseudo_key_fingerprint": key_fingerprint()}))
    target = int(raw["CustomerID"].value_counts().index[0])
    key, other = pseudonymise_one(target), str(users["user_key"].iloc[-1])
    serve = art / "serve"
    (serve / "experiments").mkdir(parents=True)
    (serve / "events.csv").write_text("user_key,item_key,event,ts,received_at,event_id\n" + "".join(
        f"{u},SKU1,view,2024-01-01T00:00:00+00:00,2024-01-01T00:00:00+00:00,{u[:4]}{i}\n"
        for i, u in enumerate([key, other, key])))
    (serve / "experiments" / "exposures.jsonl").write_text("".join(
        json.dumps({"request_id": f"r{i}", "user_key": u, "unit": u, "items": ["a"]}) + "\n"
        for i, u in enumerate([key, other])))
    (serve / "experiments" / "attributions.jsonl").write_text(
        json.dumps({"event_id": f"{key[:4]}0", "request_id": "r0", "position": 1}) + "\n"
        + json.dumps({"event_id": f"{other[:4]}1", "request_id": "r1", "position": 2}) + "\n")
    camp = art / "campaigns" / "winback"
    camp.mkdir(parents=True)
    pd.DataFrame({"user_key": [key, other], "group": ["treatment", "control"]}).to_parquet(camp / "audience.parquet")
    pd.DataFrame({"user_key": [key], "campaign_id": ["winback"]}).to_parquet(art / "campaigns" / "contact_log.parquet")
    run_dir = art / "runs" / "retail_slice" / "pop" / "demo"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"data": "retail_slice"}))
    return {"art": art, "args": args, "key": key, "other": other, "target": target, "res": res}


def test_forget_removes_the_user_everywhere_and_prepare_keeps_them_out(shop):
    art, key = shop["art"], shop["key"]
    n_events = int((pd.read_parquet(shop["res"].out_dir / "events.parquet")["user_id"]
                    == int(pd.read_parquet(shop["res"].out_dir / "users.parquet").set_index("user_key")
                           .loc[key, "user_id"])).sum())
    report = forget(forget_cfg(art, f"user={shop['target']}"))
    assert report.status == "forgotten" and report.user_key == key and not report.errors
    rm = report.removed
    assert rm["processed/retail_slice/events.parquet"] == n_events and rm["processed/retail_slice/users.parquet"] == 1
    assert rm["profiles/retail_slice/profiles.parquet"] == 1
    assert rm["serve/events.csv"] == 2 and rm["serve/experiments/exposures.jsonl"] == 1
    assert rm["serve/experiments/attributions.jsonl"] == 1
    assert rm["campaigns/winback/audience.parquet"] == 1 and rm["campaigns/contact_log.parquet"] == 1
    assert report.retrain == ["runs/retail_slice/pop/demo"]
    for p in art.rglob("*"):
        if p.is_file() and "tombstones" not in p.parts:
            assert not holds_key(p, key), p
    assert holds_key(art / "serve" / "events.csv", shop["other"])           # nobody else
    m = json.loads((shop["res"].out_dir / "manifest.json").read_text())
    assert m["n_input_rows"] == m["n_events"] + m["n_quarantined"] + sum(m["n_dropped"].values())
    assert m["forgotten"]["n_users"] == 1

    again = prepare(make_cfg(*shop["args"]))                                # a tombstone re-runs ingestion
    assert not again.skipped and again.manifest["n_dropped"]["forgotten"] == n_events
    assert key not in set(pd.read_parquet(again.out_dir / "users.parquet")["user_key"])
    assert key in load_tombstones(tombstone_dir(art))


def test_unknown_user_cli_says_not_found_and_writes_the_tombstone(tmp_path):
    env = {**os.environ, "SHOPREC_AUDIT_LOG": str(tmp_path / "audit.jsonl"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "features.forget", "user=nobody-42", f"paths.artifacts={tmp_path}"],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["status"] == "not found" and out["removed"] == {} and "not found" in r.stdout
    assert out["user_key"] == pseudonymise_one("nobody-42") and out["tombstone"] == "written"
    assert out["user_key"] in load_tombstones(tombstone_dir(tmp_path))
    audit = (tmp_path / "audit.jsonl").read_text()
    assert '"user.forget"' in audit and "nobody-42" not in audit and out["user_key"] not in audit


def test_an_artifact_of_another_key_is_named_with_both_fingerprints(shop):
    art = shop["art"]
    prof = art / "profiles" / "retail_slice" / "manifest.json"
    prof.write_text(json.dumps({"kind": "profiles", "pseudo_key_fingerprint": "0123456789abcdef"}))
    report = forget(forget_cfg(art, f"user={shop['target']}"))
    assert len(report.errors) == 1
    assert "0123456789abcdef" in report.errors[0] and key_fingerprint() in report.errors[0]
    assert report.removed["processed/retail_slice/users.parquet"] == 1    # everything else is still forgotten


def test_tombstoned_users_leave_audiences_and_profiles_of_another_key_are_refused(tmp_path):
    from features.privacy import KeyMismatchError, check_artifact_key
    from features.tombstones import add_tombstone, drop_tombstoned

    stones = tmp_path / "tombstones"
    gone, kept = pseudonymise_one("gone"), pseudonymise_one("kept")
    assert add_tombstone(gone, stones) and not add_tombstone(gone, stones)
    df = pd.DataFrame({"user_key": [gone, kept, gone], "score": [1.0, 2.0, 3.0]})
    out, n = drop_tombstoned(df, "user_key", stones)
    assert n == 2 and out["user_key"].tolist() == [kept]
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "manifest.json").write_text(json.dumps({"pseudo_key_fingerprint": "ffffffffffffffff"}))
    with pytest.raises(KeyMismatchError, match="ffffffffffffffff"):
        check_artifact_key(tmp_path / "p" / "profiles.parquet", "profiles")
