"""Train the DCN-v2 ranker on the retriever's own candidates: ``python -m training.train model=ranker data=online_retail``.

``train_ranker(cfg)`` (called by ``training.train`` for ``model.family == "ranker"``):

1. Opens the retriever bundle (``model.retriever_bundle``, else ``${paths.bundles}/LATEST``): item
   embeddings, items table, ``encoder.onnx``. Its items must be the processed dataset's items.
2. Builds two stages from the temporal split (``model.split``):
   - *fit*: history = the user's events before ``valid`` starts; labels = what the user does in the
     ``valid`` part. Users are split (``model.holdout_fraction``) into training users and early-stopping
     users: all tuning uses validation users only.
   - *test*: history = everything before ``test`` starts; labels = the ``test`` part.
   For each user with a history and at least one label event: user embedding = ``encoder.onnx``
   over the last ``max_len`` history items; candidates = the exact top-``n_candidates`` items by
   inner product (the retriever's real output: hard negatives); one label per head (event type).
3. Fits ``models.ranker.DCNv2Ranker`` with Lightning (multi-task BCE, early stopping on the
   early-stopping users' NDCG@10 of the re-ranked list, CSV + TensorBoard logs, best checkpoint).
4. Evaluates re-ranked vs retrieval order on the test stage and writes ``metrics.json``
   (``test/ndcg@10``, ``test/retrieval_ndcg@10``, ``test/hr@10``, ``test/rerank_gain``, ...).
5. Exports ``ranker.onnx`` + ``ranker.json`` into the run folder (``export/``), checks ONNX Runtime
   against PyTorch (max abs difference <= ``model.onnx_tolerance``), and copies both into the
   retriever bundle when ``model.export_to_bundle`` is true.

NDCG@k here: binary relevance = the candidate was bought in the label period; IDCG counts all items
the user bought then (capped at k), so items the retriever missed count against both orders.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from features.artifacts import atomic_dir, code_version, file_sha256, write_json
from features.processed import load_manifest, load_split, load_users, processed_dir
from features.user_features import UserFeatureConfig, UserFeatureSpec
from models.ranker import CAT_FEATURES, DENSE_FEATURES, DCNv2Ranker, FeatureBatch, FeatureSpec, ItemTable, build_batch, combine_heads

log = logging.getLogger(__name__)


class RankerSetupError(ValueError):
    """A ranker setting or input that cannot work; the message names it."""


# --------------------------------------------------------------------------------------------------
# Retriever bundle


@dataclass
class Retriever:
    bundle_dir: Path
    embeddings: np.ndarray
    items: pd.DataFrame
    max_len: int
    session: object  # onnxruntime.InferenceSession over encoder.onnx
    manifest: dict
    user_spec: UserFeatureSpec | None = None  # the bundle's user_features.json (its encoder takes user_feat)

    def encode(self, histories: list[np.ndarray], user_feat: np.ndarray | None = None, batch: int = 512) -> np.ndarray:
        """User embeddings from ``encoder.onnx`` (item_id + 1, left-padded, most recent last; plus the users'
        feature codes ``[R, F]`` when the encoder takes ``user_feat``)."""
        L = self.max_len
        if self.user_spec is not None and user_feat is None:
            raise RankerSetupError(f"{self.bundle_dir / 'encoder.onnx'} takes user_feat: user-feature codes are needed")
        out = []
        for s in range(0, len(histories), batch):
            chunk = histories[s:s + batch]
            seq = np.zeros((len(chunk), L), np.int64)
            for i, h in enumerate(chunk):
                h = np.asarray(h, np.int64)[-L:]
                if len(h):
                    seq[i, L - len(h):] = h + 1
            feed = {"item_seq": seq}
            if self.user_spec is not None:
                feed["user_feat"] = np.ascontiguousarray(user_feat[s:s + batch], np.int64)
            out.append(self.session.run(["user_emb"], feed)[0])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.embeddings.shape[1]), np.float32)


def resolve_retriever_bundle(cfg: DictConfig) -> Path:
    b = cfg.model.get("retriever_bundle")
    if b:
        path = Path(str(b))
        if not path.is_dir():
            raise RankerSetupError(f"model.retriever_bundle={path}: folder not found")
        return path
    latest = Path(str(cfg.paths.bundles)) / "LATEST"
    if not latest.exists():
        raise RankerSetupError(f"{latest}: missing; export a retriever bundle first or set model.retriever_bundle")
    return Path(str(cfg.paths.bundles)) / latest.read_text().strip()


def open_retriever(bundle_dir: Path, n_items_expected: int, threads: int) -> Retriever:
    import onnxruntime as ort

    for name in ("item_embeddings.npy", "items.parquet", "encoder.onnx", "manifest.json"):
        if not (bundle_dir / name).exists():
            raise RankerSetupError(f"{bundle_dir / name}: missing (the ranker needs the retriever bundle's {name})")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    emb = np.load(bundle_dir / "item_embeddings.npy").astype(np.float32)
    if emb.shape[0] != n_items_expected:
        raise RankerSetupError(f"{bundle_dir / 'item_embeddings.npy'}: {emb.shape[0]} items, but the processed data has "
                               f"{n_items_expected}: the bundle was exported from other data")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(bundle_dir / "encoder.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if names not in (["item_seq"], ["item_seq", "user_feat"]):
        raise RankerSetupError(f"{bundle_dir / 'encoder.onnx'}: inputs {names}; the ranker feeds item_seq (and user_feat)")
    user_spec = None
    if "user_feat" in names:
        if not (bundle_dir / "user_features.json").exists():
            raise RankerSetupError(f"{bundle_dir / 'user_features.json'}: missing, but encoder.onnx takes user_feat")
        user_spec = UserFeatureSpec.from_json(json.loads((bundle_dir / "user_features.json").read_text()))
    max_len = int(manifest.get("max_len") or sess.get_inputs()[0].shape[1])
    return Retriever(bundle_dir, emb, pd.read_parquet(bundle_dir / "items.parquet"), max_len, sess, manifest, user_spec)


# --------------------------------------------------------------------------------------------------
# Stages: candidates + labels


@dataclass
class Stage:
    users: np.ndarray  # (R,)
    requests: list  # RankInput-like namespaces
    batch: FeatureBatch
    labels: np.ndarray  # (N, H) float32
    n_relevant: np.ndarray  # (R,) items bought in the label period (for IDCG)
    label_items: list[set]  # per request, items with the first head's event

    def rows(self, r: int) -> slice:
        return slice(int(self.batch.offsets[r]), int(self.batch.offsets[r + 1]))


def histories(events: pd.DataFrame, history_events: list[str], max_len: int) -> dict[int, np.ndarray]:
    ev = events[events["event"].isin(history_events)].sort_values(["user_id", "ts", "src_row"], kind="stable")
    return {int(u): g["item_id"].to_numpy(np.int64)[-max_len:] for u, g in ev.groupby("user_id", sort=False)}


def top_candidates(user_emb: np.ndarray, item_emb: np.ndarray, k: int, exclude: list[np.ndarray] | None,
                   device: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (the same ranking the serving index approximates)."""
    emb = torch.from_numpy(item_emb).to(device)
    out_s, out_i = [], []
    for s in range(0, len(user_emb), 1024):
        sc = torch.from_numpy(user_emb[s:s + 1024]).to(device) @ emb.T
        if exclude is not None:
            for j, ex in enumerate(exclude[s:s + 1024]):
                if len(ex):
                    sc[j, torch.from_numpy(np.asarray(ex, np.int64)).to(device)] = float("-inf")
        v, i = torch.topk(sc, k, dim=1)
        out_s.append(v.cpu().numpy())
        out_i.append(i.cpu().numpy())
    return np.concatenate(out_s), np.concatenate(out_i).astype(np.int64)


