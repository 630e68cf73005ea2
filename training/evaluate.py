"""Full-ranking evaluation: ``python -m training.evaluate run=<run folder>`` re-evaluates a run's best checkpoint.

``evaluate_split`` is the one evaluation routine (baselines use it directly; the Lightning validation
loop uses the same masking and accumulator): score every item for a batch of users with a batched
matrix product (on the GPU when there is one), set the training history to -inf, rank the target.
The result is written to ``<run>/eval.json`` (metrics, protocol, device) and returned.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from features.artifacts import code_version, write_json
from training.data import EvalSet
from training.metrics import RankingAccumulator, mask_history

log = logging.getLogger(__name__)

ScoreFn = Callable[[torch.Tensor, int, int], torch.Tensor]  # (inputs [B, L], start, stop) -> scores [B, N]


def evaluate_split(score_fn: ScoreFn, split: EvalSet, n_items: int, *, popularity: torch.Tensor | None,
                   exclude_history: bool, ks=(10, 20, 50, 100), batch_size: int = 1024,
                   sampled_negatives: int = 0, prefix: str = "") -> dict[str, float]:
    """Metrics of ``score_fn`` on one evaluation split (see ``training.metrics`` for the definitions)."""
    acc = RankingAccumulator(n_items=n_items, ks=tuple(ks), popularity=popularity,
                             sampled_negatives=sampled_negatives, seed=0)
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            stop = min(start + batch_size, len(split))
            scores = score_fn(split.inputs[start:stop], start, stop).float()
            targets = split.targets[start:stop].to(scores.device) - 1
            if exclude_history:
                rows, cols = split.history_mask_coords(start, stop)
                mask_history(scores, rows.to(scores.device), cols.to(scores.device) - 1, targets)
            acc.update(scores, targets)
    return acc.compute(prefix)


def protocol(cfg: DictConfig) -> dict:
    """How the numbers were computed (stated in every metrics file)."""
    e = cfg.trainer.eval
    return {"split": str(e.split), "ranking": "full (all items)", "exclude_history": bool(e.exclude_history),
            "target_never_excluded": True, "ties": "optimistic (rank = 1 + #items scoring strictly higher)",
            "sampled_negatives": int(e.sampled_negatives)}


@dataclass
class EvalResult:
    run_dir: Path
    metrics: dict = field(default_factory=dict)


def run(cfg: DictConfig) -> EvalResult:
    from training.modules import split_scorer
    from training.runs import load_data, load_module, open_run, pick_device
    from features.processed import processed_dir

    if not cfg.get("run"):
        raise ValueError("run=<run folder> is required")
    info = open_run(cfg.run)
    rcfg = info.cfg
    # evaluation settings and paths may be overridden from the command line
    rcfg.trainer.eval = cfg.trainer.eval if cfg.get("trainer") is not None else rcfg.trainer.eval
    rcfg.paths = cfg.paths
    if str(rcfg.model.family) not in ("sequence", "two_tower"):
        raise ValueError(f"run={info.run_dir}: model.family={rcfg.model.family} is re-evaluated by training.train only")
    device = pick_device("auto")
    data, _ = load_data(rcfg, processed_dir(rcfg))
    module = load_module(info, device)
    data.to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        items = module.item_embeddings().float()
    e = rcfg.trainer.eval
    common = dict(popularity=data.popularity[1:], exclude_history=bool(e.exclude_history), ks=tuple(e.ks),
                  batch_size=int(e.batch_size))
    metrics = evaluate_split(split_scorer(module, data.valid, items), data.valid, data.n_items, prefix="valid/", **common)
    metrics.update(evaluate_split(split_scorer(module, data.test, items), data.test, data.n_items, prefix="test/",
                                  sampled_negatives=int(e.sampled_negatives), **common))
    out = {"metrics": metrics, "protocol": protocol(rcfg), "device": device, "checkpoint": str(info.checkpoint),
           "seconds": time.perf_counter() - t0, "code_version": code_version()}
    write_json(info.run_dir / "eval.json", out)
    log.info("test/ndcg@10=%.4f test/hr@10=%.4f (%s)", metrics["test/ndcg@10"], metrics["test/hr@10"], info.run_dir)
    return EvalResult(info.run_dir, metrics)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        res = run(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"training.evaluate: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(OmegaConf.to_yaml({k: round(v, 5) for k, v in res.metrics.items()}))


if __name__ == "__main__":
    main()
