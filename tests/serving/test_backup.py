"""Backup and restore: checksummed, a corrupted backup refused naming the file, a restore into a fresh folder serves
the same recommendations."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from serving import backup as bk
from tests.serving.conftest import API_KEY


def _shop(root):
    from training.synthetic_bundle import SyntheticBundleSpec, build_synthetic_bundle

    build_synthetic_bundle(root / "bundles" / "v1", SyntheticBundleSpec(seed=3, n_items=200, n_users=50))
    (root / "serve").mkdir(parents=True)
    (root / "serve" / "events.csv").write_text("user_key,item_key,event,ts,received_at,event_id\n")
    (root / "privacy" / "tombstones").mkdir(parents=True)
    (root / "privacy" / "tombstones" / "keys.txt").write_text("0123456789abcdef\n")
    return root


def _recs(artifacts):
    from serving.api import create_app
    from serving.app import compose_config
    from serving.service import Service

    cfg = compose_config([f"paths.artifacts={artifacts}", "serve.watch_interval_s=0", "serve.budget_ms.retrieve=2000",
                          "serve.budget_ms.rank=2000", "serve.budget_ms.rules=2000"])
    svc = Service(cfg.serve, background=False)
    try:
        c = TestClient(create_app(svc), headers={"X-API-Key": API_KEY})
        return [[i["item_id"] for i in c.post("/v1/recommendations", json={"user_id": f"user-{u}", "k": 10}).json()
                 ["items"]] for u in range(5)]
    finally:
        svc.stop()


def test_backup_restore_serves_the_same_recommendations(tmp_path):
    shop = _shop(tmp_path / "shop")
    out = bk.backup(shop, tmp_path / "backups")
    m = bk.verify(out)
    assert set(m["parts"]) == {"bundles", "serve", "privacy"}
    assert "privacy/tombstones/keys.txt" in m["files"] and "bundles/LATEST" in m["files"]
    fresh = tmp_path / "fresh"
    res = bk.restore(out, fresh)
    assert res["files"] == len(m["files"])
    assert (fresh / "privacy" / "tombstones" / "keys.txt").read_text() == "0123456789abcdef\n"
    assert _recs(fresh) == _recs(shop)
    with pytest.raises(ValueError, match="not empty"):
        bk.restore(out, fresh)                       # no silent overwrite


def test_a_corrupted_backup_is_refused_naming_the_file(tmp_path, capsys):
    shop = _shop(tmp_path / "shop")
    out = bk.backup(shop, tmp_path / "backups")
    bad = out / "bundles" / "v1" / "items.parquet"
    bad.write_bytes(bad.read_bytes()[:-1] + b"\0")
    with pytest.raises(bk.BackupError, match="v1/items.parquet: sha256 differs"):
        bk.restore(out, tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "bundles").exists()          # nothing restored
    with pytest.raises(SystemExit) as e:
        bk.main(["verify", str(out)])
    assert e.value.code == 2 and "items.parquet" in capsys.readouterr().err
    (out / "bundles" / "v1" / "extra.txt").write_text("x")
    bad.unlink()
    with pytest.raises(bk.BackupError, match="items.parquet: listed in the backup manifest but missing"):
        bk.verify(out)


def test_cli_backup_prints_json(tmp_path, capsys):
    shop = _shop(tmp_path / "shop")
    assert bk.main(["backup", "--artifacts", str(shop), "--to", str(tmp_path / "b"), "--parts", "bundles"]) == 0
    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["parts"] == ["bundles"] and last["files"] > 5
    with pytest.raises(SystemExit):
        bk.main(["backup", "--artifacts", str(shop), "--to", str(tmp_path / "b"), "--parts", "secrets"])