def build_stage(retriever: Retriever, table: ItemTable, spec: FeatureSpec, hist_events: pd.DataFrame,
                label_events: pd.DataFrame, m: DictConfig, device: str, max_users: int | None,
                user_codes: np.ndarray | None = None) -> Stage:
    """Candidates, features and labels of one stage. ``user_codes [n_users, F]``: user-feature codes as of the end
    of ``hist_events`` (fed to the encoder when it takes them and to the ranker when ``spec.user_features``)."""
    hists = histories(hist_events, list(m.history_events), retriever.max_len)
    label_events = label_events.sort_values(["user_id", "ts", "src_row"], kind="stable")
    first = label_events.groupby("user_id", sort=True)["ts"].min()
    primary = spec.heads[0]
    bought = label_events[label_events["event"] == primary].groupby("user_id")["item_id"].agg(lambda s: set(s.tolist()))
    users = np.array([u for u in bought.index if u in hists and len(hists[u])], np.int64)
    if max_users:
        users = users[:int(max_users)]
    if len(users) == 0:
        raise RankerSetupError("no user has both a history and a label-period purchase: check model.split / data")
    hist_list = [hists[int(u)] for u in users]
    codes = None if user_codes is None else user_codes[users]
    u_emb = retriever.encode(hist_list, codes)
    exclude = hist_list if bool(m.exclude_history) else None
    k = min(int(m.n_candidates), retriever.embeddings.shape[0])
    scores, cands = top_candidates(u_emb, retriever.embeddings, k, exclude, device)
    per_head = {h: label_events[label_events["event"] == h].groupby("user_id")["item_id"].agg(lambda s: set(s.tolist()))
                for h in spec.heads}
    requests, labels, n_rel, label_items = [], [], [], []
    for r, u in enumerate(users):
        ts = first.loc[u]
        requests.append(SimpleNamespace(user_emb=u_emb[r], history=hist_list[r], candidates=cands[r],
                                        retrieval_scores=scores[r], hour=int(ts.hour), dow=int(ts.dayofweek), channel=None,
                                        user_feat=None if codes is None else codes[r]))
        lab = np.zeros((k, len(spec.heads)), np.float32)
        for h_i, h in enumerate(spec.heads):
            got = per_head[h].get(u, set())
            if got:
                lab[:, h_i] = np.isin(cands[r], list(got))
        labels.append(lab)
        relevant = bought.loc[u]
        if bool(m.exclude_history):
            relevant = relevant - set(hist_list[r].tolist())
        n_rel.append(len(relevant))
        label_items.append(relevant)
    batch = build_batch(table, spec, requests)
    return Stage(users, requests, batch, np.concatenate(labels), np.asarray(n_rel, np.int64), label_items)


