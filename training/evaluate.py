"""Full-ranking evaluation: ``python -m training.evaluate run=<run folder>`` re-evaluates a run's best checkpoint.

``evaluate_split`` is the one evaluation routine (baselines use it directly; the Lightning validation
loop feeds the same ``training.metrics.RankingEvaluator``): score every item for a batch of users with a
batched matrix product (on the GPU when there is one), hand the scores, the relevant items and the
history to the evaluator (which masks the history when ``exclude_history``, target-blind). ``protocol``
is what every ``metrics.json`` / ``eval.json`` states about how its numbers were computed.
The result is written to ``<run>/eval.json`` (metrics, protocol, device) and returned.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from features.artifacts import code_version, write_json
from features.cli import run_or_exit
from features.splits import SHOP, SHOP_TARGET_EVENTS
from training.data import EvalSet
from training.metrics import TIES, RankingEvaluator

log = logging.getLogger(__name__)

ScoreFn = Callable[[torch.Tensor, int, int], torch.Tensor]  # (inputs [B, L], start, stop) -> scores [B, N]


def evaluate_split(score_fn: ScoreFn, split: EvalSet, n_items: int, *, popularity: torch.Tensor | None,
                   exclude_history: bool, ks=(10, 20, 50, 100), batch_size: int = 1024,
                   sampled_negatives: int = 0, prefix: str = "", model: str = "model",
                   item_category: torch.Tensor | None = None) -> dict[str, float]:
    """Metrics of ``score_fn`` on one evaluation split (see ``training.metrics`` for the definitions);
    ``item_category`` (``[n_items]`` codes, -1 = none) adds the intra-list diversity."""
    ev = RankingEvaluator(n_items=n_items, ks=tuple(ks), model=model, exclude_history=exclude_history,
                          popularity=popularity, sampled_negatives=sampled_negatives, seed=0,
                          item_category=item_category)
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            stop = min(start + batch_size, len(split))
            scores = score_fn(split.inputs[start:stop], start, stop)
            dev = scores.device
            rel_rows, rel_items = split.relevant_coords(start, stop)
            h_rows, h_items = split.history_mask_coords(start, stop)
            ev.update(scores, (rel_rows.to(dev), rel_items.to(dev) - 1), (h_rows.to(dev), h_items.to(dev) - 1))
    return ev.compute(prefix)


def protocol(cfg: DictConfig) -> dict:
    """How the numbers were computed (stated in every metrics file)."""
    e = cfg.trainer.eval
    split = str(e.split)
    exclude = bool(e.exclude_history)
    out = {"split": split, "ranking": "full (all items)",
           "history": ("discovery: every history item removed from the ranking, relevant ones too (a repeat is a miss)"
                       if exclude else "repeat-aware: nothing removed from the ranking"),
           "exclude_history": exclude, "ties": TIES, "max_users": cfg.trainer.get("max_users"),
           "sampled_negatives": int(e.sampled_negatives) if split != SHOP else 0}   # one relevant item per row only
    shift = int(e.get("holdout_shift", 0) or 0)
    if shift:
        out["holdout_shift"] = shift
    if split == SHOP:
        out["relevant"] = (f"the {'/'.join(SHOP_TARGET_EVENTS)} lines of each user's next basket after the cut-off "
                           "(users with an event before it); history = every event before the cut-off")
    elif split == "loo" and shift:
        out["relevant"] = (f"each user's event {shift + 1} from the end (leave-one-out moved {shift} event(s) back: "
                           "'test' is the real validation target)")
    elif split == "loo":
        out["relevant"] = "each user's last target event (leave-one-out)"
    else:
        out["relevant"] = "each user's last event of the period (temporal, any event type)"
    return out


@dataclass
class EvalResult:
    run_dir: Path
    metrics: dict = field(default_factory=dict)


def run(cfg: DictConfig) -> EvalResult:
    from training.modules import split_scorer
    from training.runs import early_stopped, load_data, load_module, open_run, pick_device
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
                  batch_size=int(e.batch_size), model=str(rcfg.model.name), item_category=data.item_category)
    # a refitted run (model.refit_epochs) trained on the validation targets after early stopping: its validation
    # figures are those of the early-stopped checkpoint, its test figures those of the refitted one
    valid_info = early_stopped(info)
    valid_module = module if valid_info is info else load_module(valid_info, device)
    with torch.no_grad():
        valid_items = valid_module.item_embeddings().float()
    metrics = evaluate_split(split_scorer(valid_module, data.valid, valid_items), data.valid, data.n_items,
                             prefix="valid/", **common)
    metrics.update(evaluate_split(split_scorer(module, data.test, items), data.test, data.n_items, prefix="test/",
                                  sampled_negatives=int(e.sampled_negatives), **common))
    out = {"metrics": metrics, "protocol": protocol(rcfg), "device": device, "checkpoint": str(info.checkpoint),
           "valid_checkpoint": str(valid_info.checkpoint), "seconds": time.perf_counter() - t0,
           "code_version": code_version()}
    write_json(info.run_dir / "eval.json", out)
    log.info("test/ndcg@10=%.4f test/hr@10=%.4f (%s)", metrics["test/ndcg@10"], metrics["test/hr@10"], info.run_dir)
    return EvalResult(info.run_dir, metrics)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    res = run_or_exit("training.evaluate", run, cfg)
    print(OmegaConf.to_yaml({k: round(v, 5) for k, v in res.metrics.items()}))


if __name__ == "__main__":
    main()
