"""The ranker's data: the retriever's own candidates for each user, with features and labels.

``load_ranker_data(cfg, pdir, device)``:

1. Opens the retriever bundle (``model.retriever_bundle``, else ``${paths.bundles}/LATEST``): item
   embeddings, items table, ``encoder.onnx`` (``serving.bundle`` contract). Its items must be the processed
   dataset's items, and its manifest's ``trained_on`` must name the train part of the ranker's own split
   (``model.split``, same period, same prepared data): a retriever fitted on a leave-one-out split has seen
   most of the temporal test purchases, which would leak into the candidates and the popularity feature.
2. Builds two stages from the split (``model.split``):
   - *fit*: history = the user's events before ``valid`` starts; labels = what the user does in the
     ``valid`` part. Users are split (``model.holdout_fraction``) into training users and early-stopping
     (validation) users: all tuning uses validation users only.
   - *test*: history = everything before ``test`` starts; labels = the ``test`` part.
   For each user with a history and at least one label event: user embedding = ``encoder.onnx`` over the
   last ``max_len`` history items; candidates = the exact top-``n_candidates`` items by inner product (the
   retriever's real output: hard negatives); one label per head (event type).
3. Reads the item table of the same prepared data (``ItemCatalogue``: each item column's category from
   ``items.parquet``, its training count from the split's train part) for the beyond-accuracy figures of the
   re-ranked and retrieval-order lists (``training.ranker.stage_metrics``).

``RankerDataModule`` serves the three stages as whole-tensor batches to Lightning.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from features.processed import load_items, load_manifest, load_split, load_users
from features.splits import split_files
from features.user_features import UserFeatureConfig, UserFeatureSpec
from models.ranker import FeatureBatch, FeatureSpec, ItemTable, build_batch
from serving.bundle.contract import (ENCODER, ITEM_EMBEDDINGS, ITEMS, MANIFEST, USER_FEATURES_SPEC, BundleError,
                                     encode_sequences, read_manifest, resolve_bundle_dir)
from training.data import item_category_codes

log = logging.getLogger(__name__)

EVAL_BATCH = 8192   # rows per validation/test batch (the model is small)


class RankerSetupError(ValueError):
    """A ranker setting or input that cannot work; the message names it."""


def check_ranker_config(m: DictConfig) -> None:
    """Fail at start, naming the setting, when a ranker setting cannot work."""
    if int(m.n_candidates) < 10:
        raise RankerSetupError(f"model.n_candidates={m.n_candidates}: must be >= 10")
    if m.split not in ("temporal", "loo"):
        raise RankerSetupError(f"model.split={m.split!r}: expected temporal or loo")
    if not 0.0 < float(m.holdout_fraction) < 1.0:
        raise RankerSetupError(f"model.holdout_fraction={m.holdout_fraction}: must lie in (0, 1)")
    if float(m.lr) <= 0:
        raise RankerSetupError(f"model.lr={m.lr}: must be > 0")


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
        """User embeddings from ``encoder.onnx`` (``serving.bundle.encode_sequences`` of the histories; plus the
        users' feature codes ``[R, F]`` when the encoder takes ``user_feat``)."""
        if self.user_spec is not None and user_feat is None:
            raise RankerSetupError(f"{self.bundle_dir / ENCODER} takes user_feat: user-feature codes are needed")
        out = []
        for s in range(0, len(histories), batch):
            feed = {"item_seq": encode_sequences(histories[s:s + batch], self.max_len)}
            if self.user_spec is not None:
                feed["user_feat"] = np.ascontiguousarray(user_feat[s:s + batch], np.int64)
            out.append(self.session.run(["user_emb"], feed)[0])
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.embeddings.shape[1]), np.float32)


def resolve_retriever_bundle(cfg: DictConfig) -> Path:
    """``model.retriever_bundle`` (a folder, or a version name under ``${paths.bundles}``), else ``LATEST``."""
    b = cfg.model.get("retriever_bundle")
    try:
        return resolve_bundle_dir(str(b) if b else None, str(cfg.paths.bundles))
    except BundleError as err:
        raise RankerSetupError(f"model.retriever_bundle: {err}; export a retriever bundle first or set "
                               "model.retriever_bundle") from None


