"""The Ray Serve app over HTTP: the in-process pipeline app and the app with a separate
``@serve.batch`` ranker deployment, side by side on one Ray instance (one per test session)."""
from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.ray

KEY = {"X-API-Key": "test-api-key"}


@pytest.fixture(scope="module")
def apps(serve_http, make_session_cfg):
    from ray import serve

    from serving.app import build_app

    cfg_in = make_session_cfg("serve.ingress.num_cpus=0.25")
    cfg_dep = make_session_cfg("serve.ranker.mode=deployment", "serve.ingress.num_cpus=0.25", "serve.ranker.num_cpus=0.25")
    quiet = {"enable_access_log": False, "log_level": "WARNING"}
    serve.run(build_app(cfg_in), name="inproc", route_prefix="/inproc", blocking=False, logging_config=quiet)
    serve.run(build_app(cfg_dep), name="split", route_prefix="/split", blocking=False, logging_config=quiet)
    urls = {"inproc": f"{serve_http}/inproc", "split": f"{serve_http}/split"}
    with httpx.Client(timeout=30, trust_env=False) as c:
        for url in urls.values():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if c.get(url + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                pytest.fail(f"{url}/readyz never became ready")
    yield urls
    serve.delete("inproc")
    serve.delete("split")


@pytest.mark.parametrize("app", ["inproc", "split"])
def test_recommend_over_http(apps, app):
    url = apps[app]
    with httpx.Client(timeout=30, trust_env=False) as c:
        assert c.post(url + "/v1/recommendations", json={"user_id": "user-3", "k": 5}).status_code == 401
        r = c.post(url + "/v1/recommendations", json={"user_id": "user-3", "k": 5}, headers=KEY)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["degraded"] is None and len(out["items"]) == 5 and out["bundle"] == "b1"
        r = c.post(url + "/v1/recommendations", json={"user_id": "user-3", "k": 999}, headers=KEY)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "k"]
        assert "/v1/events" in c.get(url + "/openapi.json").json()["paths"]
        assert "shoprec_stage_seconds" in c.get(url + "/metrics").text


def test_both_apps_rank_alike(apps):
    """The split app ranks on the ranker deployment with the same model: same answer."""
    with httpx.Client(timeout=30, trust_env=False) as c:
        a = c.post(apps["inproc"] + "/v1/recommendations", json={"user_id": "user-8", "k": 8}, headers=KEY).json()
        b = c.post(apps["split"] + "/v1/recommendations", json={"user_id": "user-8", "k": 8}, headers=KEY).json()
    assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
    assert b["degraded"] is None


def test_event_reflected_within_a_second_over_http(apps):
    url = apps["inproc"]
    with httpx.Client(timeout=30, trust_env=False) as c:
        t0 = time.monotonic()
        r = c.post(url + "/v1/events", json={"user_id": "http-user", "item_id": "SKU000007", "event": "view"},
                   headers=KEY)
        assert r.status_code == 202
        out = c.post(url + "/v1/recommendations", json={"user_id": "http-user", "k": 3}, headers=KEY).json()
        assert time.monotonic() - t0 < 1.0
        assert out["cold_start"] is False and out["items"][0]["reason"] == "similar to SKU000007 you viewed"
        # the other app (another replica, same log) sees it too
        out = c.post(apps["split"] + "/v1/recommendations", json={"user_id": "http-user", "k": 3}, headers=KEY).json()
        assert out["cold_start"] is False
