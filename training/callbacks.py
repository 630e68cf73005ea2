"""Lightning callbacks of our own, instantiated from ``conf/callbacks/*.yaml`` like Lightning's.

They read the monitored metric from the module's ``last_eval`` (the exact float of its last evaluation)
when it has one, else from ``trainer.callback_metrics`` (what it logged, as float32).
"""
from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import WeightAveraging
import torch

log = logging.getLogger(__name__)
MONITOR = "valid/ndcg@10"


def _metric(trainer: pl.Trainer, module: pl.LightningModule, name: str) -> float | None:
    value = getattr(module, "last_eval", {}).get(name)
    if value is None:
        value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


class EpochHistory(pl.Callback):
    """Wall time and validation NDCG@10 / HR@10 after every epoch (kept in checkpoints, so resume continues it)."""

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
        self.history.append({"epoch": trainer.current_epoch + 1,
                             "time_s": round(self._offset + time.perf_counter() - self._t0, 3),
                             MONITOR: _metric(trainer, pl_module, MONITOR), "valid/hr@10": _metric(trainer, pl_module, "valid/hr@10")})
        if trainer.progress_bar_callback is None and trainer.is_global_zero:   # plain log lines instead of a bar
            h = self.history[-1]
            log.info("epoch %d: %s=%s (%.1f s)", h["epoch"], MONITOR,
                     "n/a" if h[MONITOR] is None else f"{h[MONITOR]:.4f}", h["time_s"])

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))


class StopAtTarget(pl.Callback):
    """Stop training once the per-epoch ``valid/ndcg@10`` reaches ``target`` (speed benchmarks: time to a
    quality); ``target=None`` does nothing."""

    def __init__(self, target: float | None = None) -> None:
        self.target = None if target is None else float(target)

    def reached(self, value: float | None) -> bool:
        return self.target is not None and (value or 0.0) >= self.target

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self.reached(_metric(trainer, pl_module, MONITOR)):
            trainer.should_stop = True


def _moving_average(decay):
    """``AveragedModel``'s ``multi_avg_fn``: the moving average with the decay ``min(decay, n / (n + 1))``.
    ``decay``: a float, or a callable returning it (read at every update)."""
    get = decay if callable(decay) else (lambda: decay)

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(get(), n / (n + 1.0)))

    return update


class EMAWeights(WeightAveraging):
    """An exponential moving average of the weights (``decay`` per optimiser step; 0 = off), evaluated and
    checkpointed in place of the raw weights.

    Lightning's ``WeightAveraging`` does the averaging, swaps the averaged weights in for every validation
    during ``fit`` and writes them as the checkpoint's ``state_dict``. Two things differ here, both for the
    evaluation after ``fit`` (``trainer.validate`` / ``trainer.test`` of the best checkpoint): the
    checkpoint's averaged weights stay loaded (Lightning would reload the raw ones), and nothing is swapped
    (the swap would bring in the last epoch's average instead of the best one's). Buffers (item attributes,
    popularity) are not averaged: they do not change in training.

    The decay of update ``n`` is ``min(decay, n / (n + 1))``: the plain mean of the weights so far until about
    ``1 / (1 - decay)`` updates (200 at 0.995), then the moving average. A short run (a demo, a test, the first
    epochs) is thus never an average dominated by the initial weights; a long one is the same moving average,
    since the weight left on those first updates decays as ``decay**n``.

    ``max_epochs`` (> 0) caps the span of the average in epochs, whatever the number of steps per epoch: the
    decay used is ``min(decay, 1 - 1 / (max_epochs * steps_per_epoch))``, fixed when training starts
    (``effective_decay``). A per-step decay alone spans a number of *steps*: 200 at 0.995 are 2.6 epochs of
    Amazon Toys (76 steps) but 50 epochs of a 943-user dataset (4 steps), whose average would then lag far
    behind the model that early stopping judges.
    """

    def __init__(self, decay: float = 0.0, start_step: int = 0, max_epochs: float = 0.0) -> None:
        self.decay, self.start_step = float(decay), int(start_step)
        self.max_epochs = float(max_epochs or 0.0)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"model.ema_decay must be in [0, 1), got {decay}")
        if self.max_epochs < 0:
            raise ValueError(f"model.ema_max_epochs must be >= 0, got {max_epochs}")
        self.effective_decay, self.steps_per_epoch = self.decay, 0
        super().__init__(use_buffers=False, multi_avg_fn=_moving_average(lambda: self.effective_decay))

    def decay_for(self, steps_per_epoch: int) -> float:
        """The decay used with ``steps_per_epoch`` optimiser steps per epoch (``max_epochs`` applied)."""
        if self.max_epochs <= 0 or steps_per_epoch <= 0:
            return self.decay
        return min(self.decay, 1.0 - 1.0 / (self.max_epochs * steps_per_epoch))

    def on_train_start(self, trainer, pl_module) -> None:
        if self.enabled:
            steps = int(trainer.num_training_batches) // max(int(trainer.accumulate_grad_batches), 1)
            self.steps_per_epoch = steps
            self.effective_decay = self.decay_for(steps)
            if self.effective_decay != self.decay:
                log.info("weight average: decay %.4f per step (%d steps per epoch, at most %g epochs averaged; "
                         "model.ema_decay %.4f)", self.effective_decay, steps, self.max_epochs, self.decay)
        super().on_train_start(trainer, pl_module)

    @property
    def enabled(self) -> bool:
        return self.decay > 0.0

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return self.enabled and step_idx is not None and step_idx >= self.start_step

    def _fitting(self, trainer: pl.Trainer) -> bool:
        return self.enabled and trainer.state.fn == "fit"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.enabled:
            super().setup(trainer, pl_module, stage)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.enabled:
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.enabled:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._fitting(trainer):       # resume: raw and averaged weights both come back
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
