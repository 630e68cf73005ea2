"""serving.api in-process (no Ray): every route, status codes, 422 naming the field, events that
show up in the next recommendation, campaigns, metrics, hot swap under concurrent requests."""
from __future__ import annotations

import threading
import time

import pytest

ADMIN_KEY = "test-admin-key"  # tests/serving/conftest.py sets it


def test_ops_routes_need_no_key(make_client):
    c, svc = make_client()
    c.headers.clear()
    assert c.get("/healthz").json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 200 and r.json()["bundle"] == "b1"
    devices = r.json()["devices"]  # where each component runs and why (serving.accelerators)
    assert {"encoder", "retrieval"} <= set(devices) and all(d["device"] in ("cuda", "cpu") for d in devices.values())
    assert all(d["reason"] for d in devices.values() if d["device"] == "cpu")
    assert "/v1/recommendations" in c.get("/openapi.json").json()["paths"]
    assert c.get("/docs").status_code == 200


def test_not_ready_until_bundle_loaded(make_client):
    c, svc = make_client(load=False)
    assert c.get("/readyz").status_code == 503
    r = c.post("/v1/recommendations", json={"user_id": "u", "k": 3})
    assert r.status_code == 503 and "not ready" in r.json()["detail"]


def test_auth_status_codes(make_client):
    c, _ = make_client("serve.auth.rate_limit_per_s=1", "serve.auth.burst=2")
    body = {"user_id": "user-3", "k": 3}
    assert c.post("/v1/recommendations", json=body, headers={"X-API-Key": ""}).status_code == 401
    c.headers.clear()
    assert c.post("/v1/recommendations", json=body).status_code == 401
    assert c.post("/v1/recommendations", json=body, headers={"X-API-Key": "nope"}).status_code == 403
    codes = [c.post("/v1/recommendations", json=body, headers={"Authorization": "Bearer second-key"}).status_code
             for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429


@pytest.mark.parametrize("body, field", [
    ({"user_id": "u", "k": 0}, ["body", "k"]),
    ({"user_id": "u", "k": 201}, ["body", "k"]),
    ({"user_id": "u", "k": "10"}, ["body", "k"]),
    ({"user_id": "u", "k": 5, "colour": "red"}, ["body", "colour"]),
    ({"k": 5}, ["body", "user_id"]),
    ({"user_id": None}, ["body", "user_id"]),
    ({"user_id": "u", "context": {"price_min": -1}}, ["body", "context", "price_min"]),
    ({"user_id": "u", "context": {"shop": "x"}}, ["body", "context", "shop"]),
    ({"user_id": "u", "recent_events": [{"item_id": "SKU000001", "event": "teleport"}]},
     ["body", "recent_events", 0, "event"]),
    ({"user_id": "u", "exclude": "SKU000001"}, ["body", "exclude"]),
])
def test_bad_requests_are_422_naming_the_field(make_client, body, field):
    c, _ = make_client()
    r = c.post("/v1/recommendations", json=body)
    assert r.status_code == 422
    assert any(d["loc"][: len(field)] == field for d in r.json()["detail"]), r.json()


def test_malformed_json_and_oversized_body(make_client):
    c, _ = make_client("serve.http.max_body_bytes=1000")
    r = c.post("/v1/recommendations", content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = c.post("/v1/events", json=[{"user_id": "u", "item_id": "SKU000001", "event": "view"}] * 50)
    assert r.status_code == 413
    r = c.post("/v1/recommendations", json={"user_id": "u", "context": {"price_min": 5, "price_max": 1}})
    assert r.status_code == 422 and "price_min" in r.text


def test_recommendations_known_and_cold_user(make_client):
    c, svc = make_client()
    r = c.post("/v1/recommendations", json={"user_id": "user-3", "k": 5})
    assert r.status_code == 200
    out = r.json()
    assert out["cold_start"] is False and out["bundle"] == "b1" and len(out["items"]) == 5
    assert set(out["items"][0]) == {"item_id", "score", "source", "reason"}
    r = c.post("/v1/recommendations", json={"user_id": 123456789, "k": 4, "context": {"category": "cat04"}})
    out = r.json()
    assert r.status_code == 200 and out["cold_start"] is True and len(out["items"]) == 4
    assert all(i["reason"] == "popular in cat04" for i in out["items"])


def test_event_is_reflected_in_next_recommendation(make_client, artifacts):
    c, svc = make_client()
    before = c.post("/v1/recommendations", json={"user_id": "fresh-user", "k": 3}).json()
    assert before["cold_start"] is True
    t0 = time.monotonic()
    r = c.post("/v1/events", json={"user_id": "fresh-user", "item_id": "SKU000007", "event": "view"})
    assert r.status_code == 202 and r.json() == {"accepted": 1}
    after = c.post("/v1/recommendations", json={"user_id": "fresh-user", "k": 3}).json()
    assert time.monotonic() - t0 < 1.0
    assert after["cold_start"] is False and after["items"][0]["reason"] == "similar to SKU000007 you viewed"
    r = c.post("/v1/events", json=[{"user_id": "fresh-user", "item_id": "NEW-ITEM", "event": "purchase",
                                    "ts": "2026-01-02T03:04:05Z"}] * 2)
    assert r.status_code == 202 and r.json() == {"accepted": 2}
    log_text = (artifacts / "serve" / "events.csv").read_text()
    assert "fresh-user" not in log_text and log_text.count("\n") == 4  # header + 3, pseudonymised keys
    assert svc.user_key("fresh-user") in log_text and "2026-01-02T03:04:05" in log_text


def test_events_survive_a_restart(make_client):
    c, _ = make_client()
    c.post("/v1/events", json={"user_id": "restart-user", "item_id": "SKU000007", "event": "view"})
    c2, _ = make_client()  # a new service on the same log: replays it
    assert c2.post("/v1/recommendations", json={"user_id": "restart-user", "k": 2}).json()["cold_start"] is False


def test_bad_events(make_client):
    c, _ = make_client("serve.store.max_events_per_request=2")
    ev = {"user_id": "u", "item_id": "SKU000001", "event": "view"}
    assert c.post("/v1/events", json=[ev] * 3).status_code == 422
    r = c.post("/v1/events", json={**ev, "event": "buy"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "event"
    assert c.post("/v1/events", json={**ev, "ts": "yesterday"}).status_code == 422
    assert c.post("/v1/events", json={**ev, "user_id": ""}).status_code == 422


def test_similar(make_client):
    c, _ = make_client()
    r = c.get("/v1/items/SKU000010/similar", params={"k": 3})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    r = c.get("/v1/items/NOPE/similar")
    assert r.status_code == 404 and "NOPE" in r.json()["detail"]
    assert c.get("/v1/items/SKU000010/similar", params={"k": 0}).status_code == 422


def test_campaigns(make_client, monkeypatch):
    c, svc = make_client()
    r = c.post("/v1/campaigns/winback/score", json={"user_ids": ["user-1"]})
    assert r.status_code == 404 and "winback" in r.json()["detail"]
    assert c.post("/v1/campaigns/..%2Fx/score", json={"user_ids": ["a"]}).status_code in (404, 422)
    assert c.post("/v1/campaigns/winback/score", json={"user_ids": []}).status_code == 422

    class Fake:
        campaign_id = "winback"

        def score(self, user_keys):
            return [0.25 if k == svc.user_key("user-1") else None for k in user_keys]

    monkeypatch.setattr(svc, "campaign_scorer", lambda cid: Fake() if cid == "winback" else None)
    r = c.post("/v1/campaigns/winback/score", json={"user_ids": ["user-1", "stranger"]})
    assert r.status_code == 200
    assert r.json() == {"campaign_id": "winback", "scores": [{"user_id": "user-1", "score": 0.25},
                                                             {"user_id": "stranger", "score": None}]}


def test_metrics_have_stage_histograms(make_client):
    c, _ = make_client()
    c.post("/v1/recommendations", json={"user_id": "user-3", "k": 3})
    c.post("/v1/recommendations", json={"user_id": "u", "k": 0})
    text = c.get("/metrics").text
    for stage in ("retrieve", "rank", "rules"):
        assert f'shoprec_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'shoprec_requests_total{method="POST",route="/v1/recommendations",status="200"}' in text
    assert 'shoprec_errors_total{route="/v1/recommendations",status="422"}' in text
    assert "user-3" not in text


def test_degraded_answer_is_flagged(make_client):
    c, _ = make_client("serve.budget_ms.retrieve=0")
    out = c.post("/v1/recommendations", json={"user_id": "user-3", "k": 3}).json()
    assert out["degraded"] == "retrieve" and {i["source"] for i in out["items"]} == {"popular_fallback"}


def test_admin_reload_and_hot_swap_without_failed_requests(make_client, artifacts):
    c, svc = make_client()
    assert c.post("/admin/reload", json={"bundle": "b2"}).status_code == 403  # a plain key is not admin
    statuses, bundles, stop = [], set(), threading.Event()

    def load():
        while not stop.is_set():
            r = c.post("/v1/recommendations", json={"user_id": "user-3", "k": 5})
            statuses.append(r.status_code)
            bundles.add(r.json().get("bundle"))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    r = c.post("/admin/reload", json={"bundle": "b2"}, headers={"X-API-Key": ADMIN_KEY})
    assert r.status_code == 200 and r.json() == {"bundle": "b2"}
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert statuses and set(statuses) == {200} and bundles == {"b1", "b2"}
    assert (artifacts / "bundles" / "LATEST").read_text().strip() == "b2"  # the other replicas follow
    r = c.post("/admin/reload", json={"bundle": "missing"}, headers={"X-API-Key": ADMIN_KEY})
    assert r.status_code == 409 and "missing" in r.json()["detail"]
    assert c.get("/readyz").json()["bundle"] == "b2"  # the old bundle stays after a failed swap


def test_watcher_swaps_when_latest_changes(make_cfg, artifacts):
    from serving.service import Service

    svc = Service(make_cfg("serve.watch_interval_s=0.1").serve)
    try:
        assert svc.wait_ready(30) and svc.bundle.name == "b1"
        (artifacts / "bundles" / "LATEST").write_text("b2\n")
        deadline = time.monotonic() + 20
        while svc.bundle.name != "b2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.bundle.name == "b2"
    finally:
        svc.stop()


# --- hostile input: every one a 4xx naming the field, never a 500; the error body is strict JSON -----
def raw_post(c, path, text):
    """POST ``text`` as it is (it may hold NaN, Infinity, 1e309 or \\ud800 escapes that json= would not send)."""
    return c.post(path, content=text.encode(), headers={"content-type": "application/json"})


def strict_json(r):
    import json

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token} in {r.text[:200]}")

    return json.loads(r.content.decode("utf-8"), parse_constant=refuse)


EV = '"item_id": "SKU000001", "event": "view"'


@pytest.mark.parametrize("path, text, loc", [
    ("/v1/events", '{"user_id": "\\ud800", ' + EV + '}', ["body", "user_id"]),
    ("/v1/events", '{"user_id": "u", "item_id": "x\\udfff", "event": "view"}', ["body", "item_id"]),
    ("/v1/events", '{"user_id": "u\\u0000", ' + EV + '}', ["body", "user_id"]),
    ("/v1/events", '{"user_id": "u", "item_id": "a\\nb", "event": "view"}', ["body", "item_id"]),
    ("/v1/events", '{"user_id": "u", ' + EV + ', "ts": "0001-01-01T00:00:00+01:00"}', ["body", "ts"]),
    ("/v1/events", '{"user_id": "u", ' + EV + ', "ts": "9999-12-31T23:30:00-01:00"}', ["body", "ts"]),
    ("/v1/events", '{"user_id": "u", ' + EV + ', "ts": "1677-09-21T00:00:00Z"}', ["body", "ts"]),
    ("/v1/events", '{"user_id": "u", ' + EV + ', "ts": "2263-01-01T00:00:00Z"}', ["body", "ts"]),
    ("/v1/events", '{"user_id": "u", ' + EV + ', "ts": NaN}', ["body", "ts"]),
    ("/v1/events", '{"user_id": "u", ' + EV + ', "ts": 1e309}', ["body", "ts"]),
    ("/v1/recommendations", '{"user_id": "\\ud800", "k": 3}', ["body", "user_id"]),
    ("/v1/recommendations", '{"user_id": "u", "context": {"price_min": NaN}}', ["body", "context", "price_min"]),
    ("/v1/recommendations", '{"user_id": "u", "context": {"price_max": Infinity}}', ["body", "context", "price_max"]),
    ("/v1/recommendations", '{"user_id": "u", "context": {"price_max": 1e309}}', ["body", "context", "price_max"]),
    ("/v1/recommendations", '{"user_id": "u", "context": {"price_min": -Infinity}}', ["body", "context", "price_min"]),
    ("/v1/recommendations", '{"user_id": "u", "k": NaN}', ["body", "k"]),
    ("/v1/recommendations", '{"user_id": "u", "context": {"price_min": "5"}}', ["body", "context", "price_min"]),
    ("/v1/recommendations", '{"user_id": "u", "context": {"price_max": true}}', ["body", "context", "price_max"]),
    ("/v1/recommendations", '{"user_id": "u", "context": {"category": "\\ud800"}}', ["body", "context", "category"]),
    ("/v1/recommendations", '{"user_id": "u", "exclude": ["ok", "\\ud800"]}', ["body", "exclude", 1]),
    ("/v1/recommendations", '{"user_id": "u", "recent_events": [{"item_id": "x", "ts": "0001-01-01T00:00:00+01:00"}]}',
     ["body", "recent_events", 0, "ts"]),
    ("/v1/campaigns/winback/score", '{"user_ids": ["a", "\\ud800"]}', ["body", "user_ids", 1]),
])
def test_hostile_input_is_a_4xx_naming_the_field(make_client, path, text, loc):
    c, svc = make_client()
    r = raw_post(c, path, text)
    assert r.status_code == 422, r.text
    detail = strict_json(r)["detail"]
    assert any(d["loc"] == loc for d in detail), detail
    assert svc.store.n_events == 0


def test_one_bad_event_rejects_its_batch_naming_index_and_field(make_client, artifacts):
    c, svc = make_client()
    good = '{"user_id": "u", ' + EV + '}'
    for bad, field in [('{"user_id": "\\ud800", ' + EV + '}', "user_id"),
                       ('{"user_id": "u", ' + EV + ', "ts": "0001-01-01T00:00:00+01:00"}', "ts"),
                       ('{"user_id": "u", "item_id": "SKU000001", "event": "teleport"}', "event")]:
        r = raw_post(c, "/v1/events", f"[{good}, {good}, {bad}, {good}]")
        assert r.status_code == 422
        assert [d["loc"] for d in strict_json(r)["detail"]] == [["body", 2, field]]
    assert svc.store.n_events == 0  # all or nothing: no event of a refused batch is logged
    assert raw_post(c, "/v1/events", f"[{good}, {good}]").status_code == 202 and svc.store.n_events == 2


def test_event_times_are_stored_in_utc_and_need_their_offset(make_client):
    c, svc = make_client()
    body = [{"user_id": "tz", "item_id": "SKU000001", "event": "view", "ts": "2026-01-01T01:00:00+01:00"},
            {"user_id": "tz", "item_id": "SKU000002", "event": "view", "ts": "2025-12-31T23:00:00.000000999-01:00"}]
    assert c.post("/v1/events", json=body).status_code == 202
    assert [e.ts for e in svc.store.events_of(svc.user_key("tz"))] == [1767225600.0] * 2
    for ts in ("2026-01-01T00:00:00", "2026-01-01", 1767225600, "2026-02-30T00:00:00Z", "1970-06-01T00:00:00Z"):
        r = c.post("/v1/events", json={**body[0], "ts": ts})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "ts"], (ts, r.text)


def test_docs_work_offline(make_client):
    """/docs names no outside host, and every asset it names is served here."""
    import re

    c, _ = make_client()
    c.headers.clear()
    page = c.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert not re.search(r"(?:src|href)=[\"']?(?:https?:)?//", page.text), page.text
    assets = re.findall(r"(?:src|href)=[\"']([^\"']+)", page.text)
    assert len(assets) >= 3
    for a in assets:
        r = c.get(a)
        assert r.status_code == 200 and len(r.content) > 500, a
    assert "SwaggerUIBundle" in c.get("/docs/static/swagger-ui-bundle.js").text
    assert c.get("/docs/static/..%2Fapi.py").status_code == 404
    assert c.get("/redoc").status_code == 404  # ReDoc would load its script from a CDN


def test_event_log_repairs_show_in_metrics(make_client, artifacts):
    log = artifacts / "serve" / "events.csv"
    log.parent.mkdir(parents=True)
    log.write_text(",".join(("user_key", "item_key", "event", "ts", "received_at", "event_id")) + '\ndead,"SKU')
    c, svc = make_client()
    text = c.get("/metrics").text
    assert "shoprec_event_log_torn_repairs_total 1.0" in text and "shoprec_event_log_torn_bytes_total 9.0" in text
