"""Refit: after early stopping, a few more epochs on each user's sequence through their validation event.

Early stopping picks the epoch on the validation targets, so the model never trains on them; yet at test
time (and in production) they are each user's most recent events, and the test input ends with them.
``model.refit_epochs`` > 0 continues the best checkpoint for that many epochs on the sequences through the
validation event (same optimiser settings, a fresh optimiser state, the weight average of
``model.ema_decay`` when it is on), then the test runs on the refitted weights, which are saved as
``checkpoints/refit.ckpt`` and become the run's checkpoint for export.

The validation figures of the run stay those of the early-stopped model: after the refit the validation
targets are training data. How many epochs to refit is therefore chosen with
``trainer.eval.holdout_shift=1``, where every split moves one event back and the "test" targets are the
real validation targets (``python -m training.train ... trainer.eval.holdout_shift=1 model.refit_epochs=K``):
no test target is looked at.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from training.callbacks import EMAWeights

log = logging.getLogger(__name__)


def refit_epochs(cfg: DictConfig) -> int:
    epochs = int(cfg.model.get("refit_epochs", 0) or 0)
    if epochs < 0:
        raise ValueError(f"model.refit_epochs must be >= 0, got {epochs}")
    return epochs


def refit(module: pl.LightningModule, dm, cfg: DictConfig, hw, run_dir: Path) -> dict:
    """Continue ``module`` (holding the early-stopped weights) for ``model.refit_epochs`` epochs on the
    sequences through the validation event; returns the figures for ``metrics.json``."""
    epochs = refit_epochs(cfg)
    if hw.devices not in (1, "1") or str(hw.strategy).startswith("ddp"):
        raise ValueError("model.refit_epochs > 0 runs in one process: use trainer=cpu or trainer=gpu (not ddp)")
    dm.use_refit_data()
    decay = float(cfg.model.get("ema_decay", 0.0) or 0.0)
    trainer = pl.Trainer(
        accelerator=hw.accelerator, devices=1, precision=hw.precision, max_epochs=epochs,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        callbacks=[EMAWeights(decay)] if decay > 0 else [], gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        default_root_dir=str(run_dir),
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - t0
    path = run_dir / "checkpoints" / "refit.ckpt"
    trainer.save_checkpoint(str(path))
    log.info("refit: %d epoch(s) on the sequences through the validation event in %.0f s -> %s", epochs, seconds, path)
    return {"refit_epochs": epochs, "refit_time_s": seconds, "refit_sequences": int(len(dm.data.refit_seqs)),
            "refit_checkpoint": str(path.relative_to(run_dir))}
