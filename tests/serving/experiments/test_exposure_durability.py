"""An exposure acknowledged (the response sent) before a kill -9 is in the log after a restart."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from tests.serving.experiments.conftest import spec_dict, write_spec

SERVE = textwrap.dedent("""
    import json, sys, time
    from fastapi.testclient import TestClient
    from serving.api import create_app
    from serving.app import compose_config
    from serving.service import Service

    cfg = compose_config(json.loads(sys.argv[1]))
    svc = Service(cfg.serve, load=True, background=False)
    c = TestClient(create_app(svc), headers={"X-API-Key": "test-api-key"})
    for i in range(int(sys.argv[2])):
        body = c.post("/v1/recommendations", json={"user_id": f"user-{i}", "k": 4}).json()
        print(body["request_id"], flush=True)   # acknowledged: the storefront has the answer
    print("done", flush=True)
    time.sleep(600)                              # killed here, with the fsync thread never run
""")


def test_acknowledged_exposures_survive_kill_9(artifacts, tmp_path):
    exp_dir = tmp_path / "conf"
    write_spec(exp_dir, spec_dict())
    overrides = [f"paths.artifacts={artifacts}", "serve.watch_interval_s=0", f"serve.experiments.dir={exp_dir}",
                 "serve.experiments.active=[ab]", f"serve.experiments.log_dir={tmp_path / 'logs'}",
                 "serve.experiments.fsync_interval_s=1000", "serve.experiments.watch_interval_s=0",
                 "serve.budget_ms.retrieve=5000", "serve.budget_ms.rank=5000", "serve.budget_ms.rules=5000"]
    env = {**os.environ, "SHOPREC_API_KEYS": "test-api-key"}
    p = subprocess.Popen([sys.executable, "-c", SERVE, json.dumps(overrides), "25"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, env=env)
    acked = []
    try:
        for line in p.stdout:
            if line.strip() == "done":
                break
            acked.append(line.strip())
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    assert len(acked) == 25
    # restart: a new service on the same log (its repair pass runs at open), then read the log
    from serving.app import compose_config
    from serving.service import Service

    svc = Service(compose_config(overrides).serve, load=False)
    try:
        logged = [json.loads(x)["request_id"] for x in (tmp_path / "logs" / "exposures.jsonl").read_text().splitlines()]
    finally:
        svc.stop()
    assert set(acked) <= set(logged)
