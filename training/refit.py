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

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from features.artifacts import write_json

from training.callbacks import EMAWeights

log = logging.getLogger(__name__)


def refit_epochs(cfg: DictConfig) -> int:
    epochs = int(cfg.model.get("refit_epochs", 0) or 0)
    if epochs < 0:
        raise ValueError(f"model.refit_epochs must be >= 0, got {epochs}")
    return epochs


def single_process(hw) -> bool:
    """Whether the run's trainer is one process (the refit runs only there; a DDP run is refitted afterwards
    with ``python -m training.refit --run <run> --apply K``)."""
    return hw.devices in (1, "1") and not str(hw.strategy).startswith("ddp")


class _SaveAfterEpochs(pl.Callback):
    """Writes ``checkpoints/<name>-<k>.ckpt`` after epoch ``k`` of the refit, for each ``k`` of ``epochs``
    (the weight average in place of the raw weights when it is on, as in every checkpoint)."""

    def __init__(self, epochs, run_dir: Path, name: str = "refit") -> None:
        self.epochs, self.run_dir, self.name = {int(k) for k in epochs}, Path(run_dir), name
        self.seconds: dict[int, float] = {}     # refit time up to each saved epoch
        self._t0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        k = trainer.current_epoch + 1
        if k in self.epochs:
            self.seconds[k] = time.perf_counter() - self._t0
            trainer.save_checkpoint(str(self.run_dir / "checkpoints" / f"{self.name}-{k}.ckpt"))


