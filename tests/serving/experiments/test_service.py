"""The service runs experiments: answers say experiment/variant, variants are served as configured,
assignment survives a restart, events are attributed, and a bad edit keeps the previous configuration."""
from __future__ import annotations

import json

import yaml

from tests.serving.experiments.conftest import spec_dict, write_spec


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def test_answers_carry_experiment_and_variant_and_are_logged(make_exp_client, tmp_path):
    c, svc = make_exp_client(spec_dict())
    got = {}
    for u in range(30):
        r = c.post("/v1/recommendations", json={"user_id": f"user-{u}", "k": 5})
        assert r.status_code == 200
        j = r.json()
        assert j["experiment"] == "ab" and j["variant"] in ("popular", "trained") and len(j["request_id"]) == 32
        got[f"user-{u}"] = j
        if j["variant"] == "popular":
            assert {i["source"] for i in j["items"]} == {"popular"}
    assert {j["variant"] for j in got.values()} == {"popular", "trained"}
    log = _lines(tmp_path / "exp_logs" / "exposures.jsonl")
    assert len(log) == 30
    by_rid = {x["request_id"]: x for x in log}
    for j in got.values():
        x = by_rid[j["request_id"]]
        assert x["variant"] == j["variant"] and x["items"] == [i["item_id"] for i in j["items"]]
        assert x["bundle"] == "b1" and x["user_key"] and x["user_key"] != "user-"  # pseudonymised
    assert all(not x["user_key"].startswith("user-") for x in log)


def test_same_variant_after_a_restart_and_session_id_for_anonymous_visitors(make_exp_client):
    c1, s1 = make_exp_client(spec_dict())
    first = {u: c1.post("/v1/recommendations", json={"user_id": u, "k": 3}).json()["variant"]
             for u in (f"user-{i}" for i in range(20))}
    s1.stop()
    c2, _ = make_exp_client(spec_dict())
    again = {u: c2.post("/v1/recommendations", json={"user_id": u, "k": 3}).json()["variant"] for u in first}
    assert again == first
    # an anonymous visitor keeps the variant of its session id, whatever user_id the storefront sends
    v = {c2.post("/v1/recommendations", json={"user_id": f"anon-{i}", "session_id": "device-42", "k": 3}).json()["variant"]
         for i in range(10)}
    assert len(v) == 1


def test_variant_bundle_version_and_overrides(make_exp_client):
    d = spec_dict(variants=[{"name": "popular", "weight": 0.5, "bundle": "b2", "overrides": {"ranker": False}},
                            {"name": "trained", "weight": 0.5, "overrides": {"n_candidates": 20,
                                                                             "rules": {"max_per_category": 1}}}])
    c, svc = make_exp_client(d)
    bundles = {}
    for u in range(30):
        j = c.post("/v1/recommendations", json={"user_id": f"user-{u}", "k": 5}).json()
        bundles.setdefault(j["variant"], set()).add(j["bundle"])
    assert bundles == {"popular": {"b2"}, "trained": {"b1"}}
    assert set(svc.experiments.bundles) == {"b2"}
    pipe = svc.experiments.pipeline(_assignment(svc, "trained"), svc.recommender)
    assert pipe.settings.n_candidates == 20 and pipe.settings.rules.max_per_category == 1
    assert svc.recommender.settings.n_candidates == 100  # the service's own settings are untouched
    pop = svc.experiments.pipeline(_assignment(svc, "popular"), svc.recommender)
    assert pop.bundle.name == "b2" and pop.bundle.ranker is None and svc.experiments.bundles["b2"].ranker is not None


def _assignment(svc, variant):
    from serving.experiments.assignment import Assignment

    spec = svc.experiments.specs[0]
    return Assignment(spec.name, variant, spec, "x")


