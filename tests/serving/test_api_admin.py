"""DELETE /v1/users/{user_id}: admin key only; the live store, event log and bundles forget the user at once;
the audit log records it without the id; refused keys are audited; API keys rotate without a restart."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from features.privacy import pseudonymise_one
from features.tombstones import load_tombstones, tombstone_dir
from serving.audit import AUDIT_ENV, read_records, verify_chain
from serving.auth import Auth, AuthError, sha256_hex

ADMIN = {"X-API-Key": "test-admin-key"}  # tests/serving/conftest.py sets it


@pytest.fixture()
def artifacts(bundles_root, tmp_path, monkeypatch) -> Path:
    """Own copies of the session's bundles (a forget rewrites per-user tables), and an own audit log."""
    for b in ("b1", "b2"):
        shutil.copytree(bundles_root / "bundles" / b, tmp_path / "bundles" / b)
    (tmp_path / "bundles" / "LATEST").write_text("b1\n")
    monkeypatch.setenv(AUDIT_ENV, str(tmp_path / "audit" / "audit.jsonl"))
    return tmp_path


def test_delete_user_forgets_everywhere(make_client, artifacts):
    c, svc = make_client()
    key = pseudonymise_one("user-3")
    assert c.post("/v1/events", json=[{"user_id": "user-3", "item_id": "SKU000001", "event": "view"}]).status_code == 202
    assert c.post("/v1/events", json=[{"user_id": "user-4", "item_id": "SKU000002", "event": "view"}]).status_code == 202
    assert svc.store.events_of(key)
    assert c.post("/v1/recommendations", json={"user_id": "user-3", "k": 5}).json()["cold_start"] is False

    assert c.delete("/v1/users/user-3").status_code == 403               # an ordinary key is not enough
    r = c.delete("/v1/users/user-3", headers=ADMIN)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["status"] == "forgotten" and rep["user_key"] == key
    assert rep["removed"]["serve/events.csv"] == 1
    assert rep["removed"]["bundles/b1/users.parquet"] == 1 and rep["removed"]["bundles/b2/users.parquet"] == 1
    assert "b1.1" in rep["bundles"]["b1"] and rep["bundles"]["b2"].startswith("redacted")
    assert set(rep["retrain"]) >= {"bundles/b1", "bundles/b2"}

    assert svc.store.events_of(key) == []                                   # the live store
    assert svc.store.events_of(pseudonymise_one("user-4"))                  # nobody else
    assert svc.bundle.name == "b1.1"                                        # swapped in at once
    assert c.post("/v1/recommendations", json={"user_id": "user-3", "k": 5}).json()["cold_start"] is True
    assert key in load_tombstones(tombstone_dir(artifacts))
    for p in artifacts.rglob("*"):                                          # the key is nowhere else
        if p.is_file() and "tombstones" not in p.parts and p.suffix != ".parquet":
            assert key.encode() not in p.read_bytes(), p
    import pandas as pd
    for b in ("b1", "b1.1", "b2"):
        assert key not in set(pd.read_parquet(artifacts / "bundles" / b / "users.parquet")["user_key"])
    from serving.bundle.contract import read_manifest, verify_files
    for b in ("b1", "b2"):   # redacted versions still verify (new hashes in their manifests)
        verify_files(artifacts / "bundles" / b, read_manifest(artifacts / "bundles" / b, validate=False))

    log = artifacts / "audit" / "audit.jsonl"
    assert verify_chain(log) >= 2
    forget = [r for r in read_records(log) if r["action"] == "user.forget"]
    assert len(forget) == 1 and forget[0]["actor"].startswith("apikey:")
    assert "user-3" not in log.read_text() and key not in log.read_text()
    assert any(r["action"] == "auth.failure" and r["details"]["status"] == 403 for r in read_records(log))


