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
import sys
import time
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


def refit_curve(run_dir: Path, epochs: list[int], device: str = "cpu") -> dict:
    """Test figures of a ``trainer.eval.holdout_shift`` run after refitting its early-stopped checkpoint for
    each of ``epochs`` (0 = no refit), each from that checkpoint: the figures that choose ``model.refit_epochs``.
    Refused on the unshifted protocol, where they would be test figures."""
    from features.processed import processed_dir
    from training.data import SequenceDataModule
    from training.evaluate import evaluate_split
    from training.modules import split_scorer
    from training.runs import load_data, load_module, open_run
    from training.trainer import hardware

    info = open_run(run_dir)
    cfg = info.cfg
    if int(cfg.trainer.eval.get("holdout_shift", 0) or 0) < 1:
        raise ValueError(f"run={run_dir}: trainer.eval.holdout_shift is 0, so its test targets are real test targets; "
                         "choose model.refit_epochs on a run with trainer.eval.holdout_shift=1")
    early = info.run_dir / str(info.metrics.get("early_stopped_checkpoint") or info.checkpoint.relative_to(info.run_dir))
    data, _ = load_data(cfg, processed_dir(cfg))
    e = cfg.trainer.eval
    common = dict(popularity=data.popularity[1:], exclude_history=bool(e.exclude_history), ks=tuple(e.ks),
                  batch_size=int(e.batch_size), model=str(cfg.model.name), item_category=data.item_category)
    hw = hardware(cfg.trainer, device)
    curve = []
    for k in epochs:
        module = load_module(type(info)(info.run_dir, cfg, info.metrics, early), device)
        dm = SequenceDataModule(data, int(cfg.model.batch_size), int(e.batch_size), int(cfg.seed))
        extra = {}
        if k > 0:
            cfg.model.refit_epochs = int(k)
            extra = refit(module.train(), dm, cfg, hw, info.run_dir)
            (info.run_dir / extra["refit_checkpoint"]).rename(info.run_dir / "checkpoints" / f"refit-{k}.ckpt")
        module.eval()
        data.to(device)
        with torch.no_grad():
            items = module.item_embeddings().float()
        m = evaluate_split(split_scorer(module, data.test, items), data.test, data.n_items, prefix="shifted_test/", **common)
        curve.append({"refit_epochs": int(k), **{key: m[key] for key in m if key.endswith(("ndcg@10", "hr@10", "ndcg@20"))},
                      "refit_time_s": extra.get("refit_time_s", 0.0)})
        log.info("refit %d epoch(s): shifted test (= real validation) ndcg@10 %.4f", k, m["shifted_test/ndcg@10"])
    best = max(curve, key=lambda r: r["shifted_test/ndcg@10"])
    out = {"run": str(info.run_dir), "early_stopped_checkpoint": str(early), "curve": curve,
           "best_refit_epochs": best["refit_epochs"]}
    write_json(info.run_dir / "refit_curve.json", out)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m training.refit", description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished run folder trained with trainer.eval.holdout_shift=1")
    ap.add_argument("--epochs", type=int, nargs="+", default=[0, 1, 2, 3], help="refit lengths to compare")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        out = refit_curve(Path(args.run), sorted(set(args.epochs)))
    except (ValueError, FileNotFoundError) as err:
        print(f"training.refit: error: {err}", file=sys.stderr)
        return 2
    for r in out["curve"]:
        print(f"refit {r['refit_epochs']}: ndcg@10 {r['shifted_test/ndcg@10']:.4f}  hr@10 {r['shifted_test/hr@10']:.4f}")
    print(json.dumps({"best_refit_epochs": out["best_refit_epochs"], "curve": out["curve"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
