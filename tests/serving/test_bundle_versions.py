"""Bundle versions: list, promote, roll back (module, CLI, admin routes), and a rollback under load that fails
no request."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from serving import bundles as cli
from serving.bundle import BundleError, latest_name, publish_derived
from serving.bundle import versions
from tests.serving.conftest import ADMIN_KEY


@pytest.fixture()
def three(artifacts) -> Path:
    """bundles/ with b1 (LATEST), b2 and b1.1 (derived from b1, carrying figures)."""
    root = artifacts / "bundles"
    publish_derived(root / "b1", write=lambda d: (d / "note.txt").write_text("x"), name="b1.1", latest=False,
                    manifest_updates={"metrics": {"test/ndcg@10": 0.25, "test/hr@10": 0.5},
                                      "trained_on": {"data": "synthetic", "split": "temporal"},
                                      "index": {"recall_at_k": 0.99, "recall_k": 100, "backend": "faiss"}})
    return root


def test_list_marks_serving_and_carries_figures_with_protocol(three):
    rows = {r["version"]: r for r in versions.list_versions(three)}
    assert set(rows) == {"b1", "b2", "b1.1"}
    assert [v for v, r in rows.items() if r["serving"]] == ["b1"]
    assert rows["b1.1"]["parent"] == "b1" and rows["b1"]["parent"] is None
    figs = rows["b1.1"]["figures"]
    assert figs["retriever"]["ndcg@10"] == 0.25 and figs["retriever"]["protocol"]["split"] == "temporal"
    assert figs["index"]["recall"] == 0.99


def test_promote_and_rollback_walk_back_through_promotions(three):
    versions.promote(three, "b2")
    versions.promote(three, "b1.1")
    assert latest_name(three) == "b1.1"
    assert versions.rollback(three)["version"] == "b2"
    assert versions.rollback(three)["version"] == "b1"        # b2 was promoted while b1 was serving
    with pytest.raises(BundleError, match="no version was serving before 'b1'"):
        versions.rollback(three)
    assert versions.rollback(three, to="b1.1")["version"] == "b1.1"
    actions = [(r["action"], r["from"], r["version"]) for r in versions.history(three)]
    assert actions == [("promote", "b1", "b2"), ("promote", "b2", "b1.1"), ("rollback", "b1.1", "b2"),
                       ("rollback", "b2", "b1"), ("rollback", "b1", "b1.1")]


def test_a_corrupt_or_unknown_version_is_refused_and_latest_stays(three):
    (three / "b1.1" / "note.txt").write_text("tampered")  # its own file (b1.1 is a real folder)
    with pytest.raises(BundleError, match="note.txt: sha256 differs"):
        versions.promote(three, "b1.1")
    with pytest.raises(BundleError, match="'nope': not found"):
        versions.promote(three, "nope")
    assert latest_name(three) == "b1"
    bad = {r["version"]: r for r in versions.list_versions(three, verify=True)}
    assert bad["b1.1"]["intact"] is False and bad["b2"]["intact"] is True


def test_cli_list_promote_rollback(three, capsys):
    assert cli.main(["--bundles", str(three), "promote", "b2"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["version"] == "b2"
    assert cli.main(["--bundles", str(three), "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("* b2") for line in out) and json.loads(out[-1])["serving"] == "b2"
    assert cli.main(["--bundles", str(three), "rollback"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["version"] == "b1"
    with pytest.raises(SystemExit) as e:
        cli.main(["--bundles", str(three), "promote", "../etc"])
    assert e.value.code == 2 and "expected a bundle folder name" in capsys.readouterr().err


def test_admin_routes_need_the_admin_key(make_client, three):
    client, svc = make_client()
    assert client.get("/admin/versions").status_code == 403          # a plain API key is not enough
    admin = {"X-API-Key": ADMIN_KEY}
    assert {r["version"] for r in client.get("/admin/versions", headers=admin).json()} == {"b1", "b2", "b1.1"}
    r = client.post("/admin/promote", json={"version": "b2"}, headers=admin)
    assert r.status_code == 200 and svc.bundle.name == "b2" and latest_name(three) == "b2"
    assert client.post("/admin/promote", json={"version": "nope"}, headers=admin).status_code == 409
    assert client.post("/admin/promote", json={"version": "../x"}, headers=admin).status_code == 422
    r = client.post("/admin/rollback", headers=admin)
    assert r.status_code == 200 and r.json()["version"] == "b1" and svc.bundle.name == "b1"


def test_rollback_under_load_fails_no_request(make_client, three):
    """Requests run on two threads while the admin routes and the CLI promote and roll back (the second replica-like
    path: the LATEST watcher): every request answers 200, and answers come from more than one version."""
    client, svc = make_client("serve.watch_interval_s=0.05")
    admin = {"X-API-Key": ADMIN_KEY}
    stop = threading.Event()
    statuses: list[int] = []
    served: set[str] = set()

    def drive(i: int) -> None:
        n = 0
        while not stop.is_set():
            r = client.post("/v1/recommendations", json={"user_id": f"user-{(i * 7 + n) % 50}", "k": 10})
            statuses.append(r.status_code)
            if r.status_code == 200:
                served.add(r.json()["bundle"])
            n += 1

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            assert client.post("/admin/promote", json={"version": "b2"}, headers=admin).status_code == 200
            time.sleep(0.15)
            assert client.post("/admin/rollback", headers=admin).status_code == 200
            time.sleep(0.15)
            versions.promote(three, "b1.1")      # the CLI path: the watcher swaps
            time.sleep(0.3)
            versions.rollback(three)
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(statuses) > 20 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert {"b1", "b2", "b1.1"} <= served


def test_rollback_after_a_publish_moved_latest_returns_to_the_last_promoted(three):
    versions.promote(three, "b2")
    publish_derived(three / "b2", write=lambda d: (d / "more.txt").write_text("y"), name="b2.1")  # moves LATEST
    assert latest_name(three) == "b2.1"
    assert versions.rollback_target(three) == "b2"
