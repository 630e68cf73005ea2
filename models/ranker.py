"""The ranking model (DCN-v2) and the one feature builder that training and serving share.

Why DCN-v2 rather than DeepFM: most of what predicts the next purchase here is dense (the
retrieval score, how often and how recently the user bought the candidate, similarity to the
last items, popularity, price gap) and there are only a handful of small categorical fields.
DeepFM's factorisation machine crosses embedded *sparse* fields pairwise; DCN-v2's cross layers
(``x_{l+1} = x0 * (W x_l + b) + x_l``) learn bounded-degree crosses over the whole input, dense
features and embedded fields alike, at the cost of one matrix per layer. It also exports to ONNX
as plain matrix products.

Inputs of the network (and of ``ranker.onnx``), one row per (request, candidate):

- ``dense``    float32 ``[N, len(DENSE_FEATURES)]`` raw dense features (standardised inside the model);
- ``cat``      int64 ``[N, len(CAT_FEATURES) + len(user_features)]`` categorical codes, 0 = unknown; the
  last columns are the user's feature codes (``features.user_features``, ``spec.user_features``), the
  same for every candidate of a request (zeros when the request has none: a new user);
- ``user_emb`` float32 ``[N, dim]`` the user's sequence embedding from ``encoder.onnx``;
- ``item_emb`` float32 ``[N, dim]`` the candidate's item embedding.

Output ``probs`` float32 ``[N, n_heads]``: one probability per event head (e.g. purchase, return).
The serving score is ``sum_h score_weights[h] * probs[:, h]``.

``build_features`` turns (user embedding, history, candidates, retrieval scores, context) into
those arrays from the bundle's item table, so the ranker sees the same features offline and online.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

DENSE_FEATURES = (
    "retrieval_score",  # the retriever's inner product
    "retrieval_rank",  # position in the retrieval list / list length (0 = best)
    "log_popularity",  # log1p of the item's train interaction count
    "log_price",  # log1p of the item's median price (0 when unknown)
    "has_price",
    "log_hist_count",  # log1p of how often the candidate appears in the history
    "in_history",
    "hist_recency",  # 1 / (1 + events since the candidate was last seen), 0 if never
    "cat_share",  # share of the history in the candidate's category
    "log_hist_len",
    "sim_recent_mean",  # cosine similarity of the candidate to the last few history items
    "sim_recent_max",
    "price_gap",  # |log price - mean log price of the history|
    "user_emb_norm",
    "item_emb_norm",
)
CAT_FEATURES = ("category", "price_bucket", "hour", "dow", "channel")


class RankInput(Protocol):
    """What ``build_features`` needs from one request (``serving.ranking.RankRequest`` fits)."""

    user_emb: np.ndarray
    history: np.ndarray
    candidates: np.ndarray
    retrieval_scores: np.ndarray
    hour: int
    dow: int
    channel: str | None
    # optional: ``user_feat`` int64 [len(spec.user_features)] user-feature codes (absent = all unknown)


@dataclass
class FeatureSpec:
    """Everything the feature builder needs besides the bundle; saved as ``ranker.json``."""

    dim: int
    categories: list[str]  # code i+1 = categories[i]; 0 = unknown
    price_edges: list[float]  # price bucket b+1 = edges[b-1] <= log price < edges[b]; 0 = no price
    channels: list[str]  # code i+1 = channels[i]; 0 = unknown / none
    heads: list[str]  # e.g. ["purchase", "return"]
    score_weights: dict[str, float]
    recent_window: int = 5
    dense_features: list[str] = field(default_factory=lambda: list(DENSE_FEATURES))
    cat_features: list[str] = field(default_factory=lambda: list(CAT_FEATURES))
    onnx_inputs: list[str] = field(default_factory=lambda: ["dense", "cat", "user_emb", "item_emb"])
    onnx_output: str = "probs"
    schema_version: int = 1
    user_features: list[str] = field(default_factory=list)      # features.user_features names, in cat order
    user_cardinalities: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.user_features) != len(self.user_cardinalities):
            raise ValueError(f"user_cardinalities: {len(self.user_cardinalities)} sizes for "
                             f"{len(self.user_features)} user_features")
        want = list(CAT_FEATURES) + [f"user_{n}" for n in self.user_features]
        if list(self.cat_features) == list(CAT_FEATURES) and self.user_features:
            self.cat_features = want

    @property
    def cat_cardinalities(self) -> list[int]:
        return [len(self.categories) + 1, len(self.price_edges) + 2, 24, 7, len(self.channels) + 1,
                *[int(c) for c in self.user_cardinalities]]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cat_cardinalities"] = self.cat_cardinalities
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureSpec":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**d)

    @classmethod
    def fit(cls, items: pd.DataFrame, dim: int, *, n_price_buckets: int, channels: Sequence[str],
            heads: Sequence[str], score_weights: dict[str, float], recent_window: int,
            user_features: Sequence[str] = (), user_cardinalities: Sequence[int] = ()) -> "FeatureSpec":
        cats = sorted(str(c) for c in items["category"].dropna().unique()) if "category" in items else []
        lp = np.log1p(items["price"].dropna().to_numpy(float)) if "price" in items else np.array([])
        edges = [] if len(lp) == 0 else sorted(set(np.quantile(lp, np.linspace(0, 1, n_price_buckets + 1)[1:-1]).round(6).tolist()))
        return cls(dim=int(dim), categories=cats, price_edges=[float(e) for e in edges], channels=list(channels),
                   heads=list(heads), score_weights={h: float(score_weights.get(h, 0.0)) for h in heads},
                   recent_window=int(recent_window), user_features=list(user_features),
                   user_cardinalities=[int(c) for c in user_cardinalities])


def category_codes(cats: pd.Series | None, categories: Sequence[str], n: int) -> np.ndarray:
    """Code ``i + 1`` of ``categories[i]`` for each value (compared as ``str(value)``, as ``FeatureSpec.fit``
    writes them); 0 for a missing value or one outside ``categories``. Vectorised (a hash lookup per value)."""
    out = np.zeros(n, np.int64)
    if cats is None or len(categories) == 0 or n == 0:
        return out
    cats = pd.Series(cats).reset_index(drop=True)
    notna = cats.notna().to_numpy(bool)
    if not notna.any():
        return out
    vals = cats[notna]
    if pd.api.types.infer_dtype(vals, skipna=True) != "string":
        vals = vals.map(str)  # e.g. numeric category ids: "3" / "3.0", as str() writes them
    code_of = {c: i + 1 for i, c in enumerate(categories)}  # a repeated name keeps its last code, like a dict
    fcodes, uniques = pd.factorize(vals)  # one dict lookup per distinct value, not per item
    lut = np.fromiter((code_of.get(str(u), 0) for u in uniques), np.int64, len(uniques))
    out[np.flatnonzero(notna)] = lut[fcodes]
    return out


@dataclass
class ItemTable:
    """Per-item arrays the feature builder reads (row = dense item id)."""

    embeddings: np.ndarray  # (n, dim) float32
    category: np.ndarray  # (n,) int64 codes
    price_bucket: np.ndarray  # (n,) int64
    log_price: np.ndarray  # (n,) float32, 0 where unknown
    has_price: np.ndarray  # (n,) float32
    log_pop: np.ndarray  # (n,) float32
    unit: np.ndarray  # (n, dim) L2-normalised embeddings
    norm: np.ndarray  # (n,) float32

    @classmethod
    def build(cls, items: pd.DataFrame, embeddings: np.ndarray, spec: FeatureSpec) -> "ItemTable":
        emb = np.asarray(embeddings, np.float32)
        n = emb.shape[0]
        items = items.set_index("item_id").reindex(np.arange(n))
        category = category_codes(items["category"] if "category" in items else None, spec.categories, n)
        price = items["price"].to_numpy(float) if "price" in items else np.full(n, np.nan)
        has = np.isfinite(price) & (price >= 0)
        lp = np.where(has, np.log1p(np.where(has, price, 0.0)), 0.0)
        bucket = np.where(has, np.searchsorted(np.asarray(spec.price_edges), lp, side="right") + 1, 0)
        pop = items["popularity"].fillna(0).to_numpy(float) if "popularity" in items else np.zeros(n)
        norm = np.linalg.norm(emb, axis=1)
        return cls(emb, category, bucket.astype(np.int64), lp.astype(np.float32), has.astype(np.float32),
                   np.log1p(np.clip(pop, 0, None)).astype(np.float32), emb / np.maximum(norm, 1e-12)[:, None],
                   norm.astype(np.float32))


@dataclass
class FeatureBatch:
    dense: np.ndarray  # (N, F) float32
    cat: np.ndarray  # (N, C) int64
    user_emb: np.ndarray  # (N, dim) float32
    item_emb: np.ndarray  # (N, dim) float32
    offsets: np.ndarray  # (R+1,) request r owns rows offsets[r]:offsets[r+1]

    def as_onnx_feed(self) -> dict[str, np.ndarray]:
        return {"dense": self.dense, "cat": self.cat, "user_emb": self.user_emb, "item_emb": self.item_emb}


def request_features(table: ItemTable, spec: FeatureSpec, req: RankInput) -> tuple[np.ndarray, np.ndarray]:
    """Dense and categorical features of one request's candidates (each item array is gathered once)."""
    n_items = table.embeddings.shape[0]
    cand = np.asarray(req.candidates, np.int64)
    if cand.size and (cand.min() < 0 or cand.max() >= n_items):
        raise ValueError(f"candidates: item ids must lie in [0, {n_items}), got {cand.min()}..{cand.max()}")
    hist = np.asarray(req.history, np.int64)
    hist = hist[(hist >= 0) & (hist < n_items)]
    scores = np.asarray(req.retrieval_scores, np.float32)
    if scores.shape != cand.shape:
        raise ValueError(f"retrieval_scores: shape {scores.shape} differs from candidates {cand.shape}")
    n, L = len(cand), len(hist)
    c_cat, c_lp, c_has = table.category[cand], table.log_price[cand], table.has_price[cand]
    dense = np.zeros((n, len(DENSE_FEATURES)), np.float32)
    dense[:, 0] = scores
    dense[:, 1] = np.arange(n, dtype=np.float32) / max(n, 1)
    dense[:, 2] = table.log_pop[cand]
    dense[:, 3] = c_lp
    dense[:, 4] = c_has
    if L:
        rev_items, first_rev, counts = np.unique(hist[::-1], return_index=True, return_counts=True)
        pos = np.minimum(np.searchsorted(rev_items, cand), len(rev_items) - 1)
        found = rev_items[pos] == cand
        dense[:, 5] = np.where(found, np.log1p(counts[pos]), 0.0)
        dense[:, 6] = found
        dense[:, 7] = np.where(found, 1.0 / (1.0 + first_rev[pos]), 0.0)
        hist_cat = table.category[hist]
        cat_counts = np.bincount(hist_cat, minlength=len(spec.categories) + 1).astype(np.float32)
        cat_counts[0] = 0.0
        dense[:, 8] = cat_counts[c_cat] / L
        dense[:, 9] = np.log1p(L)
        recent = table.unit[hist[-spec.recent_window:]]
        sims = table.unit[cand] @ recent.T
        dense[:, 10] = np.add.reduce(sims, axis=1) / sims.shape[1]  # = sims.mean(axis=1), without its overhead
        dense[:, 11] = np.maximum.reduce(sims, axis=1)
        h_has = table.has_price[hist] > 0
        if h_has.any():
            h_lp = table.log_price[hist][h_has]
            mean_lp = np.add.reduce(h_lp) / h_lp.shape[0]  # = h_lp.mean()
            dense[:, 12] = np.where(c_has > 0, np.abs(c_lp - mean_lp), 0.0)
    u = np.asarray(req.user_emb).reshape(-1)
    dense[:, 13] = float(np.sqrt(u.dot(u)))  # = np.linalg.norm(user_emb)
    dense[:, 14] = table.norm[cand]
    chan = 0
    if req.channel is not None and req.channel in spec.channels:
        chan = spec.channels.index(req.channel) + 1
    n_user = len(spec.user_features)
    cat = np.empty((n, len(CAT_FEATURES) + n_user), np.int64)
    cat[:, 0] = c_cat
    cat[:, 1] = table.price_bucket[cand]
    cat[:, 2] = int(req.hour) % 24
    cat[:, 3] = int(req.dow) % 7
    cat[:, 4] = chan
    if n_user:
        uf = getattr(req, "user_feat", None)
        if uf is None:
            cat[:, len(CAT_FEATURES):] = 0
        else:
            codes = np.asarray(uf, np.int64).reshape(-1)
            if codes.shape[0] != n_user:
                raise ValueError(f"user_feat: expected {n_user} codes ({spec.user_features}), got {codes.shape[0]}")
            card = np.asarray(spec.user_cardinalities, np.int64)
            cat[:, len(CAT_FEATURES):] = np.where((codes >= 0) & (codes < card), codes, 0)   # out of range = unknown
    return dense, cat


