"""The Ray Serve application: deployments composed in one place.

- ``Ingress``: the FastAPI app (``serving.api``) over a ``serving.service.Service``. It does the
  encoder (ONNX Runtime), retrieval, online-store lookup, ranking and rules in-process: every handle
  hop costs ~5 ms on the dev machine, more than the whole pipeline (~1-2 ms at 100k items).
- ``RankerDeployment`` (``serve.ranker.mode=deployment``): the ranker behind ``@serve.batch``, on
  its own replicas and resources (e.g. ``serve.ranker.num_gpus=0.5``), for a ranker heavy enough to
  pay for the hop and to want a GPU. Requests carry their bundle folder, so a hot swap needs no
  coordination: the ranker replica loads the new bundle's ranker on its first request.

Replicas, fractional CPUs and GPUs come from ``conf/serve/``. ``build_app(cfg)`` returns the bound
application (``python -m serving.run``); ``app_builder(args)`` is the same for ``serve run``
(``conf/serve/serve_config.yaml``).
"""
from __future__ import annotations

import logging
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

    def __init__(self, serve_cfg: dict[str, Any], ranker: Any = None):
        import logging as _logging

        from serving.service import Service

        _logging.getLogger("serving").setLevel(_logging.INFO)
        # Loaded before the replica takes traffic: Serve routes only to replicas whose constructor is done,
        # so a scaled-up or restarted replica never answers 503 while loading.
        self.service = Service(OmegaConf.create(serve_cfg), background=False)
        self.ranker = None if ranker is None else _RankerClient(ranker, self.service)

    def __serve_build_asgi_app__(self):
        from serving.api import create_app

        return create_app(self.service, self.ranker)

    def __del__(self):
        self.service.stop()


def build_app(cfg: DictConfig):
    """The bound application for ``cfg.serve``."""
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
    threads = str(int(s.ingress.compute_threads))
    return Ingress.options(
        num_replicas=int(s.ingress.num_replicas),
        ray_actor_options={"num_cpus": float(s.ingress.num_cpus),
                           "runtime_env": {"env_vars": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}}},
        max_ongoing_requests=int(s.ingress.max_ongoing_requests),
    ).bind(serve_cfg, ranker)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The root config with command-line style overrides (for ``serve run`` and tests)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=list(overrides or []))


def app_builder(args: dict[str, Any]):
    """``serve run`` entry: ``args.overrides`` is a list of Hydra overrides."""
    return build_app(compose_config(list((args or {}).get("overrides") or [])))