def test_unknown_user_is_not_found_and_tombstoned(make_client, artifacts):
    c, _ = make_client()
    r = c.delete("/v1/users/nobody-ever", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "not found" and r.json()["removed"] == {}
    assert pseudonymise_one("nobody-ever") in load_tombstones(tombstone_dir(artifacts))
    assert c.delete("/v1/users/%20%20", headers=ADMIN).status_code == 422


def test_keys_rotate_without_restart(tmp_path, monkeypatch):
    monkeypatch.setenv(AUDIT_ENV, str(tmp_path / "audit.jsonl"))
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"api_keys_sha256": [sha256_hex("old")], "admin_keys_sha256": []}))
    from omegaconf import OmegaConf
    cfg = OmegaConf.create({"enabled": True, "api_keys_sha256": [], "api_keys_env": "NO_SUCH_ENV",
                            "admin_keys_sha256": [], "admin_keys_env": "NO_SUCH_ENV", "rate_limit_per_s": 100,
                            "burst": 100, "keys_file": str(keys)})
    auth = Auth.from_cfg(cfg, environ={})
    assert auth.check("old")
    with pytest.raises(AuthError):
        auth.check("new")
    keys.write_text(json.dumps({"api_keys_sha256": [sha256_hex("new")], "admin_keys_sha256": [sha256_hex("adm")]}))
    auth._next_stat = 0.0   # skip the once-a-second wait
    assert auth.check("new") and auth.check("adm", admin=True)
    with pytest.raises(AuthError) as err:
        auth.check("old")
    assert err.value.status == 403
    keys.write_text("{not json")                 # a broken file keeps the keys read before
    auth._next_stat = 0.0
    assert auth.check("new")
    actions = [r["action"] for r in read_records(tmp_path / "audit.jsonl")]
    assert actions.count("auth.keys_reloaded") == 2 and "auth.failure" in actions
    keys.unlink()
    with pytest.raises(ValueError, match="keys_file"):
        Auth.from_cfg(cfg, environ={})


def test_auth_failures_are_throttled(tmp_path, monkeypatch):
    monkeypatch.setenv(AUDIT_ENV, str(tmp_path / "audit.jsonl"))
    auth = Auth(enabled=True, key_digests=frozenset({sha256_hex("k")}))
    for _ in range(50):
        with pytest.raises(AuthError):
            auth.check("wrong")
    with pytest.raises(AuthError):
        auth.check(None)
    recs = read_records(tmp_path / "audit.jsonl")
    assert [(r["details"]["status"], r["actor"]) for r in recs] == [(403, "apikey:" + sha256_hex("wrong")[:12]),
                                                                    (401, "anonymous")]
    assert "wrong" not in (tmp_path / "audit.jsonl").read_text().replace(sha256_hex("wrong")[:12], "")


def test_reload_is_audited(make_client, artifacts):
    c, _ = make_client()
    assert c.post("/admin/reload", json={"bundle": "b2"}, headers=ADMIN).status_code == 200
    recs = [r for r in read_records(artifacts / "audit" / "audit.jsonl") if r["action"] == "bundle.reload"]
    assert len(recs) == 1 and recs[0]["details"]["bundle"] == "b2"
    assert recs[0]["actor"] == "apikey:" + sha256_hex("test-admin-key")[:12]


def test_event_log_of_another_key_stops_the_service(make_client, artifacts):
    from features.privacy import KeyMismatchError, key_fingerprint

    make_client()
    sidecar = artifacts / "serve" / "events.csv.manifest.json"
    assert json.loads(sidecar.read_text())["pseudo_key_fingerprint"] == key_fingerprint()
    sidecar.write_text(json.dumps({"pseudo_key_fingerprint": "0000000000000000"}))
    with pytest.raises(KeyMismatchError, match="0000000000000000"):
        make_client()


def test_a_flood_of_random_keys_writes_few_audit_records(tmp_path, monkeypatch):
    monkeypatch.setenv(AUDIT_ENV, str(tmp_path / "audit.jsonl"))
    auth = Auth(enabled=True, key_digests=frozenset({sha256_hex("k")}))
    for i in range(200):
        with pytest.raises(AuthError):
            auth.check(f"random-{i}")
    assert len(read_records(tmp_path / "audit.jsonl")) <= 20