def train_period(pdir: Path, split: str) -> list[str] | None:
    """[first, last] event time of the train part of ``split`` (as ``training.export`` records ``trained_on``)."""
    ts = load_split(pdir, split_files(split), "train", columns=["ts"])["ts"]
    return [str(ts.min()), str(ts.max())] if len(ts) else None


def check_retriever_protocol(manifest: dict, bundle_dir: Path, split: str, period: list[str] | None,
                             fingerprint: str | None) -> None:
    """The retriever must have been fitted on the train part of the ranker's own split (same period, same
    prepared data): otherwise it has seen the ranker's validation/test purchases, and its candidates and the
    popularity feature would leak them. The bundle records it in ``trained_on`` (``serving/bundle_layout.md``)."""
    where = bundle_dir / MANIFEST
    on = manifest.get("trained_on")
    if not isinstance(on, dict) or "split" not in on:
        raise RankerSetupError(f"{where}: records no trained_on split/period; the ranker evaluates on model.split="
                               f"{split} (train part {period}): export a retriever trained on that split (training.export)")
    got_split, got_period = str(on.get("split")), on.get("period")
    if split_files(got_split) != split_files(split) or got_period != period:
        raise RankerSetupError(f"{where}: the retriever was trained on split {got_split!r}, period {got_period}; the "
                               f"ranker evaluates on model.split={split!r}, whose train part spans {period}: train and "
                               f"export a retriever with trainer.eval.split={split_files(split)} on this data")
    got_fp = on.get("processed_fingerprint")
    if got_fp and fingerprint and got_fp != fingerprint:
        raise RankerSetupError(f"{where}: trained_on.processed_fingerprint={got_fp} but the prepared data here has "
                               f"{fingerprint}: the retriever was trained on other prepared data")


def open_retriever(bundle_dir: Path, n_items_expected: int, threads: int) -> Retriever:
    import onnxruntime as ort

    for name in (ITEM_EMBEDDINGS, ITEMS, ENCODER, MANIFEST):
        if not (bundle_dir / name).exists():
            raise RankerSetupError(f"{bundle_dir / name}: missing (the ranker needs the retriever bundle's {name})")
    manifest = read_manifest(bundle_dir, validate=False)
    emb = np.load(bundle_dir / ITEM_EMBEDDINGS).astype(np.float32)
    if emb.shape[0] != n_items_expected:
        raise RankerSetupError(f"{bundle_dir / ITEM_EMBEDDINGS}: {emb.shape[0]} items, but the processed data has "
                               f"{n_items_expected}: the bundle was exported from other data")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(bundle_dir / ENCODER), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    if names not in (["item_seq"], ["item_seq", "user_feat"]):
        raise RankerSetupError(f"{bundle_dir / ENCODER}: inputs {names}; the ranker feeds item_seq (and user_feat)")
    user_spec = None
    if "user_feat" in names:
        if not (bundle_dir / USER_FEATURES_SPEC).exists():
            raise RankerSetupError(f"{bundle_dir / USER_FEATURES_SPEC}: missing, but {ENCODER} takes user_feat")
        user_spec = UserFeatureSpec.from_json(json.loads((bundle_dir / USER_FEATURES_SPEC).read_text()))
    max_len = int(manifest.get("max_len") or sess.get_inputs()[0].shape[1])
    return Retriever(bundle_dir, emb, pd.read_parquet(bundle_dir / ITEMS), max_len, sess, manifest, user_spec)


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

    def items(self) -> np.ndarray:
        """The item column of every candidate row, in batch order (request by request, retrieval order)."""
        if not self.requests:
            return np.zeros(0, np.int64)
        return np.concatenate([np.asarray(req.candidates, np.int64) for req in self.requests])

    def tensors(self) -> TensorDataset:
        b = self.batch
        return TensorDataset(torch.from_numpy(b.dense), torch.from_numpy(b.cat), torch.from_numpy(b.user_emb),
                             torch.from_numpy(b.item_emb), torch.from_numpy(self.labels))


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


# --------------------------------------------------------------------------------------------------
# The item table of the beyond-accuracy figures