def build_batch(table: ItemTable, spec: FeatureSpec, requests: Sequence[RankInput]) -> FeatureBatch:
    """Features of many requests stacked into one batch (for one ONNX Runtime / torch call)."""
    dim = table.embeddings.shape[1]
    dens, cats, users, items, offsets = [], [], [], [], [0]
    for req in requests:
        u = np.asarray(req.user_emb, np.float32).reshape(-1)
        if u.shape[0] != dim:
            raise ValueError(f"user_emb: expected dimension {dim}, got {u.shape[0]}")
        d, c = request_features(table, spec, req)
        dens.append(d)
        cats.append(c)
        users.append(np.broadcast_to(u, (len(d), dim)))
        items.append(table.embeddings[np.asarray(req.candidates, np.int64)])
        offsets.append(offsets[-1] + len(d))
    if not dens:
        z = np.zeros((0, dim), np.float32)
        return FeatureBatch(np.zeros((0, len(DENSE_FEATURES)), np.float32),
                            np.zeros((0, len(CAT_FEATURES) + len(spec.user_features)), np.int64),
                            z, z.copy(), np.zeros(1, np.int64))
    if len(dens) == 1:  # the serving case: no concatenation copies
        return FeatureBatch(dens[0], cats[0], np.ascontiguousarray(users[0]), items[0], np.asarray(offsets, np.int64))
    return FeatureBatch(np.concatenate(dens), np.concatenate(cats), np.ascontiguousarray(np.concatenate(users)),
                        np.ascontiguousarray(np.concatenate(items)), np.asarray(offsets, np.int64))