def test_events_with_request_id_are_attributed(make_exp_client, tmp_path):
    c, _ = make_exp_client(spec_dict())
    j = c.post("/v1/recommendations", json={"user_id": "user-1", "k": 5}).json()
    item = j["items"][2]["item_id"]
    r = c.post("/v1/events", json=[{"user_id": "user-1", "item_id": item, "event": "click",
                                    "request_id": j["request_id"], "position": 2},
                                   {"user_id": "user-1", "item_id": item, "event": "view"}])
    assert r.status_code == 202
    att = _lines(tmp_path / "exp_logs" / "attributions.jsonl")
    assert len(att) == 1 and att[0]["request_id"] == j["request_id"] and att[0]["position"] == 2
    bad = c.post("/v1/events", json={"user_id": "u", "item_id": item, "event": "click", "request_id": "x y"})
    assert bad.status_code == 422 and "request_id" in json.dumps(bad.json())


def test_bad_edit_keeps_the_previous_configuration(make_exp_client, exp_dir):
    c, svc = make_exp_client(spec_dict())
    before = c.post("/v1/recommendations", json={"user_id": "user-7", "k": 3}).json()["variant"]
    for bad in (spec_dict(end="2000-01-01T00:00:00Z"),
                spec_dict(variants=[{"name": "popular", "weight": 0.7}, {"name": "trained", "weight": 0.7}]),
                spec_dict(variants=[{"name": "popular", "weight": 0.5}, {"name": "trained", "weight": 0.5,
                                                                         "bundle": "no-such-version"}])):
        write_spec(exp_dir, bad)
        assert svc.experiments.reload() is False
        assert "ab.yaml" in svc.experiments.error or "'ab'" in svc.experiments.error
        r = c.post("/v1/recommendations", json={"user_id": "user-7", "k": 3})
        assert r.status_code == 200 and r.json()["variant"] == before and r.json()["experiment"] == "ab"
    assert "variants.1.bundle" in svc.experiments.error
    good = spec_dict(variants=[{"name": "popular", "weight": 0.5}, {"name": "trained", "weight": 0.5}],
                     salt="salt-ab-0002")
    write_spec(exp_dir, good)
    assert svc.experiments.reload() is True and svc.experiments.error is None
    assert svc.experiments.specs[0].salt == "salt-ab-0002"


def test_reused_salt_of_another_experiment_file_is_refused(make_client, exp_dir, tmp_path):
    import pytest

    from serving.experiments.spec import ExperimentConfigError

    write_spec(exp_dir, spec_dict("old", "salt-ab-0001", end="2021-01-01T00:00:00Z"))
    write_spec(exp_dir, spec_dict("ab", "salt-ab-0001"))
    with pytest.raises(ExperimentConfigError, match="salt: 'salt-ab-0001' is already the salt of experiment 'old'"):
        make_client(f"serve.experiments.dir={exp_dir}", "serve.experiments.active=[ab]",
                    f"serve.experiments.log_dir={tmp_path / 'l'}", "serve.experiments.watch_interval_s=0")


def test_outside_any_experiment_nothing_changes(make_exp_client, tmp_path):
    c, _ = make_exp_client(spec_dict(traffic={"offset": 0.0, "share": 0.01}))
    bodies = [c.post("/v1/recommendations", json={"user_id": f"user-{u}", "k": 3}).json() for u in range(40)]
    outside = [b for b in bodies if "experiment" not in b]
    assert len(outside) >= 35 and all("variant" not in b and "request_id" not in b for b in outside)


def test_exposure_log_failure_answers_outside_the_experiment(make_exp_client, monkeypatch):
    c, svc = make_exp_client(spec_dict())

    def fail(_):
        raise OSError("disk full")

    monkeypatch.setattr(svc.experiments.logs.exposures, "append", fail)
    r = c.post("/v1/recommendations", json={"user_id": "user-1", "k": 3})
    assert r.status_code == 200 and "experiment" not in r.json() and svc.experiments.n_log_failures == 1


def test_yaml_dump_of_spec_is_what_was_written(exp_dir):
    p = write_spec(exp_dir, spec_dict())
    assert yaml.safe_load(p.read_text())["salt"] == "salt-ab-0001"
