"""One ``pl.Trainer`` for every Lightning model, built from the config, and the fit -> validate -> test loop.

``build_trainer`` reads ``conf/trainer`` (hardware, epochs, ``max_time`` in seconds or Lightning's
formats, progress bar), instantiates ``conf/logger`` (csv, tensorboard, mlflow) and ``conf/callbacks``
(``_target_`` configs; a ``ModelCheckpoint`` is required) into the run folder. ``fit_and_test`` fits, then
runs the final validation and the test on the best checkpoint through ``trainer.validate`` /
``trainer.test`` (so their metrics reach the loggers) and returns them with the loop's figures.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from training.callbacks import EpochHistory, StopAtTarget

log = logging.getLogger(__name__)


def max_time(value) -> timedelta | None:
    """``trainer.max_time`` as a ``timedelta``: seconds (a number or a numeric string), Lightning's
    ``"DD:HH:MM:SS"`` string, or a dict of ``timedelta`` fields (``{minutes: 50}``); null = no cap."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (Mapping, DictConfig)):
            out = timedelta(**{str(k): float(v) for k, v in dict(value).items()})
        elif isinstance(value, str) and ":" in value:
            d, h, m, s = (int(p) for p in value.split(":"))
            out = timedelta(days=d, hours=h, minutes=m, seconds=s)
        else:
            out = timedelta(seconds=float(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"trainer.max_time={value!r}: expected seconds, \"DD:HH:MM:SS\" or a dict such as "
                         f"{{minutes: 50}} ({err})") from None
    if out <= timedelta(0):
        raise ValueError(f"trainer.max_time={value!r}: must be > 0")
    return out


def show_progress_bar(setting) -> bool:
    """``trainer.progress_bar``: ``auto`` = a bar when the output is a terminal (plain log lines otherwise)."""
    if str(setting).lower() == "auto":
        return sys.stdout.isatty() and sys.stderr.isatty()
    return bool(setting)


def instantiate_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """The loggers of ``conf/logger`` (``logger=[csv,tensorboard,mlflow]``), writing into the run folder."""
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is None or "_target_" not in lcfg:
            continue
        kwargs = {}
        if "save_dir" in lcfg and lcfg.save_dir is None:
            kwargs["save_dir"] = str(run_dir)
        if "run_name" in lcfg and lcfg.run_name is None:
            kwargs["run_name"] = run_dir.name
        if str(lcfg.get("tracking_uri") or "").startswith("file:"):
            # MLflow 3 keeps its file store for local use behind this switch (a database backend is the default)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            loggers.append(instantiate(lcfg, **kwargs))
        except (ImportError, ModuleNotFoundError) as err:
            log.warning("logger %s is not available (%s): skipped", name, err)
    return loggers


def instantiate_callbacks(cfg: DictConfig, run_dir: Path) -> list[pl.Callback]:
    """The callbacks of ``conf/callbacks``; a ``ModelCheckpoint`` is required (it writes ``<run>/checkpoints``)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    ckpts = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    if not ckpts:
        raise ValueError("callbacks: no ModelCheckpoint (conf/callbacks/model_checkpoint.yaml); the final test "
                         "loads the best checkpoint")
    for c in ckpts:
        if c.dirpath is None:
            c.dirpath = str(run_dir / "checkpoints")
    return callbacks


@dataclass
class Hardware:
    """What ``pl.Trainer`` gets: accelerator, devices (GPUs or CPU processes), strategy, precision."""

    accelerator: str
    devices: int | str
    strategy: str
    precision: str


def hardware(t: DictConfig, device: str) -> Hardware:
    """``trainer.*`` resolved against the device found: on a GPU as configured; on the CPU fp32, and DDP
    (``trainer.strategy=ddp``) runs ``trainer.cpu_processes`` processes over gloo, otherwise one process."""
    if device == "cuda":
        return Hardware("gpu", t.devices, str(t.strategy), str(t.precision))
    if str(t.strategy).startswith("ddp"):
        procs = int(t.get("cpu_processes") or 1)
        if procs < 1:
            raise ValueError(f"trainer.cpu_processes must be >= 1, got {procs}")
        return Hardware("cpu", procs, str(t.strategy) if procs > 1 else "auto", "32-true")
    return Hardware("cpu", 1, "auto", "32-true")


def build_trainer(cfg: DictConfig, run_dir: Path, device: str) -> tuple[pl.Trainer, Hardware]:
    """The ``pl.Trainer`` of every Lightning model: ``conf/trainer`` + ``conf/logger`` + ``conf/callbacks``."""
    t = cfg.trainer
    hw = hardware(t, device)
    loggers = instantiate_loggers(cfg, run_dir)
    trainer = pl.Trainer(
        accelerator=hw.accelerator, devices=hw.devices, strategy=hw.strategy, precision=hw.precision,
        max_epochs=int(t.max_epochs), min_epochs=int(t.min_epochs), max_time=max_time(t.get("max_time")),
        check_val_every_n_epoch=int(t.check_val_every_n_epoch), log_every_n_steps=int(t.log_every_n_steps),
        gradient_clip_val=t.get("gradient_clip_val"), deterministic=bool(t.deterministic),
        callbacks=instantiate_callbacks(cfg, run_dir), logger=loggers or False, default_root_dir=str(run_dir),
        enable_progress_bar=show_progress_bar(t.get("progress_bar", "auto")), enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    for lg in trainer.loggers:     # the composed settings, for comparing runs (MLflow params, TensorBoard hparams)
        lg.log_hyperparams({"model": OmegaConf.to_container(cfg.model, resolve=True), "data": str(cfg.data.name),
                            "trainer": OmegaConf.to_container(t, resolve=True), "seed": int(cfg.seed)})
    return trainer, hw


def _callback(trainer: pl.Trainer, kind: type):
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def _best_index(hist: list[dict], ckpt) -> int:
    """The epoch (index into ``hist``) the checkpoint callback chose: its monitor and mode, ties to the first."""
    if not hist:
        return -1
    key = ckpt.monitor if ckpt is not None and ckpt.monitor in hist[0] else "valid/ndcg@10"
    values = np.array([np.nan if h[key] is None else h[key] for h in hist], dtype=float)
    if np.isnan(values).all():
        return len(hist) - 1
    return int(np.nanargmin(values) if ckpt is not None and ckpt.mode == "min" else np.nanargmax(values))


def fit_and_test(trainer: pl.Trainer, module: pl.LightningModule, dm: pl.LightningDataModule, resume: Path | None,
                 hw: Hardware, before_test: Callable[[], dict] | None = None) -> dict:
    """Fit, then validate and test the best checkpoint (last weights when no validation ran); the module keeps
    the best weights. Returns the final valid/test metrics and the loop's figures (epochs, times, stop reason).

    ``before_test``: runs after the final validation, before the test (``training.refit``); the test then
    evaluates the module's weights as it left them, and its figures join the metrics."""
    from pytorch_lightning.callbacks import EarlyStopping

    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    fit_s = time.perf_counter() - t0
    # read the loop's figures now: loading the best checkpoint below restores the callbacks' state of that epoch
    history = _callback(trainer, EpochHistory)
    hist = list(history.history) if history is not None else []
    early, target = _callback(trainer, EarlyStopping), _callback(trainer, StopAtTarget)
    stopped_early = early is not None and early.stopped_epoch > 0
    epochs_run = hist[-1]["epoch"] if hist else int(trainer.current_epoch)
    ckpt = trainer.checkpoint_callback
    best = "best" if ckpt is not None and ckpt.best_model_path else None
    best_path = Path(ckpt.best_model_path) if best else None
    if hasattr(dm, "use_full_validation"):
        dm.use_full_validation()            # per-epoch validation may use a subset; the final one uses every user
    trainer.validate(module, datamodule=dm, ckpt_path=best, verbose=False)
    extra = {}
    if before_test is not None:
        extra = before_test()
        best = None                         # test the weights the hook left
    trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)
    metrics = dict(getattr(module, "last_eval", {}) or {})
    metrics.update(extra)
    best_i = _best_index(hist, ckpt)
    train_time = hist[-1]["time_s"] if hist else fit_s
    run_dir = Path(trainer.default_root_dir)
    metrics.update({
        "best_checkpoint": (None if best_path is None else
                            str(best_path.relative_to(run_dir)) if best_path.is_relative_to(run_dir) else str(best_path)),
        "best_epoch": hist[best_i]["epoch"] if hist else None,
        "time_to_best_s": hist[best_i]["time_s"] if hist else None,
        "epochs": epochs_run, "train_time_s": train_time, "fit_wall_s": fit_s,
        "epoch_time_s": train_time / max(epochs_run, 1), "history": hist,
        "n_parameters": sum(p.numel() for p in module.parameters()),
        "processes": int(trainer.world_size), "strategy": str(hw.strategy), "precision": str(hw.precision),
        "stop_reason": ("early_stopping" if stopped_early else
                        "target_reached" if target is not None and hist and target.reached(hist[-1]["valid/ndcg@10"]) else
                        "max_epochs" if epochs_run >= int(trainer.max_epochs) else "max_time"),
    })
    return metrics
