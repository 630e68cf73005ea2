"""The driver process of ``tests/serving/test_multinode.py``: connected to the two-node test cluster, as an
operator's script would be, while the pytest process stays free of it (a process holds one Ray connection,
and the other Ray tests of the session hold a local one).

``python -m tests.serving.multinode_driver GCS_ADDRESS`` reads one JSON command per line on stdin and
answers each with one line ``MULTINODE {json}`` on stdout (anything else on stdout is Ray's chatter):

- ``{"cmd": "nodes"}`` -> ``{"node_a": node id, "node_b": node id}`` (the node offering each resource);
- ``{"cmd": "deploy", "http_port": P, "apps": {"mn_a": "node_a", ...}, "overrides": [...], "wait": bool}``:
  Ray Serve with an HTTP proxy on every node (the head's on ``127.0.0.1:P``), one ingress app per entry at
  ``/<app>``, its one replica placed by the custom resource (``serve.ingress.resources``); ``wait``: answer
  once the applications run (else once they are submitted);
- ``{"cmd": "kill", "app": "mn_b"}``: ``ray.kill`` of the app's replica actor (Serve starts another);
- ``{"cmd": "audience", "job": "job.pkl"}``: ``build_audience_ray`` with the pickled keyword arguments;
- ``{"cmd": "quit"}``.

An exception answers ``{"error": "..."}`` and the driver goes on reading.
"""
from __future__ import annotations

import json
import pickle
import sys
import traceback
from typing import Any

import ray

PREFIX = "MULTINODE "


def nodes() -> dict[str, str]:
    out = {}
    for n in ray.nodes():
        for res in ("node_a", "node_b"):
            if n["Alive"] and res in n["Resources"]:
                out[res] = n["NodeID"]
    return out


def deploy(http_port: int, apps: dict[str, str], overrides: list[str], wait: bool = True) -> dict[str, Any]:
    from ray import serve

    from serving.app import build_app, compose_config

    logging_config = {"enable_access_log": False, "log_level": "WARNING"}
    serve.start(proxy_location="EveryNode", http_options={"host": "127.0.0.1", "port": int(http_port)},
                logging_config=logging_config)
    targets = [serve.RunTarget(build_app(compose_config([*overrides, f"+serve.ingress.resources.{resource}=1"])),
                               name=name, route_prefix=f"/{name}", logging_config=logging_config)
               for name, resource in apps.items()]
    serve.run_many(targets, wait_for_applications_running=wait)   # both applications at once
    return {"apps": sorted(apps)}


def kill(app: str) -> dict[str, Any]:
    """Kill the app's replica actors (named ``SERVE_REPLICA::<app>#<deployment>#<id>`` in namespace serve)."""
    killed = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == "serve" and actor["name"].startswith(f"SERVE_REPLICA::{app}#"):
            ray.kill(ray.get_actor(actor["name"], namespace="serve"), no_restart=True)
            killed.append(actor["name"])
    return {"killed": killed}


def audience(job: str) -> dict[str, Any]:
    from serving.campaigns.ray_audience import build_audience_ray

    with open(job, "rb") as f:
        kwargs = pickle.load(f)
    res = build_audience_ray(**kwargs)
    return {"n_rows": res.n_rows, "steps": res.steps, "send_date": res.send_date, "timings_s": res.timings_s}


def main(address: str) -> None:
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    commands = {"nodes": nodes, "deploy": deploy, "kill": kill, "audience": audience}
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request.pop("cmd")
        if cmd == "quit":
            break
        try:
            answer = commands[cmd](**request)
        except Exception:  # noqa: BLE001 - the test reads the error and fails with it
            answer = {"error": traceback.format_exc()}
        print(PREFIX + json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