def subset(stage: Stage, idx: np.ndarray) -> Stage:
    rows = np.concatenate([np.arange(stage.batch.offsets[r], stage.batch.offsets[r + 1]) for r in idx])
    sizes = np.diff(stage.batch.offsets)[idx]
    b = stage.batch
    fb = FeatureBatch(b.dense[rows], b.cat[rows], b.user_emb[rows], b.item_emb[rows], np.concatenate([[0], np.cumsum(sizes)]))
    return Stage(stage.users[idx], [stage.requests[i] for i in idx], fb, stage.labels[rows], stage.n_relevant[idx],
                 [stage.label_items[i] for i in idx])


# --------------------------------------------------------------------------------------------------
# Metrics


def ranking_metrics(stage: Stage, scores: np.ndarray, k: int = 10) -> dict[str, float]:
    """NDCG@k, HR@k, MRR of the order given by ``scores`` (higher first) over each request's candidates."""
    ndcg, hr, mrr = [], [], []
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for r in range(len(stage.requests)):
        sl = stage.rows(r)
        rel = stage.labels[sl, 0]
        order = np.argsort(-scores[sl], kind="stable")
        top = rel[order[:k]]
        n_rel = max(1, int(stage.n_relevant[r]))
        idcg = disc[:min(n_rel, k)].sum()
        ndcg.append(float((top * disc[:len(top)]).sum() / idcg))
        hr.append(float(top.any()))
        hits = np.flatnonzero(rel[order])
        mrr.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    return {f"ndcg@{k}": float(np.mean(ndcg)), f"hr@{k}": float(np.mean(hr)), "mrr": float(np.mean(mrr))}


