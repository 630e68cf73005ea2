"""Train a model: ``python -m training.train model=<sasrec|two_tower|pop|buy_again|ease|ranker> data=<name> trainer=<cpu|gpu|ddp>``.

Dispatch on ``model.family``: ``sequence``, ``two_tower`` and ``ranker`` train a LightningModule with one
``pl.Trainer`` (``training.trainer``) built from ``conf/trainer`` (hardware, epochs, ``max_time``), ``conf/logger`` (csv,
tensorboard, mlflow) and ``conf/callbacks`` (best/last checkpoints and early stopping on
``valid/ndcg@10``, epoch history); after fitting, the final validation and the test run through
``trainer.validate`` / ``trainer.test`` on the best checkpoint, so their metrics reach the loggers.
``baseline`` fits popularity, buy-again or EASE/ItemKNN in closed form. Every run writes
``${paths.runs}/<data>/<model>/<time>/`` with ``config.yaml``, ``checkpoints/``, ``logs/``,
``manifest.json`` and, last, ``metrics.json``; the ranker also ``export/`` (``ranker.onnx``, ``ranker.json``).

Resume: ``trainer.resume=true`` continues the newest run of this data/model from its ``last.ckpt``;
``trainer.resume=<path.ckpt>`` continues that checkpoint's run. ``main`` returns ``valid/ndcg@10`` (what a
Hydra sweeper maximises in ``-m`` runs).
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from features.artifacts import code_version, file_sha256, write_json
from features.processed import load_manifest, processed_dir
from features.splits import split_files
from training.callbacks import EMAWeights
from training.evaluate import evaluate_split, protocol
from training.modules import NonFiniteLossError
from training.runs import (NEURAL_FAMILIES, RUN_DIR_ENV, build_module, find_resume_checkpoint, load_data, new_run_dir,
                           pick_device, validate_config)
from training.trainer import build_trainer, fit_and_test, instantiate_loggers, max_time

if TYPE_CHECKING:
    from training.ranker_data import RankerData

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*isn't a `torch.utils.data.DataLoader`.*")
# under DDP every rank evaluates the whole validation split, so its metrics are equal on all ranks: no sync needed
warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
warnings.filterwarnings("ignore", message=".*MLFlow only allows.*")   # '@' dropped from metric names (ndcg@10 -> ndcg10)


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict = field(default_factory=dict)


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
                  batch_size=int(e.batch_size), model=name, item_category=data.item_category)
    metrics = evaluate_split(scorer(data.valid), data.valid, data.n_items, prefix="valid/", **common)
    metrics.update(evaluate_split(scorer(data.test), data.test, data.n_items, prefix="test/",
                                  sampled_negatives=int(e.sampled_negatives), **common))
    del seqs
    return {**metrics, "algorithm": algo, "fit_time_s": fit_s}


def _train_neural(cfg: DictConfig, pdir: Path, run_dir: Path, device: str, resume: Path | None) -> dict:
    from training.data import SequenceDataModule
    from training.refit import refit, refit_epochs, single_process

    data, extra = load_data(cfg, pdir)
    module = build_module(cfg, data, extra)
    module.item_category = data.item_category       # intra-list diversity in every evaluation (not a parameter)
    module.nan_check_every = int(cfg.trainer.nan_check_every_n_steps)
    t = cfg.trainer
    dm = SequenceDataModule(data, int(cfg.model.batch_size), int(t.eval.batch_size), int(cfg.seed),
                            t.eval.get("valid_max_users"), int(cfg.model.get("group_by_length", 0)))
    if bool(t.get("compile", False)):
        # compile the network's forward only: parameter names (checkpoints, export) stay those of the plain module
        module.net.forward = torch.compile(module.net.forward, dynamic=False)
    valid_epoch_users = len(dm.valid_epoch)
    trainer, hw = build_trainer(cfg, run_dir, device)
    hook, skipped = None, None
    if refit_epochs(cfg) > 0 and single_process(hw):
        hook = lambda: refit(module, dm, cfg, hw, run_dir)  # noqa: E731
    elif refit_epochs(cfg) > 0:
        skipped = (f"model.refit_epochs={refit_epochs(cfg)} runs in one process, not under DDP: refit this run with "
                   f"`python -m training.refit --run {run_dir} --apply {refit_epochs(cfg)}`")
    metrics = fit_and_test(trainer, module, dm, resume, hw, before_test=hook)
    if not trainer.is_global_zero:
        return {}
    if skipped:
        log.warning(skipped)
        metrics["refit_skipped"] = skipped
    if hook is not None:        # export takes the refitted weights
        metrics["early_stopped_checkpoint"] = metrics["best_checkpoint"]
        metrics["best_checkpoint"] = metrics["refit_checkpoint"]
    metrics.update({"sequences_per_s": data.info["train_sequences"] * metrics["epochs"] / max(metrics["train_time_s"], 1e-9),
                    "valid_epoch_users": valid_epoch_users, "compiled": bool(t.get("compile", False))})
    ema = [c for c in trainer.callbacks if isinstance(c, EMAWeights) and c.enabled]
    if ema:                     # the decay per step after model.ema_max_epochs
        metrics["ema_decay_effective"] = ema[0].effective_decay
        metrics["ema_steps_per_epoch"] = ema[0].steps_per_epoch
    return metrics


def _train_ranker(cfg: DictConfig, data: "RankerData", pdir: Path, run_dir: Path, device: str, resume: Path | None,
                  manifest: dict) -> dict:
    """The DCN-v2 ranker on the retriever's candidates (``training.ranker``); exports ``export/ranker.onnx``
    and, with ``model.export_to_bundle``, publishes a new bundle version: the retriever's bundle plus the
    ranker (``serving.bundle.publish_derived``; ``LATEST`` moves to it, the retriever's version is unchanged)."""
    from serving.bundle import RANKER_JSON, RANKER_ONNX, USER_FEATURES_SPEC, USER_FEATURES_TABLE, publish_derived
    from training.ranker import build_module as build_ranker, export_onnx
    from training.ranker_data import RankerDataModule

    m = cfg.model
    module = build_ranker(data, m)
    dm = RankerDataModule(data, int(m.batch_size), int(cfg.seed))
    trainer, hw = build_trainer(cfg, run_dir, device)
    metrics = fit_and_test(trainer, module, dm, resume, hw)
    if not trainer.is_global_zero:
        return {}
    export_dir = run_dir / "export"
    metrics.update(export_onnx(module.net, data.spec, export_dir, data.test.batch, float(m.onnx_tolerance)))
    if data.spec.user_features and data.retriever.user_spec is None:  # the bundle has no user-feature table yet: add one
        from training.export import user_feature_table

        user_feature_table(pdir, data.user_spec, data.retriever.items).to_parquet(
            export_dir / USER_FEATURES_TABLE, index=False)
        write_json(export_dir / USER_FEATURES_SPEC, data.user_spec.to_json())
    metrics["user_features"] = list(data.spec.user_features)
    metrics["protocol"] = {"split": data.split, "period": data.period, "candidates": int(m.n_candidates),
                           "ranking": "the retriever's top candidates, re-ranked",
                           "exclude_history": bool(m.exclude_history),
                           "relevant": f"items with a '{data.heads[0]}' event in the label period",
                           "ties": "expected position"}
    manifest.update({"kind": "ranker", "retriever_bundle": str(data.retriever.bundle_dir),
                     "retriever_model": data.retriever.manifest.get("model"), "heads": data.heads,
                     "counts": data.counts(),
                     "input_hashes": {"processed_manifest": file_sha256(pdir / "manifest.json"),
                                      "item_embeddings": file_sha256(data.retriever.bundle_dir / "item_embeddings.npy")}})
    if bool(m.export_to_bundle):      # a new bundle version: the retriever's files + the ranker's (parent recorded)
        added = {f: export_dir / f for f in (RANKER_ONNX, RANKER_JSON, USER_FEATURES_TABLE, USER_FEATURES_SPEC)
                 if (export_dir / f).exists()}
        bundle = publish_derived(data.retriever.bundle_dir, add_files=added, manifest_updates={"ranker": {
            "run": str(run_dir), "test/ndcg@10": metrics["test/ndcg@10"],
            "test/retrieval_ndcg@10": metrics["test/retrieval_ndcg@10"], "protocol": metrics["protocol"]}})
        metrics["bundle"] = str(bundle)
    log.info("ranker: test ndcg@10 %.4f vs retrieval order %.4f (gain %+.1f%%)", metrics["test/ndcg@10"],
             metrics["test/retrieval_ndcg@10"], 100 * float(metrics.get("test/rerank_gain", float("nan"))))
    return metrics


def _log_baseline(cfg: DictConfig, run_dir: Path, metrics: dict) -> None:
    """A closed-form fit has no Trainer: its final metrics go to the configured loggers directly."""
    for lg in instantiate_loggers(cfg, run_dir):
        lg.log_hyperparams({"model": OmegaConf.to_container(cfg.model, resolve=True), "data": str(cfg.data.name)})
        lg.log_metrics({k: float(v) for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}, step=0)
        lg.finalize("success")


def run(cfg: DictConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; returns the run folder and its metrics."""
    validate_config(cfg)
    max_time(cfg.trainer.get("max_time"))          # a bad value fails before any work
    torch.set_num_threads(int(cfg.trainer.num_threads))
    torch.set_float32_matmul_precision("high")
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    pdir = processed_dir(cfg)
    data_manifest = load_manifest(pdir)             # fails naming the folder when the data is not prepared
    device = pick_device(str(cfg.trainer.accelerator))
    resume = find_resume_checkpoint(cfg)
    family = str(cfg.model.family)
    if family == "ranker":               # the retriever is checked and the candidates built before any run folder exists
        from training.ranker_data import load_ranker_data

        ranker_data = load_ranker_data(cfg, pdir, device)
    run_dir = resume.parent.parent if resume else new_run_dir(cfg)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    log.info("run folder %s (device %s%s)", run_dir, device, f", resuming {resume}" if resume else "")
    manifest = {
        "kind": "training_run", "model": str(cfg.model.name), "data": str(cfg.data.name), "device": device,
        "counts": {k: v for k, v in data_manifest.get("counts", {}).items()} if isinstance(data_manifest.get("counts"), dict) else {},
        "input_hashes": _input_hashes(pdir, split_files(str(cfg.trainer.eval.split))),
    }
    if family == "baseline":
        metrics = _train_baseline(cfg, pdir, run_dir, device)
        _log_baseline(cfg, run_dir, metrics)
    elif family in NEURAL_FAMILIES:
        metrics = _train_neural(cfg, pdir, run_dir, device, resume)
    elif family == "ranker":
        metrics = _train_ranker(cfg, ranker_data, pdir, run_dir, device, resume, manifest)
    else:
        raise ValueError(f"model.family={family!r} is not trainable here")
    if not metrics:                                  # a non-zero DDP rank
        return TrainResult(run_dir, {})
    metrics.setdefault("protocol", protocol(cfg))
    metrics.update({"model": str(cfg.model.name), "family": family, "data": str(cfg.data.name),
                    "device": device, "run_dir": str(run_dir)})
    manifest.update({"config": OmegaConf.to_container(cfg, resolve=True), "code_version": code_version(),
                     "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "resumed_from": str(resume) if resume else None})
    _write_final(run_dir, metrics, manifest)
    log.info("test/ndcg@10=%.4f test/hr@10=%.4f valid/ndcg@10=%.4f -> %s", metrics["test/ndcg@10"],
             metrics["test/hr@10"], metrics["valid/ndcg@10"], run_dir / "metrics.json")
    return TrainResult(run_dir, metrics)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float | None:
    """Returns ``valid/ndcg@10`` of the run: the objective of a Hydra sweep (``-m``), never a test figure."""
    try:
        res = run(cfg)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as err:
        print(f"training.train: error: {err}", file=sys.stderr)
        sys.exit(2)
    if not res.metrics:
        return None
    print(f"run folder: {res.run_dir}")
    print(" ".join(f"{k}={res.metrics[k]:.4f}" for k in ("valid/ndcg@10", "test/ndcg@10", "test/hr@10")
                   if k in res.metrics))
    return float(res.metrics["valid/ndcg@10"])


if __name__ == "__main__":
    main()
