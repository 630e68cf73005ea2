"""Lightning callbacks of our own, instantiated from ``conf/callbacks/*.yaml`` like Lightning's.

They read the monitored metric from the module's ``last_eval`` (the exact float of its last evaluation)
when it has one, else from ``trainer.callback_metrics`` (what it logged, as float32).
"""
from __future__ import annotations

import logging
import time

import pytorch_lightning as pl

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
