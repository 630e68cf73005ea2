"""Run folders and model construction shared by ``train``, ``evaluate`` and ``export``.

A run folder is ``${paths.runs}/<data>/<model>/<YYYYmmdd-HHMMSS>/`` holding ``config.yaml`` (the composed
config), ``checkpoints/`` (``best-*.ckpt``, ``last.ckpt``), ``logs/`` (CSV, TensorBoard) and, once the run
has finished, ``metrics.json``. A folder without ``metrics.json`` is unfinished (killed or still running).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from features.artifacts import read_json
from models.sasrec import SASRecConfig
from models.two_tower import TwoTowerConfig
from training.data import SequenceData, load_sequence_data, price_buckets
from features.processed import load_items
from features.user_features import UserFeatureConfig

log = logging.getLogger(__name__)

NEURAL_FAMILIES = ("sequence", "two_tower")
RUN_DIR_ENV = "SHOPREC_RUN_DIR"    # rank 0 tells DDP worker processes (re-launched scripts) its run folder


def pick_device(accelerator: str) -> str:
    """``cuda`` when asked for a GPU and one is present; ``cpu`` otherwise (with a warning on fallback)."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("gpu", "cuda"):
        log.warning("trainer.accelerator=%s but no CUDA device is available: falling back to the CPU", accelerator)
    return "cpu"


def new_run_dir(cfg: DictConfig) -> Path:
    """A fresh run folder (``trainer.run_dir`` when set); a suffix keeps parallel runs apart."""
    if cfg.trainer.get("run_dir"):
        path = Path(str(cfg.trainer.run_dir))
        path.mkdir(parents=True, exist_ok=True)
        return path
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])          # a DDP worker joins the run folder of rank 0
    base = Path(str(cfg.paths.runs)) / str(cfg.data.name) / str(cfg.model.name)
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {base}")