def refit(module: pl.LightningModule, dm, cfg: DictConfig, hw, run_dir: Path, callbacks: tuple[pl.Callback, ...] = (),
          through_validation: bool = True) -> dict:
    """Continue ``module`` (holding the early-stopped weights) for ``model.refit_epochs`` epochs on the
    sequences through the validation event; returns the figures for ``metrics.json``. ``callbacks``: more
    Lightning callbacks for the refit's trainer. ``through_validation=False`` is the refit's control: the same
    epochs on the training sequences only (no new targets)."""
    epochs = refit_epochs(cfg)
    if not single_process(hw):
        raise ValueError("model.refit_epochs > 0 runs in one process: use trainer=cpu or trainer=gpu (not ddp)")
    dm.use_refit_data(through_validation)
    decay = float(cfg.model.get("ema_decay", 0.0) or 0.0)
    ema = [EMAWeights(decay, max_epochs=float(cfg.model.get("ema_max_epochs", 0.0) or 0.0))] if decay > 0 else []
    trainer = pl.Trainer(
        accelerator=hw.accelerator, devices=1, precision=hw.precision, max_epochs=epochs,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        callbacks=ema + list(callbacks),
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
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


def _evaluate_after_refit(run_dir: Path, epochs: list[int], prefix: str, device: str = "cpu",
                          control: bool = False) -> tuple[dict, list[dict]]:
    """For each of ``epochs`` (0 = none): the run's early-stopped checkpoint refitted that long, and the figures of
    its test split. One refit of the longest length does them all: its state after epoch ``k`` is saved as
    ``checkpoints/refit-<k>.ckpt`` and evaluated. With the constant learning rate of the defaults that is what a
    refit of ``k`` epochs computes (same batches, same optimiser steps); with ``model.scheduler=cosine`` each
    point is a prefix of the longest refit's schedule (``prefix_of`` in the result). ``control``: the refit's
    control instead (the same epochs on the training sequences, ``checkpoints/control-<k>.ckpt``)."""
    from features.processed import processed_dir
    from training.data import SequenceDataModule
    from training.evaluate import evaluate_split
    from training.modules import split_scorer
    from training.runs import early_stopped, load_data, load_module, open_run
    from training.trainer import hardware

    info = early_stopped(open_run(run_dir))
    cfg = info.cfg
    data, _ = load_data(cfg, processed_dir(cfg))
    e = cfg.trainer.eval
    common = dict(popularity=data.popularity[1:], exclude_history=bool(e.exclude_history), ks=tuple(e.ks),
                  batch_size=int(e.batch_size), model=str(cfg.model.name), item_category=data.item_category)
    epochs = sorted({int(k) for k in epochs})
    longest = epochs[-1]
    name = "control" if control else "refit"
    checkpoints = {k: info.run_dir / "checkpoints" / f"{name}-{k}.ckpt" for k in epochs if k > 0}
    refit_time = {0: 0.0}
    if longest > 0:
        cfg.model.refit_epochs = longest
        dm = SequenceDataModule(data, int(cfg.model.batch_size), int(e.batch_size), int(cfg.seed),
                                group_by_length=int(cfg.model.get("group_by_length", 0)))
        saver = _SaveAfterEpochs([k for k in checkpoints if k < longest], info.run_dir, name)
        extra = refit(load_module(info, device).train(), dm, cfg, hardware(cfg.trainer, device), info.run_dir, (saver,),
                      through_validation=not control)
        (info.run_dir / extra["refit_checkpoint"]).replace(checkpoints[longest])
        refit_time |= saver.seconds | {longest: extra["refit_time_s"]}
    data.to(device)
    rows = []
    for k in epochs:
        module = load_module(info if k == 0 else replace(info, checkpoint=checkpoints[k]), device)
        with torch.no_grad():
            items = module.item_embeddings().float()
        m = evaluate_split(split_scorer(module, data.test, items), data.test, data.n_items, prefix=prefix, **common)
        rows.append({"refit_epochs": k, **m, "refit_time_s": refit_time[k]})
        log.info("refit %d epoch(s): %sndcg@10 %.4f", k, prefix, m[f"{prefix}ndcg@10"])
    return {"run": str(info.run_dir), "early_stopped_checkpoint": str(info.checkpoint), "holdout_shift":
            int(e.get("holdout_shift", 0) or 0), "prefix_of": longest, "scheduler": str(cfg.model.get("scheduler", "constant"))}, rows


def refit_curve(run_dir: Path, epochs: list[int], device: str = "cpu", control: bool = False) -> dict:
    """Figures of a ``trainer.eval.holdout_shift=1`` run (its "test" = the real validation targets) after
    refitting for each of ``epochs`` (0 = no refit): what chooses ``model.refit_epochs``. Refused on the
    unshifted protocol, where they would be test figures; ``refit_curve.json`` in the run folder.
    ``control``: the same epochs on the training sequences only (``refit_control_curve.json``): what the extra
    epochs with a fresh optimiser give without the new targets."""
    from training.runs import open_run

    if int(open_run(run_dir).cfg.trainer.eval.get("holdout_shift", 0) or 0) < 1:
        raise ValueError(f"run={run_dir}: trainer.eval.holdout_shift is 0, so its test targets are real test targets; "
                         "choose model.refit_epochs on a run with trainer.eval.holdout_shift=1")
    head, rows = _evaluate_after_refit(Path(run_dir), epochs, "shifted_test/", device, control)
    keep = ("refit_epochs", "refit_time_s", "shifted_test/ndcg@10", "shifted_test/hr@10", "shifted_test/ndcg@20")
    curve = {r["refit_epochs"]: {k: r[k] for k in keep} for r in rows}
    path = Path(run_dir) / ("refit_control_curve.json" if control else "refit_curve.json")
    if path.exists():       # a longer curve, point by point: earlier points of the same checkpoint are kept
        old = json.loads(path.read_text())
        if old.get("early_stopped_checkpoint") == head["early_stopped_checkpoint"]:
            curve = {int(r["refit_epochs"]): r for r in old.get("curve", [])} | curve
    curve = [curve[k] for k in sorted(curve)]
    out = {**head, "control": control, "curve": curve, "best_refit_epochs": max(curve, key=lambda r: r["shifted_test/ndcg@10"])["refit_epochs"]}
    write_json(path, out)
    return out


def apply_refit(run_dir: Path, epochs: int, device: str = "cpu") -> dict:
    """What ``model.refit_epochs=epochs`` would have given a finished run: its early-stopped checkpoint refitted,
    and the test figures of the result (``refit-<epochs>.json``). ``epochs`` must have been chosen already."""
    if epochs < 1:
        raise ValueError(f"--apply must be >= 1, got {epochs}")
    head, rows = _evaluate_after_refit(Path(run_dir), [epochs], "test/", device)
    out = {**head, **rows[0]}
    write_json(Path(run_dir) / f"refit-{epochs}.json", out)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m training.refit", description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished run folder")
    ap.add_argument("--epochs", type=int, nargs="+", default=[0, 1, 2, 3],
                    help="refit lengths to compare (a run trained with trainer.eval.holdout_shift=1)")
    ap.add_argument("--apply", type=int, default=None, metavar="K",
                    help="refit the run's early-stopped checkpoint K epochs (K chosen beforehand) and test it")
    ap.add_argument("--control", action="store_true",
                    help="with --epochs: the same epochs on the training sequences only (no validation events)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        if args.apply is not None:
            out = apply_refit(Path(args.run), args.apply, device)
            print(f"refit {args.apply}: test ndcg@10 {out['test/ndcg@10']:.4f}  hr@10 {out['test/hr@10']:.4f}")
            print(json.dumps({k: out[k] for k in ("refit_epochs", "test/ndcg@10", "test/hr@10", "refit_time_s")}))
            return 0
        out = refit_curve(Path(args.run), sorted(set(args.epochs)), device, args.control)
    except (ValueError, FileNotFoundError) as err:
        print(f"training.refit: error: {err}", file=sys.stderr)
        return 2
    for r in out["curve"]:
        print(f"refit {r['refit_epochs']}: ndcg@10 {r['shifted_test/ndcg@10']:.4f}  hr@10 {r['shifted_test/hr@10']:.4f}")
    print(json.dumps({"best_refit_epochs": out["best_refit_epochs"], "curve": out["curve"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