@dataclass
class ItemCatalogue:
    """What ``training.metrics.BeyondAccuracy`` needs of every item column, from the prepared data the ranker
    trains on: the same definitions as the retrieval models' evaluation (``training.data.load_sequence_data``)."""

    n_items: int
    popularity: np.ndarray   # [n_items] training counts: events of the split's train part (novelty, long tail)
    category: np.ndarray     # [n_items] category codes, -1 = none (intra-list diversity)


def load_item_catalogue(pdir: Path, train_events: pd.DataFrame, n_items: int) -> ItemCatalogue:
    """Categories from ``items.parquet`` of ``pdir``, counts from ``train_events`` (the split's train part)."""
    items = train_events["item_id"].to_numpy(np.int64)
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise RankerSetupError(f"{pdir}: train events hold item ids outside 0..{n_items - 1}")
    return ItemCatalogue(n_items, np.bincount(items, minlength=n_items).astype(np.float64),
                         item_category_codes(load_items(pdir), n_items).numpy())


# --------------------------------------------------------------------------------------------------
# Everything the ranker trains and is evaluated on


@dataclass
class RankerData:
    retriever: Retriever
    spec: FeatureSpec
    heads: list[str]
    user_spec: UserFeatureSpec | None      # the users' feature spec (ranker inputs and/or the encoder's)
    train: Stage                           # fit stage, training users
    valid: Stage                           # fit stage, early-stopping users
    test: Stage
    split: str
    period: list[str] | None               # [first, last] event time of the split's train part
    catalogue: ItemCatalogue               # categories and training counts (beyond-accuracy figures)

    def stage(self, name: str) -> Stage:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]

    def counts(self) -> dict[str, int]:
        return {"fit_users": int(len(self.train.users)), "valid_users": int(len(self.valid.users)),
                "test_users": int(len(self.test.users)), "fit_rows": int(len(self.train.labels))}


def load_ranker_data(cfg: DictConfig, pdir: Path, device: str) -> RankerData:
    """Open and check the retriever bundle, then build the fit (train / valid users) and test stages."""
    m = cfg.model
    check_ranker_config(m)
    pman = load_manifest(pdir)
    n_items = int(pman["n_items"])
    retriever = open_retriever(resolve_retriever_bundle(cfg), n_items, int(cfg.trainer.num_threads))
    kind = str(m.split)
    period = train_period(pdir, kind)
    check_retriever_protocol(retriever.manifest, retriever.bundle_dir, kind, period, pman.get("fingerprint"))
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
    perm = np.random.default_rng(int(cfg.seed)).permutation(len(fit.users))
    n_hold = max(1, int(round(len(perm) * float(m.holdout_fraction))))
    data = RankerData(retriever, spec, heads, user_spec, subset(fit, np.sort(perm[n_hold:])),
                      subset(fit, np.sort(perm[:n_hold])), test, kind, period,
                      load_item_catalogue(pdir, parts["train"], n_items))
    log.info("ranker stages: fit %d users (%d rows; %d early-stopping users), test %d users (%d rows)",
             len(data.train.users), len(data.train.labels), len(data.valid.users), len(test.users), len(test.labels))
    return data


class RankerDataModule(pl.LightningDataModule):
    """Training users' rows in shuffled batches (seeded); validation and test rows in order, whole batches by
    tensor indexing (no per-row collate)."""

    def __init__(self, data: RankerData, batch_size: int, seed: int) -> None:
        super().__init__()
        self.data, self.batch_size, self.seed = data, int(batch_size), int(seed)
        self._sets = {name: data.stage(name).tensors() for name in ("train", "valid", "test")}

    def stage(self, name: str) -> Stage:
        return self.data.stage(name)

    def train_dataloader(self) -> DataLoader:
        ds = self._sets["train"]
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=None,
                          sampler=BatchSampler(RandomSampler(ds, generator=gen), self.batch_size, drop_last=False))

    def _ordered(self, name: str) -> DataLoader:
        ds = self._sets[name]
        return DataLoader(ds, batch_size=None, sampler=BatchSampler(SequentialSampler(ds), EVAL_BATCH, drop_last=False))

    def val_dataloader(self) -> DataLoader:
        return self._ordered("valid")

    def test_dataloader(self) -> DataLoader:
        return self._ordered("test")