def retrieval_order(stage: Stage) -> np.ndarray:
    """Scores that reproduce the retrieval order (candidates are stored best first)."""
    return -stage.batch.dense[:, DENSE_FEATURES.index("retrieval_rank")]


# --------------------------------------------------------------------------------------------------
# Lightning module


class RankerModule(pl.LightningModule):
    def __init__(self, net: DCNv2Ranker, lr: float, weight_decay: float, head_weights: list[float], valid_stage: Stage):
        super().__init__()
        self.net = net
        self.lr, self.weight_decay = lr, weight_decay
        self.register_buffer("head_w", torch.tensor(head_weights, dtype=torch.float32))
        self.valid_stage = valid_stage
        self._val_scores: list[torch.Tensor] = []
        self.spec: FeatureSpec | None = None

    def training_step(self, batch, _):
        dense, cat, u, it, y = batch
        logits = self.net.logits(dense, cat, u, it)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(0) * self.head_w).sum()
        self.log("train/loss", loss, prog_bar=False, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, _):
        dense, cat, u, it, y = batch
        probs = self.net(dense, cat, u, it)
        self._val_scores.append(probs.detach().cpu())
        loss = torch.nn.functional.binary_cross_entropy(probs.clamp(1e-6, 1 - 1e-6), y)
        self.log("valid/loss", loss, on_epoch=True, on_step=False)

    def on_validation_epoch_end(self):
        if not self._val_scores:
            return
        probs = torch.cat(self._val_scores).numpy()
        self._val_scores = []
        if len(probs) != len(self.valid_stage.labels):  # sanity-check pass of Lightning
            return
        m = ranking_metrics(self.valid_stage, combine_heads(probs, self.spec))
        self.log("valid/ndcg@10", m["ndcg@10"], prog_bar=True)
        self.log("valid/hr@10", m["hr@10"])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def tensors(stage: Stage) -> TensorDataset:
    b = stage.batch
    return TensorDataset(torch.from_numpy(b.dense), torch.from_numpy(b.cat), torch.from_numpy(b.user_emb),
                         torch.from_numpy(b.item_emb), torch.from_numpy(stage.labels))


@torch.inference_mode()
def predict(net: DCNv2Ranker, stage: Stage, device: str, batch: int = 8192) -> np.ndarray:
    net = net.to(device).eval()
    b = stage.batch
    out = []
    for s in range(0, len(b.dense), batch):
        sl = slice(s, s + batch)
        out.append(net(*(torch.from_numpy(x[sl]).to(device) for x in (b.dense, b.cat, b.user_emb, b.item_emb))).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.heads.out_features), np.float32)


# --------------------------------------------------------------------------------------------------
# ONNX export


