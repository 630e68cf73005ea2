"""The console's experiments view and its start / stop actions.

``experiments_view(service)`` lists every spec in ``serve.experiments.dir`` with its status (running,
scheduled, stopped, finished, not started) and, once it has exposures, its readout from the service's
own logs (``serving.experiments.readout.read_experiment``): traffic split with the sample-ratio check,
the primary metric per variant with its 95 % interval, the same by time (units whose first exposure
came before each time point, with their outcomes so far), and the guardrails.

``start(service, name)`` adds the experiment to the replica's running set (``Experiments.reload``: the
spec and the whole set are checked as at start-up; a refused one changes nothing) and ``stop`` takes
it out; units then get the normal answer. The running set of ``serve.experiments.active`` is where a
restart begins: to keep an experiment across restarts, name it there. With several ingress replicas,
start and stop act on the replica that answers (one replica by default).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from serving.console.marketing import clean
from serving.experiments.exposure import ATTRIBUTIONS_FILE, EXPOSURES_FILE
from serving.experiments.readout import read_experiment, variant_figures
from serving.experiments.router import Experiments
from serving.experiments.spec import ExperimentConfigError, ExperimentSpec, read_spec

log = logging.getLogger(__name__)

PRIMARY_KEY = {"conversion": "conversion_rate", "ctr": "ctr", "revenue_per_user": "revenue_per_user"}
TIME_POINTS = 8
_lock = threading.Lock()   # one start/stop at a time per replica


class ActionRefused(Exception):
    """A start or stop that cannot be done (``status``: 404 unknown, 409 conflict)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _exp_cfg(service: Any) -> Any:
    cfg = service.cfg
    return cfg.get("experiments") if hasattr(cfg, "get") else getattr(cfg, "experiments", None)


def spec_files(service: Any) -> dict[str, Path]:
    exp_cfg = _exp_cfg(service)
    if exp_cfg is None:
        return {}
    d = Path(str(exp_cfg.dir))
    return {p.stem: p for p in sorted(d.glob("*.yaml")) if not p.name.startswith("_")} if d.is_dir() else {}


def _active(service: Any) -> list[str]:
    exps = getattr(service, "experiments", None)
    return [] if exps is None else [s.name for s in exps.specs]


def status_of(spec: ExperimentSpec, active: bool, has_exposures: bool, now: dt.datetime) -> str:
    if active:
        return "running" if spec.running(now) else ("scheduled" if now < spec.start else "finished")
    if now >= spec.end:
        return "finished"
    return "stopped" if has_exposures else "not started"