class CrossLayer(nn.Module):
    """One DCN-v2 cross layer: ``x0 * (W x + b) + x`` (full-rank W)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.linear.weight, gain=0.1)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DCNv2Ranker(nn.Module):
    """DCN-v2 (parallel cross + deep towers) with one sigmoid head per event type."""

    def __init__(self, n_dense: int, cat_cardinalities: Sequence[int], dim: int, n_heads: int, *,
                 cat_emb_dim: int = 8, n_cross: int = 2, hidden: Sequence[int] = (128, 64), dropout: float = 0.1,
                 emb_proj: int = 16):
        super().__init__()
        self.init_kwargs = dict(n_dense=int(n_dense), cat_cardinalities=[int(c) for c in cat_cardinalities], dim=int(dim),
                                n_heads=int(n_heads), cat_emb_dim=int(cat_emb_dim), n_cross=int(n_cross),
                                hidden=[int(h) for h in hidden], dropout=float(dropout), emb_proj=int(emb_proj))
        self.register_buffer("dense_mean", torch.zeros(n_dense))
        self.register_buffer("dense_std", torch.ones(n_dense))
        self.cat_emb = nn.ModuleList(nn.Embedding(c, cat_emb_dim) for c in cat_cardinalities)
        self.emb_proj = nn.Linear(dim, emb_proj)  # projects user_emb * item_emb (elementwise)
        width = n_dense + cat_emb_dim * len(cat_cardinalities) + emb_proj + 1  # +1: user_emb · item_emb
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(n_cross))
        layers: list[nn.Module] = []
        w = width
        for h in hidden:
            layers += [nn.Linear(w, h), nn.ReLU(), nn.Dropout(dropout)]
            w = h
        self.deep = nn.Sequential(*layers)
        self.heads = nn.Linear(width + w, n_heads)

    def set_normalisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.dense_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.dense_std.copy_(torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    def logits(self, dense: torch.Tensor, cat: torch.Tensor, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        x_dense = (dense - self.dense_mean) / self.dense_std
        embs = [e(cat[:, i]) for i, e in enumerate(self.cat_emb)]
        inter = user_emb * item_emb
        x0 = torch.cat([x_dense, *embs, self.emb_proj(inter), inter.sum(dim=1, keepdim=True)], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.heads(torch.cat([x, self.deep(x0)], dim=1))

    def forward(self, dense: torch.Tensor, cat: torch.Tensor, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(dense, cat, user_emb, item_emb))


def combine_heads(probs: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The serving score: ``sum_h score_weights[h] * probs[:, h]`` (higher = better)."""
    w = np.array([spec.score_weights.get(h, 0.0) for h in spec.heads], np.float32)
    return (np.asarray(probs, np.float32) @ w).astype(np.float32)