def find_resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint ``trainer.resume`` points to: None (false), the newest run's ``last.ckpt`` (true), or a path."""
    resume = cfg.trainer.get("resume", False)
    if resume in (False, None, "false", "False"):
        return None
    if resume in (True, "true", "True"):
        base = Path(str(cfg.paths.runs)) / str(cfg.data.name) / str(cfg.model.name)
        if cfg.trainer.get("run_dir"):
            candidates = [Path(str(cfg.trainer.run_dir)) / "checkpoints" / "last.ckpt"]
        else:
            candidates = sorted(base.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        candidates = [c for c in candidates if c.exists()]
        if not candidates:
            raise FileNotFoundError(f"trainer.resume=true but no checkpoints/last.ckpt under {base}")
        return candidates[-1]
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume={resume}: checkpoint file not found")
    return path


def validate_config(cfg: DictConfig) -> None:
    """Fail at start, naming the setting, when the config cannot work."""
    m = cfg.model
    if m.get("family") not in ("sequence", "two_tower", "baseline", "ranker"):
        raise ValueError(f"model.family must be sequence, two_tower, baseline or ranker, got {m.get('family')!r}")
    if int(m.get("max_len", 1)) <= 0:
        raise ValueError(f"model.max_len must be > 0, got {m.max_len}")
    if m.get("family") in NEURAL_FAMILIES:
        for key in ("batch_size", "hidden"):
            if int(m[key]) <= 0:
                raise ValueError(f"model.{key} must be > 0, got {m[key]}")
        if float(m.lr) <= 0:
            raise ValueError(f"model.lr must be > 0, got {m.lr}")
    if m.get("family") == "ranker":
        from training.ranker_data import check_ranker_config

        check_ranker_config(m)
    if int(cfg.trainer.max_epochs) <= 0:
        raise ValueError(f"trainer.max_epochs must be > 0, got {cfg.trainer.max_epochs}")
    shift = int(cfg.trainer.eval.get("holdout_shift", 0) or 0)
    if shift < 0 or (shift and str(cfg.trainer.eval.split) != "loo"):
        raise ValueError(f"trainer.eval.holdout_shift={shift}: must be >= 0, and > 0 only with trainer.eval.split=loo")
    if int(m.get("refit_epochs", 0) or 0) < 0:
        raise ValueError(f"model.refit_epochs must be >= 0, got {m.refit_epochs}")


def use_attributes(cfg: DictConfig, items) -> bool:
    """Resolve ``model.use_attributes`` (true/false/auto) against the items table."""
    want = cfg.model.get("use_attributes", False)
    has = bool(items["attributes"].map(lambda a: a is not None and len(a) > 0).any()) if "attributes" in items else False
    if str(want) == "auto":
        return has
    return bool(want)


def user_feature_config(cfg: DictConfig) -> UserFeatureConfig | None:
    """``model.user_features`` (two-tower only; other families have no user tower)."""
    uf = cfg.model.get("user_features")
    if uf is None or cfg.model.get("family") != "two_tower":
        return None
    return UserFeatureConfig.from_cfg(OmegaConf.to_container(uf, resolve=True))


def load_data(cfg: DictConfig, pdir: Path) -> tuple[SequenceData, dict]:
    """The tensors a neural or baseline model needs, plus the extra item features (price buckets)."""
    items = load_items(pdir)
    attrs = use_attributes(cfg, items)
    data = load_sequence_data(pdir, int(cfg.model.max_len), str(cfg.trainer.eval.split), attrs,
                              cfg.trainer.get("max_users"), int(cfg.model.get("max_attributes", 8)),
                              user_feature_config(cfg), holdout_shift=int(cfg.trainer.eval.get("holdout_shift", 0) or 0),
                              train_windows=int(cfg.model.get("train_windows", 1)))
    extra = {}
    if cfg.model.family == "two_tower":
        extra["price_bucket"], extra["n_price_buckets"] = price_buckets(items, data.n_items, int(cfg.model.price_buckets))
    return data, extra


def optim_settings(m: DictConfig) -> dict:
    keys = ("optimizer", "lr", "weight_decay", "betas", "scheduler", "warmup_steps", "min_lr_ratio")
    return {k: (list(m[k]) if k == "betas" else m[k]) for k in keys if k in m}


def eval_settings(cfg: DictConfig) -> dict:
    e = cfg.trainer.eval
    return {"ks": list(e.ks), "exclude_history": bool(e.exclude_history),
            "sampled_negatives": int(e.sampled_negatives), "split": str(e.split)}


def build_module(cfg: DictConfig, data: SequenceData, extra: dict):
    """The LightningModule for ``cfg.model`` sized to ``data``."""
    from training.modules import SASRecModule, TwoTowerModule

    m = cfg.model
    if m.family == "sequence":
        net = SASRecConfig(
            n_items=data.n_items, max_len=int(m.max_len), hidden=int(m.hidden), blocks=int(m.blocks),
            heads=int(m.heads), dropout=float(m.dropout), emb_dropout=float(m.emb_dropout),
            norm_first=bool(m.norm_first), tie_weights=bool(m.tie_weights), ffn_mult=int(m.ffn_mult),
            block=str(m.get("block", "transformer")), ffn_activation=str(m.get("ffn_activation", "gelu")),
            filter_alpha=float(m.get("filter_alpha", 0.7)), filter_bins=int(m.get("filter_bins", 3)),
            n_attributes=data.n_attributes,
        )
        loss = {"type": str(m.loss), "num_negatives": int(m.num_negatives), "proposal_alpha": float(m.proposal_alpha),
                "logq_correction": bool(m.logq_correction), "label_smoothing": float(m.label_smoothing)}
        return SASRecModule.build(net, optim_settings(m), eval_settings(cfg), loss, data.item_attributes, data.popularity)
    if m.family == "two_tower":
        net = TwoTowerConfig(
            n_items=data.n_items, max_len=int(m.max_len), hidden=int(m.hidden), mlp_hidden=int(m.mlp_hidden),
            dropout=float(m.dropout), n_attributes=data.n_attributes,
            n_price_buckets=int(extra.get("n_price_buckets", 0)), recency_decay=float(m.recency_decay),
            user_feature_cards=data.user_features.cardinalities if data.user_features is not None else [],
        )
        loss = {"temperature": float(m.temperature), "logq_correction": bool(m.logq_correction),
                "random_negatives": int(m.random_negatives), "max_positives": int(m.max_positives)}
        return TwoTowerModule.build(net, optim_settings(m), eval_settings(cfg), loss, data.item_attributes,
                                    data.popularity, extra.get("price_bucket"))
    raise ValueError(f"model.family={m.family!r} has no neural module")


def module_class(family: str):
    from training.modules import SASRecModule, TwoTowerModule

    return {"sequence": SASRecModule, "two_tower": TwoTowerModule}[family]


@dataclass
class RunInfo:
    run_dir: Path
    cfg: DictConfig
    metrics: dict
    checkpoint: Path | None


def open_run(run_dir: str | os.PathLike) -> RunInfo:
    """Read a finished run folder: its config, metrics and best checkpoint."""
    run_dir = Path(str(run_dir))
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"run={run_dir}: no config.yaml (not a run folder)")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    ckpt = metrics.get("best_checkpoint")
    ckpt = Path(ckpt) if ckpt else None
    if ckpt is not None and not ckpt.is_absolute():
        ckpt = run_dir / ckpt
    if ckpt is None or not ckpt.exists():
        found = sorted((run_dir / "checkpoints").glob("best*.ckpt")) or sorted((run_dir / "checkpoints").glob("last.ckpt"))
        ckpt = found[-1] if found else None
    return RunInfo(run_dir, cfg, metrics, ckpt)


def early_stopped(info: RunInfo) -> RunInfo:
    """The run as early stopping left it: a refitted run (``model.refit_epochs``) with its early-stopped
    checkpoint, where its validation figures come from; any other run as it is."""
    early = info.metrics.get("early_stopped_checkpoint")
    return replace(info, checkpoint=info.run_dir / early) if early else info


def load_module(info: RunInfo, device: str = "cpu"):
    """The trained LightningModule of a run (weights from its best checkpoint)."""
    if info.checkpoint is None:
        raise FileNotFoundError(f"run={info.run_dir}: no checkpoint under checkpoints/")
    cls = module_class(str(info.cfg.model.family))
    module = cls.load_from_checkpoint(str(info.checkpoint), map_location=device, weights_only=False)
    return module.to(device).eval()

