"""Write the serving bundle of a trained run: ``python -m training.export run=<run folder>``.

The bundle (``serving/bundle_layout.md``) is published as a new version ``${paths.bundles}/<data>-<model>-<time>[-<n>]/``
(``serving.bundle.new_version``: temporary folder, hashes, rename) and named in ``${paths.bundles}/LATEST``: item embeddings (row i = item_id i), the user/sequence encoder as
ONNX (``item_seq [B, max_len] int64 (, user_feat [B, F] int64) -> user_emb [B, dim] float32``; score = inner
product), the user-feature codes and spec (``user_features.parquet``/``.json``, two-tower with user features), the items and
users tables (the online store's initial state: pseudonymised keys only), the training data's reference
distributions for drift monitoring (``drift_reference.json``, ``serving.drift``), the run's config and a manifest
that records what the model was trained on (``trained_on``: data, split, the train part's period) and the
pseudonymisation key's fingerprint.
The ONNX encoder is checked against PyTorch with ONNX Runtime on a batch of real sequences before the
bundle is published (``export.parity_tolerance``; the measured difference goes into the manifest).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from features.artifacts import write_json
from features.processed import load_events, load_items, load_split, load_users, processed_dir
from features.splits import split_files
from serving.bundle import (
    CONFIG, ENCODER, ITEM_EMBEDDINGS, ITEMS, USER_FEATURES_SPEC, USER_FEATURES_TABLE, USERS, new_version,
)
from serving.drift.reference import write_reference  # drift_reference.json: the training data's distributions
from serving.drift.report import keyed_events

log = logging.getLogger(__name__)


class ExportParityError(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


@dataclass
class ExportResult:
    bundle_dir: Path
    parity_max_abs_diff: float


def export_encoder_onnx(encoder: torch.nn.Module, max_len: int, path: Path, example: torch.Tensor,
                        user_feat: torch.Tensor | None = None) -> None:
    """Export ``item_seq [B, max_len] (, user_feat [B, F]) -> user_emb [B, d]`` with a dynamic batch axis."""
    encoder = encoder.eval().float()
    args, names = (example,), ["item_seq"]
    if user_feat is not None:
        args, names = (example, user_feat), ["item_seq", "user_feat"]
    with torch.no_grad():
        torch.onnx.export(
            encoder, args, str(path), input_names=names, output_names=["user_emb"],
            dynamic_axes={**{n: {0: "batch"} for n in names}, "user_emb": {0: "batch"}}, opset_version=18, dynamo=False,
        )


def onnx_parity(encoder: torch.nn.Module, path: Path, batch: torch.Tensor, user_feat: torch.Tensor | None = None) -> float:
    """Max abs difference between ONNX Runtime (CPU) and PyTorch on ``batch`` (and its user features)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"item_seq": batch.numpy().astype(np.int64)}
    if user_feat is not None:
        feed["user_feat"] = user_feat.numpy().astype(np.int64)
    got = sess.run(["user_emb"], feed)[0]
    with torch.no_grad():
        want = (encoder(batch) if user_feat is None else encoder(batch, user_feat)).float().numpy()
    return float(np.abs(got - want).max())


