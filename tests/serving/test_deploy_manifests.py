"""The operators' files in deploy/: the Serve config and the KubeRay RayService parse, validate against
Ray Serve's own schema, name importable code and real Hydra overrides, and embed the same applications;
the ingress offers what they configure (autoscaling, health check, user_config)."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIG = REPO / "deploy" / "serve_config.yaml"
RAYSERVICE = REPO / "deploy" / "kuberay" / "rayservice.yaml"


def _validate(config: dict):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(config)


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


def test_serve_config_is_not_a_hydra_choice():
    assert not (REPO / "conf" / "serve" / "serve_config.yaml").exists()


def test_serve_config_validates_and_resolves(serve_config):
    from serving.app import compose_config

    schema = _validate(serve_config)
    assert [a.name for a in schema.applications] == ["shoprec"]
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        builder = getattr(importlib.import_module(module), attr)
        assert callable(builder)
        cfg = compose_config(app.args["overrides"])   # every override is a real key of conf/
        assert cfg.serve.app_name == app.name
        ingress = {d.name: d for d in app.deployments}["ingress"]
        auto = ingress.autoscaling_config
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"] and auto["target_ongoing_requests"] > 0
        assert ingress.health_check_period_s > 0 and ingress.health_check_timeout_s > 0
        assert set(ingress.user_config) == {"bundle_version"}


def test_the_ingress_offers_what_the_config_configures():
    from serving.app import Ingress

    cls = Ingress.func_or_class
    for method in ("reconfigure", "check_health"):
        assert callable(getattr(cls, method, None)), method
    assert Ingress.name == "ingress"


def test_rayservice_embeds_the_serve_config(rayservice, serve_config):
    import ray

    assert rayservice["apiVersion"] == "ray.io/v1" and rayservice["kind"] == "RayService"
    spec = rayservice["spec"]
    embedded = yaml.safe_load(spec["serveConfigV2"])
    _validate(embedded)
    assert embedded["applications"] == serve_config["applications"]
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__


def test_rayservice_pods_are_complete(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert len(groups) >= 2
    for g in cluster["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    for g in groups:
        # KubeRay passes rayStartParams to `ray start` as strings: a bare number or boolean is refused
        assert all(isinstance(v, str) for v in g["rayStartParams"].values()), g["rayStartParams"]
        pod = g["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            assert c["image"], c["name"]
            assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"]
            env = {e["name"]: e for e in c["env"]}
            # one pseudonymisation key and one set of API keys for every replica, from a Secret
            for name in ("SHOPREC_PSEUDO_KEY", "SHOPREC_API_KEYS"):
                assert "secretKeyRef" in env[name]["valueFrom"], name
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert env["SHOPREC_ARTIFACTS"]["value"] in mounts   # bundles on a volume every pod sees
            assert mounts[env["SHOPREC_ARTIFACTS"]["value"]] in volumes
