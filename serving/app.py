"""The Ray Serve application: deployments composed in one place.

- ``Ingress``: the FastAPI app (``serving.api``) over a ``serving.service.Service``. It does the
  encoder (ONNX Runtime), retrieval, online-store lookup, ranking and rules in-process: every handle
  hop costs ~5 ms on the dev machine, more than the whole pipeline (~1-2 ms at 100k items).
- ``RankerDeployment`` (``serve.ranker.mode=deployment``): the ranker behind ``@serve.batch``, on
  its own replicas and resources (e.g. ``serve.ranker.num_gpus=0.5``), for a ranker heavy enough to
  pay for the hop and to want a GPU. Requests carry their bundle folder, so a hot swap needs no
  coordination: the ranker replica loads the new bundle's ranker on its first request.

Replicas (or ``serve.ingress.autoscaling``), fractional CPUs and GPUs come from ``conf/serve/``.
``build_app(cfg)`` returns the bound application (``python -m serving.run``); ``app_builder(args)`` is
the same for ``serve run`` / ``serve deploy`` of ``deploy/serve_config.yaml`` (the operators' file:
autoscaling, health checks, ``user_config``) and for the KubeRay ``RayService`` in ``deploy/kuberay/``.

Bundle versions on Ray Serve go through the ingress's ``user_config`` ``{"bundle_version": NAME}``:
Serve calls ``Ingress.reconfigure`` on every running replica (no restart, no polling thread per
replica); each loads the version on the side and swaps it in (``Service.swap_to``). Roll a version out
with ``serve deploy`` of a config whose ``user_config.bundle_version`` names it, or with
``python -m serving.app --bundle-version VERSION`` (``deploy``: the same config applied through the
Serve controller of the cluster at ``RAY_ADDRESS``, no dashboard needed). ``null`` = the configured
bundle or ``LATEST`` at (re)configure time. (``serve.run`` from Python redeploys with new replicas
instead: it gives every deployment a new version.) ``serve.ingress.watch_latest=true`` brings back the
per-replica ``LATEST`` watcher (``serve.watch_interval_s``), as in the single-process ``Service``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from ray import serve

from serving.auth import keys_from_driver_env

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@serve.deployment(name="ranker")
class RankerDeployment:
    """Scores candidate pools in batches: ``score((bundle_dir, RankRequest)) -> np.ndarray``."""

    def __init__(self, serve_cfg: dict[str, Any]):
        r = serve_cfg["ranker"]
        self.score.set_max_batch_size(int(r["max_batch_size"]))
        self.score.set_batch_wait_timeout_s(float(r["batch_wait_timeout_s"]))
        self._rankers: dict[str, Any] = {}
        self._threads = int(r["onnx_threads"])
        try:  # load the current bundle's ranker now, not on the first request
            from serving.bundle import resolve_bundle_dir

            self._ranker(str(resolve_bundle_dir(serve_cfg["bundle_path"], serve_cfg["bundles_dir"])))
        except Exception as e:  # noqa: BLE001 - the ingress degrades to popular items meanwhile
            log.warning("ranker not preloaded: %s", e)

    def _ranker(self, bundle_dir: str):
        if bundle_dir not in self._rankers:
            from serving.ranking import Ranker

            if len(self._rankers) >= 2:  # keep the current and the previous bundle's ranker
                self._rankers.pop(next(iter(self._rankers)))
            self._rankers[bundle_dir] = Ranker.load(Path(bundle_dir), threads=self._threads)
        return self._rankers[bundle_dir]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def score(self, items: list[tuple[str, Any]]) -> list[Any]:
        out: list[Any] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, (bundle_dir, _) in enumerate(items):
            groups.setdefault(bundle_dir, []).append(i)
        for bundle_dir, idx in groups.items():
            ranker = self._ranker(bundle_dir)
            if ranker is None:
                raise RuntimeError(f"{bundle_dir}: the bundle has no ranker.onnx")
            scores = ranker.score([items[i][1] for i in idx])  # one batched ONNX Runtime call
            for i, s in zip(idx, scores):
                out[i] = s
        return out


class _RankerClient:
    """Wraps the ranker handle so ``serving.api`` can call ``handle.score.remote(rank_request)``."""

    def __init__(self, handle: Any, service: Any):
        self._handle = handle
        self._service = service
        self.score = self

    def remote(self, rank_request: Any):
        return self._handle.score.remote((str(self._service.bundle.path), rank_request))


@serve.deployment(name="ingress")
@serve.ingress()
class Ingress:
    """The FastAPI ingress over one ``Service`` (bundle, store, auth, metrics) per replica."""

    def __init__(self, serve_cfg: dict[str, Any], ranker: Any = None, bundle_version: str | None = None):
        import logging as _logging

        from serving.service import Service

        _logging.getLogger("serving").setLevel(_logging.INFO)
        cfg = OmegaConf.create(serve_cfg)
        if not bool(cfg.ingress.get("watch_latest", False)):
            cfg.watch_interval_s = 0  # bundle versions arrive through user_config (reconfigure)
        if bundle_version:
            cfg.bundle_path = str(Path(cfg.bundles_dir) / bundle_version)
        # Loaded before the replica takes traffic: Serve routes only to replicas whose constructor is done,
        # so a scaled-up or restarted replica never answers 503 while loading.
        self.service = Service(cfg, background=False)
        self.ranker = None if ranker is None else _RankerClient(ranker, self.service)

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Serve's ``user_config`` ``{"bundle_version": NAME | null}``: swap that bundle version in (loaded
        and warmed up on the side). A version that does not load is logged and counted
        (``shoprec_bundle_swap_failures_total``) and the current one keeps serving; a replica without any
        bundle yet fails (Serve retries it)."""
        version = (user_config or {}).get("bundle_version")
        target = None if not version else str(Path(self.service.cfg.bundles_dir) / str(version))
        try:
            bundle = self.service.swap_to(target)
        except Exception as e:  # noqa: BLE001 - keep serving the current bundle
            self.service.load_error = f"bundle_version {version!r}: {e}"
            if not self.service.ready:
                raise
            log.error("user_config bundle_version %r not swapped in: %s", version, e)
            return
        log.info("user_config: serving bundle %s", bundle.name)

    def check_health(self) -> None:
        """Serve's health check (``health_check_period_s``): unhealthy only without a loaded bundle. A lost
        online store is not a reason to restart: answers degrade and recover by themselves."""
        if not self.service.ready:
            raise RuntimeError(f"no bundle loaded: {self.service.load_error}")

    def __serve_build_asgi_app__(self):
        from serving.api import create_app

        app = create_app(self.service, self.ranker)
        if bool(self.service.cfg.http.debug_routes):  # tests of multi-node behaviour: which node answered
            import ray

            app.add_middleware(_NodeHeader, node_id=ray.get_runtime_context().get_node_id())
        return app

    def __del__(self):
        self.service.stop()