def experiments_view(service: Any, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or dt.datetime.now(dt.timezone.utc)
    exp_cfg = _exp_cfg(service)
    files = spec_files(service)
    if not files:
        where = None if exp_cfg is None else str(exp_cfg.dir)
        return {"available": False, "missing": {
            "message": f"no experiment specs in {where}",
            "command": "write conf/experiment/<name>.yaml (see conf/experiment/homepage_ab.yaml), then start it "
                       "here or with python -m serving.run serve.experiments.active=[<name>]"}}
    log_dir = Path(str(exp_cfg.log_dir))
    exps = getattr(service, "experiments", None)
    active = set(_active(service))
    rows = []
    for name, path in files.items():
        try:
            spec = read_spec(path)
        except ExperimentConfigError as e:
            rows.append({"name": name, "status": "invalid", "error": str(e)})
            continue
        readout = _readout(spec, log_dir, str(service.cfg.store.event_log), now)
        rows.append({
            "name": spec.name, "description": spec.description,
            "status": status_of(spec, spec.name in active, readout is not None, now),
            "start": spec.start.isoformat(), "end": spec.end.isoformat(),
            "traffic": {"offset": spec.traffic.offset, "share": spec.traffic.share},
            "control": spec.control, "primary_metric": spec.primary_metric.name,
            "window_hours": spec.primary_metric.window_hours,
            "variants": [{"name": v.name, "weight": v.weight, "bundle": v.bundle,
                          "overrides": v.overrides.model_dump(exclude_none=True)} for v in spec.variants],
            "guardrail_limits": spec.guardrails.model_dump(), "readout": readout,
        })
    return clean({"available": True, "experiments": rows, "log_dir": str(log_dir),
                  "error": None if exps is None else exps.error, "now": now.isoformat(timespec="seconds")})


def _readout(spec: ExperimentSpec, log_dir: Path, event_log: str, now: dt.datetime) -> dict[str, Any] | None:
    exposures = log_dir / EXPOSURES_FILE
    if not exposures.is_file():
        return None
    r = read_experiment(spec, exposure_log=exposures, event_log=event_log,
                        attribution_log=log_dir / ATTRIBUTIONS_FILE, now=now)
    if r.exposures.empty:
        return None
    res, units = r.result, r.units
    names = [v.name for v in spec.variants]
    total = max(1, sum(res["variants"][v]["users"] for v in names))
    key = PRIMARY_KEY[spec.primary_metric.name]
    return {
        "split": [{"variant": v, "users": res["variants"][v]["users"], "share": res["variants"][v]["users"] / total,
                   "expected": spec.variant(v).weight} for v in names],
        "srm_p_value": res["srm_p_value"], "srm_flag": res["srm_flag"],
        "primary": [{"variant": v, "value": res["variants"][v][key], "ci": res["variants"][v][key + "_ci"]}
                    for v in names],
        "variants": res["variants"], "lift": res["lift"], "lift_ci": [res["ci_low"], res["ci_high"]],
        "p_value": res["p_value"], "treatment": res["treatment"],
        "planned_users_per_variant": res["planned_users_per_variant"], "horizon_warning": res["horizon_warning"],
        "guardrails": res.get("guardrails", {}), "over_time": over_time(units, names, key),
        "quarantined": res.get("quarantined", {}), "n_lines": res.get("n_lines", {}),
    }


def over_time(units: Any, names: list[str], key: str, points: int = TIME_POINTS) -> list[dict[str, Any]]:
    """The primary metric per variant (with CI) on the units first exposed before each of ``points`` times."""
    if units.empty:
        return []
    t0, t1 = float(units.first_ts.min()), float(units.first_ts.max())
    cuts = np.linspace(t0, t1, points) if t1 > t0 else np.array([t1])
    out = []
    for t in cuts:
        u = units[units.first_ts <= t + 1e-6]
        row = {"t": dt.datetime.fromtimestamp(float(t), dt.timezone.utc).isoformat(timespec="seconds"), "variants": {}}
        for v in names:
            uv = u[u.variant == v]
            if len(uv):
                f = variant_figures(uv)
                row["variants"][v] = {"value": f[key], "ci": f[key + "_ci"], "users": f["users"]}
        out.append(row)
    return out


def _check_name(service: Any, name: str) -> Path:
    files = spec_files(service)
    if name not in files:
        raise ActionRefused(404, f"unknown experiment {name!r}: no {name}.yaml in serve.experiments.dir "
                                 f"(known: {', '.join(files) or 'none'})")
    return files[name]


def start(service: Any, name: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """Run experiment ``name`` on this replica (checked like a start-up configuration)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    with _lock:
        path = _check_name(service, name)
        try:
            spec = read_spec(path)
        except ExperimentConfigError as e:
            raise ActionRefused(409, str(e)) from None
        if now >= spec.end:
            raise ActionRefused(409, f"experiment {name!r} ended at {spec.end.isoformat()}: a new run needs a new "
                                     f"spec (new name, new salt)")
        exps = getattr(service, "experiments", None)
        if exps is None:
            cfg = OmegaConf.create(OmegaConf.to_container(service.cfg, resolve=True))
            cfg.experiments.active = [name]
            try:
                service.experiments = Experiments.from_service(SimpleNamespace(cfg=cfg, settings=service.settings))
            except Exception as e:  # noqa: BLE001 - the checks' message goes back to the operator
                raise ActionRefused(409, f"experiment {name!r} not started: {e}") from None
        else:
            if name in exps.active:
                raise ActionRefused(409, f"experiment {name!r} is already running")
            exps.active.append(name)
            if not exps.reload():
                error = exps.error
                exps.active.remove(name)
                exps.reload()
                raise ActionRefused(409, f"experiment {name!r} not started: {error}")
        return {"experiment": name, "status": status_of(spec, True, False, now)}


def stop(service: Any, name: str) -> dict[str, Any]:
    """Stop experiment ``name`` on this replica: its units get the normal answer from now on."""
    with _lock:
        _check_name(service, name)
        exps = getattr(service, "experiments", None)
        if exps is None or name not in exps.active:
            raise ActionRefused(409, f"experiment {name!r} is not running")
        exps.active.remove(name)
        if not exps.reload():
            exps.active.append(name)
            raise ActionRefused(409, f"experiment {name!r} not stopped: {exps.error}")
        return {"experiment": name, "status": "stopped"}