def export_onnx(net: DCNv2Ranker, spec: FeatureSpec, out_dir: Path, sample: FeatureBatch, tolerance: float) -> dict:
    """Write ranker.onnx + ranker.json; check ONNX Runtime against PyTorch on ``sample``."""
    import onnxruntime as ort

    net = net.to("cpu").eval()
    n = min(256, len(sample.dense))
    args = tuple(torch.from_numpy(np.ascontiguousarray(x[:n])) for x in (sample.dense, sample.cat, sample.user_emb, sample.item_emb))
    path = out_dir / "ranker.onnx"
    torch.onnx.export(net, args, str(path), input_names=list(spec.onnx_inputs), output_names=[spec.onnx_output],
                      dynamic_axes={**{k: {0: "n"} for k in spec.onnx_inputs}, spec.onnx_output: {0: "n"}},
                      dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run([spec.onnx_output], {k: a.numpy() for k, a in zip(spec.onnx_inputs, args)})
    with torch.inference_mode():
        ref = net(*args).numpy()
    diff = float(np.abs(got - ref).max()) if n else 0.0
    if diff > tolerance:
        raise RuntimeError(f"ranker.onnx differs from PyTorch by {diff:.2e} > model.onnx_tolerance={tolerance}")
    write_json(out_dir / "ranker.json", spec.to_json())
    return {"onnx_max_abs_diff": diff, "onnx_rows_checked": n}


def copy_to_bundle(export_dir: Path, bundle_dir: Path, extra: dict) -> None:
    """Copy ranker.onnx + ranker.json (+ user_features.{parquet,json} when the ranker brought them) into the
    retriever bundle (file by file, atomic renames)."""
    man_path = bundle_dir / "manifest.json"
    m = json.loads(man_path.read_text())
    names = ["ranker.json", "ranker.onnx"] + [n for n in ("user_features.parquet", "user_features.json")
                                              if (export_dir / n).exists()]
    for name in names:
        tmp = bundle_dir / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(export_dir / name, tmp)
        os.replace(tmp, bundle_dir / name)
        m.setdefault("files", {})[name] = file_sha256(bundle_dir / name)
    m["ranker"] = extra
    tmp = bundle_dir / f".manifest.json.tmp-{os.getpid()}"
    write_json(tmp, m)
    os.replace(tmp, man_path)


# --------------------------------------------------------------------------------------------------
# Entry


def _run_dir(cfg: DictConfig) -> Path:
    if cfg.trainer.get("run_dir"):
        return Path(str(cfg.trainer.run_dir))
    base = Path(str(cfg.paths.runs)) / str(cfg.data.name) / str(cfg.model.name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base / stamp
    i = 1
    while path.exists() or (base / f".{path.name}.tmp").exists():
        path = base / f"{stamp}-{i}"
        i += 1
    return path


def _check(m: DictConfig) -> None:
    if int(m.n_candidates) < 10:
        raise RankerSetupError(f"model.n_candidates={m.n_candidates}: must be >= 10")
    if m.split not in ("temporal", "loo"):
        raise RankerSetupError(f"model.split={m.split!r}: expected temporal or loo")
    if not 0.0 < float(m.holdout_fraction) < 1.0:
        raise RankerSetupError(f"model.holdout_fraction={m.holdout_fraction}: must lie in (0, 1)")
    if float(m.lr) <= 0:
        raise RankerSetupError(f"model.lr={m.lr}: must be > 0")


def user_feature_codes(retriever: Retriever, ucfg: UserFeatureConfig, pdir: Path, parts: dict[str, pd.DataFrame]
                       ) -> tuple[UserFeatureSpec | None, np.ndarray | None, np.ndarray | None]:
    """The user-feature spec and codes ``[n_users, F]`` as of the fit stage (train part) and the test stage
    (train + valid). The retriever bundle's own ``user_features.json`` is reused when it has one (one table in
    the bundle for both models); otherwise the spec is fitted on the train part only. ``(None, None, None)``
    when neither the ranker (``model.user_features.enabled``) nor the retriever's encoder uses user features."""
    if retriever.user_spec is None and not ucfg.enabled:
        return None, None, None
    people, items = load_users(pdir), retriever.items
    n_users = int(max(people["user_id"].max(), *(df["user_id"].max() for df in parts.values() if len(df)))) + 1
    spec = retriever.user_spec or UserFeatureSpec.fit(parts["train"], people, items, ucfg)
    return (spec, spec.transform(parts["train"], people, items, n_users),
            spec.transform(pd.concat([parts["train"], parts["valid"]]), people, items, n_users))


def train_ranker(cfg: DictConfig) -> Path:
    """Train, evaluate and export the ranker; returns the run folder (see module docstring)."""
    m = cfg.model
    _check(m)
    torch.set_num_threads(int(m.num_threads))  # tiny model: more threads only spin on a shared CPU
    pl.seed_everything(int(cfg.seed), workers=True)
    accel = str(cfg.trainer.get("accelerator", "cpu"))
    device = "cuda" if accel in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"
    t_start = time.perf_counter()

    pdir = processed_dir(cfg)
    pman = load_manifest(pdir)
    n_items = int(pman["n_items"])
    retriever = open_retriever(resolve_retriever_bundle(cfg), n_items, int(m.num_threads))
    kind = str(m.split)
    parts = {p: load_split(pdir, kind, p) for p in ("train", "valid", "test")}
    present = set(pd.concat([parts["valid"]["event"], parts["test"]["event"]]).unique())
    heads = [h for h in m.heads if h in present]
    if not heads or heads[0] != m.heads[0]:
        raise RankerSetupError(f"model.heads={list(m.heads)}: the first head must be an event type of the data ({sorted(present)})")
    ucfg = UserFeatureConfig.from_cfg(OmegaConf.to_container(m.user_features, resolve=True) if m.get("user_features") else None)
    user_spec, fit_codes, test_codes = user_feature_codes(retriever, ucfg, pdir, parts)
    spec = FeatureSpec.fit(retriever.items, retriever.embeddings.shape[1], n_price_buckets=int(m.n_price_buckets),
                           channels=list(m.channels), heads=heads, score_weights=dict(m.score_weights),
                           recent_window=int(m.recent_window),
                           user_features=user_spec.names if ucfg.enabled else [],
                           user_cardinalities=user_spec.cardinalities if ucfg.enabled else [])
    table = ItemTable.build(retriever.items, retriever.embeddings, spec)
    max_users = cfg.trainer.get("max_users")
    fit = build_stage(retriever, table, spec, parts["train"], parts["valid"], m, device, max_users, fit_codes)
    test = build_stage(retriever, table, spec, pd.concat([parts["train"], parts["valid"]]), parts["test"], m, device,
                       max_users, test_codes)
    rng = np.random.default_rng(int(cfg.seed))
    perm = rng.permutation(len(fit.users))
    n_hold = max(1, int(round(len(perm) * float(m.holdout_fraction))))
    train_stage, valid_stage = subset(fit, np.sort(perm[n_hold:])), subset(fit, np.sort(perm[:n_hold]))
    log.info("ranker stages: fit %d users (%d rows; %d early-stopping users), test %d users (%d rows)",
             len(train_stage.users), len(train_stage.labels), len(valid_stage.users), len(test.users), len(test.labels))

    net = DCNv2Ranker(len(DENSE_FEATURES), spec.cat_cardinalities, spec.dim, len(heads),
                      cat_emb_dim=int(m.arch.cat_emb_dim), n_cross=int(m.arch.n_cross), hidden=list(m.arch.hidden),
                      dropout=float(m.arch.dropout), emb_proj=int(m.arch.emb_proj))
    net.set_normalisation(train_stage.batch.dense.mean(0), train_stage.batch.dense.std(0))
    module = RankerModule(net, float(m.lr), float(m.weight_decay), [float(m.loss_weights.get(h, 1.0)) for h in heads], valid_stage)
    module.spec = spec

    run_dir = _run_dir(cfg)
    with atomic_dir(run_dir) as tmp:
        ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp / "checkpoints", filename="best-{epoch}", monitor="valid/ndcg@10",
                                               mode="max", save_last=True)
        trainer = pl.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=int(m.max_epochs),
            precision=str(cfg.trainer.get("precision", "32-true")) if device == "cuda" else "32-true",
            logger=[pl.loggers.CSVLogger(tmp / "logs", name="csv"), pl.loggers.TensorBoardLogger(tmp / "logs", name="tb")],
            callbacks=[ckpt_cb, pl.callbacks.EarlyStopping(monitor="valid/ndcg@10", mode="max", patience=int(m.patience))],
            enable_progress_bar=bool(cfg.trainer.get("progress_bar", False)), enable_model_summary=False,
            log_every_n_steps=int(cfg.trainer.get("log_every_n_steps", 20)), deterministic=False,
            num_sanity_val_steps=0,
        )
        gen = torch.Generator().manual_seed(int(cfg.seed))
        train_ds, valid_ds = tensors(train_stage), tensors(valid_stage)
        # whole batches by tensor indexing (no per-row collate): batch_size=None + a BatchSampler
        trainer.fit(module,
                    DataLoader(train_ds, batch_size=None,
                               sampler=BatchSampler(RandomSampler(train_ds, generator=gen), int(m.batch_size), drop_last=False)),
                    DataLoader(valid_ds, batch_size=None, sampler=BatchSampler(SequentialSampler(valid_ds), 8192, drop_last=False)))
        best = ckpt_cb.best_model_path
        if best:
            state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
            module.load_state_dict(state)
        net = module.net.eval()

        metrics: dict[str, float | int | str] = {}
        for name, stage in (("valid", valid_stage), ("test", test)):
            probs = predict(net, stage, device)
            rr = ranking_metrics(stage, combine_heads(probs, spec))
            base = ranking_metrics(stage, retrieval_order(stage))
            metrics.update({f"{name}/ndcg@10": rr["ndcg@10"], f"{name}/hr@10": rr["hr@10"], f"{name}/mrr": rr["mrr"],
                            f"{name}/retrieval_ndcg@10": base["ndcg@10"], f"{name}/retrieval_hr@10": base["hr@10"],
                            f"{name}/retrieval_mrr": base["mrr"],
                            f"{name}/rerank_gain": rr["ndcg@10"] / base["ndcg@10"] - 1.0 if base["ndcg@10"] > 0 else float("nan"),
                            f"{name}/users": int(len(stage.users))})
            cand_recall = np.mean([stage.labels[stage.rows(r), 0].sum() / max(1, stage.n_relevant[r]) for r in range(len(stage.users))])
            metrics[f"{name}/candidate_recall@{m.n_candidates}"] = float(cand_recall)
        (tmp / "export").mkdir()
        metrics.update(export_onnx(net, spec, tmp / "export", test.batch, float(m.onnx_tolerance)))
        if spec.user_features and retriever.user_spec is None:   # the bundle has no user-feature table yet: add one
            from training.export import user_feature_table

            user_feature_table(pdir, user_spec, retriever.items).to_parquet(tmp / "export" / "user_features.parquet", index=False)
            write_json(tmp / "export" / "user_features.json", user_spec.to_json())
        metrics["user_features"] = list(spec.user_features)
        metrics.update({"best_checkpoint": str(Path("checkpoints") / Path(best).name) if best else "",
                        "epochs": int(trainer.current_epoch), "device": device,
                        "train_seconds": round(time.perf_counter() - t_start, 1)})
        OmegaConf.save(cfg, tmp / "config.yaml")
        write_json(tmp / "manifest.json", {
            "kind": "ranker", "data": str(cfg.data.name), "retriever_bundle": str(retriever.bundle_dir),
            "retriever_model": retriever.manifest.get("model"), "heads": heads, "n_features": {"dense": len(DENSE_FEATURES), "cat": len(CAT_FEATURES)},
            "counts": {"fit_users": int(len(train_stage.users)), "valid_users": int(len(valid_stage.users)),
                       "test_users": int(len(test.users)), "fit_rows": int(len(train_stage.labels))},
            "input_hashes": {"processed_manifest": file_sha256(pdir / "manifest.json"),
                             "item_embeddings": file_sha256(retriever.bundle_dir / "item_embeddings.npy")},
            "code_version": code_version(), "device": device,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })
        write_json(tmp / "metrics.json", metrics)
    if bool(m.export_to_bundle):
        copy_to_bundle(run_dir / "export", retriever.bundle_dir,
                       {"run": str(run_dir), "test/ndcg@10": metrics["test/ndcg@10"], "test/rerank_gain": metrics["test/rerank_gain"]})
    log.info("ranker run %s: test ndcg@10 %.4f vs retrieval %.4f (gain %+.1f%%)", run_dir, metrics["test/ndcg@10"],
             metrics["test/retrieval_ndcg@10"], 100 * float(metrics["test/rerank_gain"]))
    return run_dir
