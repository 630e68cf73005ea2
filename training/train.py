"""Train a retrieval model: ``python -m training.train model=<sasrec|two_tower|pop|ease|ranker> data=<name> trainer=<cpu|gpu|ddp>``.

Dispatch on ``model.family``: ``sequence`` / ``two_tower`` train a LightningModule (early stopping on
``valid/ndcg@10``, best and last checkpoints, CSV + TensorBoard logs, test on the best checkpoint);
``baseline`` fits popularity or EASE/ItemKNN in closed form; ``ranker`` is handed to
``training.ranker.train_ranker``. Every run writes ``${paths.runs}/<data>/<model>/<time>/`` with
``config.yaml``, ``checkpoints/``, ``logs/``, ``manifest.json`` and, last, ``metrics.json``.

Resume: ``trainer.resume=true`` continues the newest run of this data/model from its ``last.ckpt``;
``trainer.resume=<path.ckpt>`` continues that checkpoint's run.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from features.artifacts import code_version, file_sha256, read_json, write_json
from features.processed import load_manifest, processed_dir
from features.splits import split_files
from training.evaluate import evaluate_split, protocol
from training.modules import NonFiniteLossError, split_scorer
from training.runs import (NEURAL_FAMILIES, RUN_DIR_ENV, build_module, find_resume_checkpoint, load_data, new_run_dir,
                           pick_device, validate_config)

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*isn't a `torch.utils.data.DataLoader`.*")
# under DDP every rank evaluates the whole validation split, so its metrics are equal on all ranks: no sync needed
warnings.filterwarnings("ignore", message=".*sync_dist=True.*")


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict = field(default_factory=dict)


class EpochHistory(pl.Callback):
    """Wall time and validation NDCG@10 after every epoch (kept in checkpoints, so resume continues it)."""

    def __init__(self) -> None:
        self.history: list[dict] = []
        self._t0 = 0.0
        self._offset = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        self._offset = self.history[-1]["time_s"] if self.history else 0.0

    def on_validation_end(self, trainer, pl_module) -> None:  # after the module has logged its metrics
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        m = pl_module.last_eval
        self.history.append({"epoch": trainer.current_epoch + 1,
                             "time_s": round(self._offset + time.perf_counter() - self._t0, 3),
                             "valid/ndcg@10": m.get("valid/ndcg@10"), "valid/hr@10": m.get("valid/hr@10")})

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))


class StopAtTarget(pl.Callback):
    """Stop training once the per-epoch ``valid/ndcg@10`` reaches ``target`` (speed benchmarks: time to a quality)."""

    def __init__(self, target: float) -> None:
        self.target = target

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if (pl_module.last_eval.get("valid/ndcg@10") or 0.0) >= self.target:
            trainer.should_stop = True


def _loggers(run_dir: Path) -> list:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(save_dir=str(run_dir), name="logs", version="csv")]
    try:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard",
                                         default_hp_metric=False))
    except ModuleNotFoundError:
        log.warning("tensorboard is not installed: writing the CSV log only")
    return loggers


def _input_hashes(pdir: Path, split: str) -> dict:
    files = [pdir / "items.parquet"] + [pdir / "splits" / split / f"{p}.parquet" for p in ("train", "valid", "test")]
    return {str(f.relative_to(pdir)): file_sha256(f) for f in files if f.exists()}


def _write_final(run_dir: Path, metrics: dict, manifest: dict) -> None:
    write_json(run_dir / "manifest.json", manifest)
    tmp = run_dir / ".metrics.json.tmp"
    write_json(tmp, metrics)
    os.replace(tmp, run_dir / "metrics.json")


def _train_baseline(cfg: DictConfig, pdir: Path, run_dir: Path, device: str) -> dict:
    import scipy.sparse as sp

    from models.baselines import EASE, BuyAgain, ItemKNN, Popularity, ease_bytes, interaction_matrix

    data, _ = load_data(cfg, pdir)
    seqs = data.train_seqs.numpy()
    # fit on the full training histories (the sequence tensor is truncated to max_len)
    from features.processed import load_split

    train = load_split(pdir, split_files(str(cfg.trainer.eval.split)), "train")
    if cfg.trainer.get("max_users") is not None:
        train = train[train["user_id"] < int(cfg.trainer.max_users)]
    x = interaction_matrix(train["user_id"].to_numpy(), train["item_id"].to_numpy(), max(data.n_users, 1), data.n_items)
    name, t0 = str(cfg.model.name), time.perf_counter()
    if name == "pop":
        model, algo = Popularity(data.n_items).fit(x), "popularity"
    elif name == "buy_again":
        model, algo = BuyAgain(data.n_items).fit(x), "buy_again"
    elif name == "ease":
        if EASE.fits_memory(data.n_items, int(float(cfg.model.max_dense_gib) * 2**30)):
            model, algo = EASE(data.n_items, float(cfg.model.l2), device).fit(x), "ease"
        else:
            log.warning("EASE needs %.1f GiB > model.max_dense_gib=%s: using ItemKNN", ease_bytes(data.n_items) / 2**30,
                        cfg.model.max_dense_gib)
            model, algo = ItemKNN(data.n_items, int(cfg.model.knn_k), float(cfg.model.knn_shrink)).fit(x), "itemknn"
    else:
        raise ValueError(f"model.name={name!r} is not a known baseline (pop, buy_again, ease)")
    fit_s = time.perf_counter() - t0

    def scorer(split):
        def score(_inputs, start, stop):
            a, b = int(split.hist_ptr[start]), int(split.hist_ptr[stop])
            ptr = (split.hist_ptr[start:stop + 1] - a).numpy()
            hist = sp.csr_matrix((np.ones(b - a, np.float32), split.hist_items[a:b].numpy() - 1, ptr),
                                 shape=(stop - start, data.n_items))
            return torch.from_numpy(model.score(hist)).to(device)
        return score

    e = cfg.trainer.eval
    common = dict(popularity=data.popularity[1:], exclude_history=bool(e.exclude_history), ks=tuple(e.ks),
                  batch_size=int(e.batch_size), model=name)
    metrics = evaluate_split(scorer(data.valid), data.valid, data.n_items, prefix="valid/", **common)
    metrics.update(evaluate_split(scorer(data.test), data.test, data.n_items, prefix="test/",
                                  sampled_negatives=int(e.sampled_negatives), **common))
    del seqs
    return {**metrics, "algorithm": algo, "fit_time_s": fit_s}


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


def _train_neural(cfg: DictConfig, pdir: Path, run_dir: Path, device: str, resume: Path | None) -> dict:
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from training.data import SequenceDataModule

    data, extra = load_data(cfg, pdir)
    module = build_module(cfg, data, extra)
    module.nan_check_every = int(cfg.trainer.nan_check_every_n_steps)
    t = cfg.trainer
    dm = SequenceDataModule(data, int(cfg.model.batch_size), int(t.eval.batch_size), int(cfg.seed),
                            t.eval.get("valid_max_users"))
    if bool(t.get("compile", False)):
        # compile the network's forward only: parameter names (checkpoints, export) stay those of the plain module
        module.net.forward = torch.compile(module.net.forward, dynamic=False)
    ckpt = ModelCheckpoint(dirpath=str(run_dir / "checkpoints"), filename="best-{epoch:03d}",
                           monitor="valid/ndcg@10", mode="max", save_top_k=1, save_last=True)
    history = EpochHistory()
    early = EarlyStopping(monitor="valid/ndcg@10", mode="max", patience=int(t.patience))
    callbacks = [ckpt, history, early]
    if t.get("stop_at_valid_ndcg") is not None:
        callbacks.append(StopAtTarget(float(t.stop_at_valid_ndcg)))
    hw = hardware(t, device)
    trainer = pl.Trainer(
        accelerator=hw.accelerator, devices=hw.devices, strategy=hw.strategy, precision=hw.precision,
        max_epochs=int(t.max_epochs), min_epochs=int(t.min_epochs), max_time=timedelta(seconds=float(t.max_time)) if t.get("max_time") else None,
        check_val_every_n_epoch=int(t.check_val_every_n_epoch), log_every_n_steps=int(t.log_every_n_steps),
        gradient_clip_val=t.get("gradient_clip_val"), deterministic=bool(t.deterministic),
        callbacks=callbacks, logger=_loggers(run_dir), default_root_dir=str(run_dir),
        enable_progress_bar=bool(t.progress_bar), enable_model_summary=False, num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    fit_s = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return {}
    best = Path(ckpt.best_model_path) if ckpt.best_model_path else run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    module = module.to(device).eval()
    data.to(device)
    with torch.no_grad():
        items = module.item_embeddings().float()
    e = cfg.trainer.eval
    common = dict(popularity=data.popularity[1:], exclude_history=bool(e.exclude_history), ks=tuple(e.ks),
                  batch_size=int(e.batch_size), model=str(cfg.model.name))
    metrics = evaluate_split(split_scorer(module, data.valid, items), data.valid, data.n_items, prefix="valid/", **common)
    metrics.update(evaluate_split(split_scorer(module, data.test, items), data.test, data.n_items, prefix="test/",
                                  sampled_negatives=int(e.sampled_negatives), **common))
    hist = history.history
    best_i = int(np.argmax([h["valid/ndcg@10"] or 0 for h in hist])) if hist else -1
    epochs_run = hist[-1]["epoch"] if hist else 0
    train_time = hist[-1]["time_s"] if hist else fit_s
    metrics.update({
        "best_checkpoint": str(best.relative_to(run_dir)) if best.is_relative_to(run_dir) else str(best),
        "best_epoch": hist[best_i]["epoch"] if hist else None,
        "time_to_best_s": hist[best_i]["time_s"] if hist else None,
        "epochs": epochs_run, "train_time_s": train_time, "fit_wall_s": fit_s,
        "epoch_time_s": train_time / max(epochs_run, 1),
        "sequences_per_s": data.info["train_sequences"] * epochs_run / max(train_time, 1e-9),
        "history": hist, "n_parameters": sum(p.numel() for p in module.parameters()),
        "processes": int(trainer.world_size), "strategy": str(hw.strategy), "precision": str(hw.precision),
        "valid_epoch_users": len(dm.valid_epoch), "compiled": bool(t.get("compile", False)),
        "stop_reason": ("early_stopping" if early.stopped_epoch > 0 else
                        "target_reached" if t.get("stop_at_valid_ndcg") is not None and hist
                        and (hist[-1]["valid/ndcg@10"] or 0) >= float(t.stop_at_valid_ndcg) else
                        "max_epochs" if epochs_run >= int(t.max_epochs) else "max_time"),
    })
    return metrics


def run(cfg: DictConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; returns the run folder and its metrics."""
    if cfg.model.get("family") == "ranker":
        from training.ranker import train_ranker

        run_dir = Path(train_ranker(cfg))
        metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
        return TrainResult(run_dir, metrics)
    validate_config(cfg)
    torch.set_num_threads(int(cfg.trainer.num_threads))
    torch.set_float32_matmul_precision("high")
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    pdir = processed_dir(cfg)
    data_manifest = load_manifest(pdir)             # fails naming the folder when the data is not prepared
    device = pick_device(str(cfg.trainer.accelerator))
    resume = find_resume_checkpoint(cfg)
    run_dir = resume.parent.parent if resume else new_run_dir(cfg)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info("run folder %s (device %s%s)", run_dir, device, f", resuming {resume}" if resume else "")
    if cfg.model.family == "baseline":
        metrics = _train_baseline(cfg, pdir, run_dir, device)
    elif cfg.model.family in NEURAL_FAMILIES:
        metrics = _train_neural(cfg, pdir, run_dir, device, resume)
        if not metrics:                              # a non-zero DDP rank
            return TrainResult(run_dir, {})
    else:
        raise ValueError(f"model.family={cfg.model.family!r} is not trainable here")
    metrics.update({"model": str(cfg.model.name), "family": str(cfg.model.family), "data": str(cfg.data.name),
                    "device": device, "protocol": protocol(cfg), "run_dir": str(run_dir)})
    manifest = {
        "kind": "training_run", "model": str(cfg.model.name), "data": str(cfg.data.name), "device": device,
        "counts": {k: v for k, v in data_manifest.get("counts", {}).items()} if isinstance(data_manifest.get("counts"), dict) else {},
        "input_hashes": _input_hashes(pdir, split_files(str(cfg.trainer.eval.split))),
        "config": OmegaConf.to_container(cfg, resolve=True), "code_version": code_version(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resumed_from": str(resume) if resume else None,
    }
    _write_final(run_dir, metrics, manifest)
    log.info("test/ndcg@10=%.4f test/hr@10=%.4f valid/ndcg@10=%.4f -> %s", metrics["test/ndcg@10"],
             metrics["test/hr@10"], metrics["valid/ndcg@10"], run_dir / "metrics.json")
    return TrainResult(run_dir, metrics)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        res = run(cfg)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as err:
        print(f"training.train: error: {err}", file=sys.stderr)
        sys.exit(2)
    if res.metrics:
        print(f"run folder: {res.run_dir}")
        print(" ".join(f"{k}={res.metrics[k]:.4f}" for k in ("valid/ndcg@10", "test/ndcg@10", "test/hr@10")
                       if k in res.metrics))


if __name__ == "__main__":
    main()