def user_feature_table(pdir: Path, spec, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every user's feature codes as of the newest event (all prepared events), with the run's fitted vocabularies
    and edges; one row per ``users.parquet`` user. ``items`` (``item_id``, ``category``): default the processed items."""
    events = load_events(pdir)
    people = load_users(pdir)
    n_users = int(max(people["user_id"].max(), events["user_id"].max())) + 1 if len(people) else 0
    return spec.table(spec.transform(events, people, load_items(pdir) if items is None else items, n_users), people)


def _users_table(pdir: Path, max_len: int) -> pd.DataFrame:
    users = load_users(pdir)[["user_id", "user_key"]]
    ev = load_events(pdir, columns=["user_id", "item_id", "event", "ts", "src_row"])
    ev = ev.sort_values(["user_id", "ts", "src_row"], kind="stable")
    hist = ev.groupby("user_id")["item_id"].agg(lambda s: s.to_numpy(np.int64)[-max_len:].tolist())
    buys = ev[ev["event"] == "purchase"]
    purchases = buys.groupby("user_id")["item_id"].agg(lambda s: s.to_numpy(np.int64).tolist())
    purchase_ts = buys.groupby("user_id")["ts"].agg(list)
    out = users.set_index("user_id")
    out["history"] = hist.reindex(out.index)
    out["purchases"] = purchases.reindex(out.index)
    out["purchase_ts"] = purchase_ts.reindex(out.index)
    for col in ("history", "purchases", "purchase_ts"):
        out[col] = out[col].map(lambda v: v if isinstance(v, list) else [])
    return out.reset_index()


def _items_table(pdir: Path, popularity: np.ndarray) -> pd.DataFrame:
    items = load_items(pdir).sort_values("item_id")
    out = pd.DataFrame({
        "item_id": items["item_id"].astype("int64"),
        "item_key": items["item_key"].astype(str),
        "category": items["category"],
        "price": items["price_median"].astype("float64"),
        "popularity": popularity[items["item_id"].to_numpy()].astype("int64"),
        "available": items["available"].astype(bool) if "available" in items else True,
    })
    return out


def trained_on(rcfg: DictConfig, pdir: Path) -> dict:
    """What the exported model was fitted on: the data, the split (``trainer.eval.split``), its train part and
    that part's period (first and last event time), and the prepared data's fingerprint."""
    from features.processed import load_manifest
    from features.splits import split_files

    split = str(rcfg.trainer.eval.split)
    ts = load_split(pdir, split_files(split), "train", columns=["ts"])["ts"]   # the shop protocol: temporal files
    pm = load_manifest(pdir)
    return {"data": str(rcfg.data.name), "split": split, "part": "train",
            "period": [str(ts.min()), str(ts.max())] if len(ts) else None,
            "processed_fingerprint": pm.get("fingerprint"), "max_users": rcfg.trainer.get("max_users")}


def run(cfg: DictConfig) -> ExportResult:
    from models.sasrec import SASRecEncoder
    from models.two_tower import TwoTowerEncoder
    from training.runs import load_data, load_module, open_run

    if not cfg.get("run"):
        raise ValueError("run=<run folder> is required (a folder under ${paths.runs})")
    info = open_run(cfg.run)
    rcfg = info.cfg
    family = str(rcfg.model.family)
    if family not in ("sequence", "two_tower"):
        raise ValueError(f"run={info.run_dir}: model.family={family} has no encoder to export (sequence, two_tower)")
    rcfg.paths = cfg.paths                              # read data / write bundles where this invocation says
    pdir = processed_dir(rcfg)
    module = load_module(info, "cpu")
    data, _ = load_data(rcfg, pdir)
    max_len = int(rcfg.model.max_len)
    encoder = (SASRecEncoder if family == "sequence" else TwoTowerEncoder)(module.net).eval()
    with torch.no_grad():
        item_emb = module.item_embeddings().float().numpy().astype(np.float32)
    bundles = Path(str(cfg.paths.bundles))
    stamp = f"{rcfg.data.name}-{rcfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    # a second export in the same second gets a suffix, as run folders do (versions are never replaced)
    name = next((n for n in (stamp, *(f"{stamp}-{i}" for i in range(1, 1000))) if not (bundles / n).exists()), stamp)
    tol = float(cfg.trainer.export.parity_tolerance)
    check = data.test.inputs[: min(256, len(data.test))]
    spec = data.user_features if family == "two_tower" else None
    check_uf = data.test.user_feat[: len(check)] if spec is not None else None
    if len(check) == 0:
        check = torch.zeros(2, max_len, dtype=torch.long)
        check_uf = torch.zeros(2, len(spec.names), dtype=torch.long) if spec is not None else None
    inputs = [{"name": "item_seq", "dtype": "int64", "shape": ["batch", max_len],
               "meaning": "item_id + 1, 0 = padding, left-padded, most recent last"}]
    if spec is not None:
        inputs.append({"name": "user_feat", "dtype": "int64", "shape": ["batch", len(spec.names)],
                       "meaning": "user_features.parquet columns in this order (0 = unknown: new users)",
                       "columns": list(spec.names), "table": "user_features.parquet", "spec": "user_features.json"})
    manifest = {"data": str(rcfg.data.name), "model": str(rcfg.model.name), "family": family,
                "dim": int(item_emb.shape[1]), "n_items": int(item_emb.shape[0]), "max_len": max_len,
                "score": "inner_product", "encoder_inputs": inputs,
                "encoder_outputs": [{"name": "user_emb", "dtype": "float32", "shape": ["batch", int(item_emb.shape[1])]}],
                "device": "cpu", "metrics": {k: v for k, v in info.metrics.items() if k.startswith("test/")},
                "run_dir": str(info.run_dir), "checkpoint": str(info.checkpoint),
                "trained_on": trained_on(rcfg, pdir)}
    with new_version(bundles, name, manifest=manifest) as draft:
        tmp = draft.path
        np.save(tmp / ITEM_EMBEDDINGS, item_emb)
        export_encoder_onnx(encoder, max_len, tmp / ENCODER, check[:2],
                            None if check_uf is None else check_uf[:2])
        diff = onnx_parity(encoder, tmp / ENCODER, check, check_uf)
        if not diff <= tol:
            raise ExportParityError(f"ONNX Runtime differs from PyTorch by {diff:.2e} > tolerance {tol:.0e}")
        _items_table(pdir, data.popularity.numpy()[1:]).to_parquet(tmp / ITEMS, index=False)
        users = _users_table(pdir, max_len)
        users.to_parquet(tmp / USERS, index=False)
        if spec is not None:
            user_feature_table(pdir, spec).to_parquet(tmp / USER_FEATURES_TABLE, index=False)
            write_json(tmp / USER_FEATURES_SPEC, spec.to_json())
        write_reference(tmp, keyed_events(pdir, "train", split_files(str(rcfg.trainer.eval.split))), max_len)
        OmegaConf.save(rcfg, tmp / CONFIG, resolve=True)
        draft.manifest.update({"onnx_parity_max_abs_diff": diff,
                               "counts": {"items": int(item_emb.shape[0]), "users": int(len(users))}})
    log.info("bundle %s (ONNX parity %.2e)", bundles / name, diff)
    return ExportResult(bundles / name, diff)


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        res = run(cfg)
    except (ValueError, FileNotFoundError, ExportParityError) as err:
        print(f"training.export: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"bundle: {res.bundle_dir} (ONNX parity max abs diff {res.parity_max_abs_diff:.2e})")


if __name__ == "__main__":
    main()