class _NodeHeader:
    """ASGI middleware adding ``X-Ray-Node: <node id>`` to every answer (debug routes only)."""

    def __init__(self, app: Any, node_id: str):
        self.app = app
        self.header = (b"x-ray-node", node_id.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(msg):
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", []), self.header]}
            await send(msg)

        return await self.app(scope, receive, send_with_header)


def build_app(cfg: DictConfig, bundle_version: str | None = None):
    """The bound application for ``cfg.serve``; ``bundle_version`` is the ingress's ``user_config``."""
    s = cfg.serve
    mode = str(s.ranker.mode)
    if mode not in ("inprocess", "deployment", "off"):
        raise ValueError(f"serve.ranker.mode={mode!r}: expected inprocess, deployment or off")
    serve_cfg = OmegaConf.to_container(s, resolve=True)
    serve_cfg["auth"] = keys_from_driver_env(serve_cfg["auth"])   # replicas do not see this environment
    ranker = None
    if mode == "deployment":
        ranker = RankerDeployment.options(
            num_replicas=int(s.ranker.num_replicas),
            ray_actor_options={"num_cpus": float(s.ranker.num_cpus), "num_gpus": float(s.ranker.num_gpus)},
            max_ongoing_requests=max(2 * int(s.ranker.max_batch_size), 8),
        ).bind(serve_cfg)
    ing = s.ingress
    threads = str(int(ing.compute_threads))
    actor_options = {"num_cpus": float(ing.num_cpus),
                     "runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}}}
    resources = OmegaConf.to_container(ing.resources, resolve=True) if ing.get("resources") else {}
    if resources:
        actor_options["resources"] = {str(k): float(v) for k, v in resources.items()}
    autoscaling = OmegaConf.to_container(ing.autoscaling, resolve=True) if ing.get("autoscaling") else None
    scale = {"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": int(ing.num_replicas)}
    return Ingress.options(
        **scale,
        ray_actor_options=actor_options,
        max_ongoing_requests=int(ing.max_ongoing_requests),
        health_check_period_s=float(ing.get("health_check_period_s", 10.0)),
        health_check_timeout_s=float(ing.get("health_check_timeout_s", 30.0)),
        user_config={"bundle_version": bundle_version},
    ).bind(serve_cfg, ranker, bundle_version)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The root config with command-line style overrides (for ``serve run`` and tests)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=list(overrides or []))


def app_builder(args: dict[str, Any]):
    """``serve run`` / ``serve deploy`` entry: ``args.overrides`` is a list of Hydra overrides. The config
    file's ``deployments`` entries (autoscaling, health checks, ``user_config``) override the code's."""
    return build_app(compose_config(list((args or {}).get("overrides") or [])))


DEPLOY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "serve_config.yaml"


def deploy_config(path: str | Path = DEPLOY_CONFIG, bundle_version: str | None = None,
                  overrides: list[str] | None = None) -> dict[str, Any]:
    """The Serve config of ``path`` (``deploy/serve_config.yaml``) with the ingress's
    ``user_config.bundle_version`` set and extra Hydra ``overrides`` appended to every application's."""
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    for app in config["applications"]:
        app.setdefault("args", {}).setdefault("overrides", [])
        app["args"]["overrides"] = [*app["args"]["overrides"], *(overrides or [])]
        if bundle_version is not None:
            deployments = app.setdefault("deployments", [])
            ingress = next((d for d in deployments if d["name"] == "ingress"), None)
            if ingress is None:
                deployments.append(ingress := {"name": "ingress"})
            ingress["user_config"] = {**(ingress.get("user_config") or {}), "bundle_version": bundle_version}
    return config


def deploy(config: dict[str, Any]) -> None:
    """Apply a Serve config on the cluster this process is connected to (``ray.init`` first), as
    ``serve deploy`` does through the dashboard: applications whose code and settings are unchanged keep
    their replicas, and a changed ``user_config`` reaches them through ``Ingress.reconfigure``."""
    from ray.serve._private import api as serve_api  # what `serve run CONFIG` uses; no dashboard needed
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(http_options=config.get("http_options") or {},
                                   global_logging_config=config.get("logging_config"))
    client.deploy_apps(schema, _blocking=False)


def main(argv: list[str] | None = None) -> None:
    """``python -m serving.app [--config deploy/serve_config.yaml] [--bundle-version V] [overrides...]``:
    deploy the config on the cluster at ``RAY_ADDRESS`` (``auto`` when unset); ``--bundle-version``
    (e.g. the one ``python -m serving.bundles promote`` made LATEST) is swapped in on every replica."""
    import argparse
    import os

    import ray

    from serving.bundle import BundleError, read_manifest

    p = argparse.ArgumentParser(prog="python -m serving.app", description=main.__doc__)
    p.add_argument("--config", default=str(DEPLOY_CONFIG))
    p.add_argument("--bundle-version", default=None, help="a folder under <artifacts>/bundles")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.artifacts=/mnt/artifacts")
    args = p.parse_args(argv)
    config = deploy_config(args.config, args.bundle_version, args.overrides)
    try:
        if args.bundle_version:
            for app in config["applications"]:  # fail here, not on every replica
                s = compose_config(list(app["args"]["overrides"])).serve
                read_manifest(Path(s.bundles_dir) / args.bundle_version)
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), logging_level="WARNING")
        deploy(config)
    except (BundleError, ConnectionError, ValueError) as e:
        print(f"serving.app: {e}", file=sys.stderr)
        sys.exit(2)
    names = ", ".join(a["name"] for a in config["applications"])
    print(f"deployed {names}" + (f" with bundle version {args.bundle_version}" if args.bundle_version else ""))


if __name__ == "__main__":
    main()
