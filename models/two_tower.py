"""Two-tower retrieval: a user tower over the pooled recent history and an item tower over id,
attributes and price bucket; both end in L2-normalised vectors scored by inner product.

- Item tower: ``id embedding + mean(attribute embeddings) + price-bucket embedding -> MLP -> normalise``.
  ``item_tower()`` returns the table for every item index (row 0 = padding): these are the
  embeddings that go to the index.
- User tower: mean of the (input) item-id embeddings of the last ``max_len`` items, optionally
  recency-weighted; ``u = normalise(pooled + MLP([pooled, f]))`` where ``f`` is the mean of the user-feature
  embeddings (``user_feat [B, F]`` integer codes of ``features.user_features``, 0 = unknown = zero vector,
  when ``user_feature_cards`` is set): the features modulate the history through the MLP instead of being
  added to it (added, their constant vector swamped the pooled history and halved valid NDCG@10).
  ``user_states`` gives it after every prefix of a sequence (causal running mean), so one padded
  sequence trains on all its positions at once.

Item indices are ``item_id + 1`` (0 = padding); sequences are left-padded, most recent last.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TwoTowerConfig:
    n_items: int
    max_len: int = 50
    hidden: int = 64
    mlp_hidden: int = 128
    dropout: float = 0.1
    n_attributes: int = 0        # > 0: attribute vocabulary size (ids 1..n_attributes)
    n_price_buckets: int = 0     # > 0: price bucket ids 1..n (0 = unknown price)
    recency_decay: float = 0.0   # weight of the item k steps back = exp(-decay * k); 0 = plain mean
    user_feature_cards: list[int] = field(default_factory=list)  # one embedding size per user feature (0 = unknown)

    def __post_init__(self) -> None:
        if self.max_len <= 0:
            raise ValueError(f"model.max_len must be > 0, got {self.max_len}")
        if self.hidden <= 0:
            raise ValueError(f"model.hidden must be > 0, got {self.hidden}")
        self.user_feature_cards = [int(c) for c in self.user_feature_cards]
        if any(c < 1 for c in self.user_feature_cards):
            raise ValueError(f"user_feature_cards must all be >= 1, got {self.user_feature_cards}")


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class TwoTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig, item_attributes: torch.Tensor | None = None,
                 price_bucket: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.item_id = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.hist_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        if cfg.n_attributes:
            attrs = item_attributes if item_attributes is not None else torch.zeros(cfg.n_items + 1, 1, dtype=torch.long)
            self.attr_emb = nn.Embedding(cfg.n_attributes + 1, d, padding_idx=0)
            self.register_buffer("item_attributes", attrs.long())
        else:
            self.attr_emb = None
        if cfg.n_price_buckets:
            pb = price_bucket if price_bucket is not None else torch.zeros(cfg.n_items + 1, dtype=torch.long)
            self.price_emb = nn.Embedding(cfg.n_price_buckets + 1, d, padding_idx=0)
            self.register_buffer("price_bucket", pb.long())
        else:
            self.price_emb = None
        self.user_feat_emb = nn.ModuleList(nn.Embedding(c, d, padding_idx=0) for c in cfg.user_feature_cards)
        self.item_mlp = _mlp(d, cfg.mlp_hidden, d, cfg.dropout)
        self.user_mlp = _mlp(d * (2 if cfg.user_feature_cards else 1), cfg.mlp_hidden, d, cfg.dropout)
        for emb in (self.item_id, self.hist_emb, self.attr_emb, self.price_emb, *self.user_feat_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.05)
                with torch.no_grad():
                    emb.weight[0].zero_()

    def item_tower(self) -> torch.Tensor:
        """L2-normalised embedding of every item index ``[n_items + 1, d]``."""
        x = self.item_id.weight
        if self.attr_emb is not None:
            a = self.item_attributes
            x = x + self.attr_emb(a).sum(1) / (a > 0).sum(1, keepdim=True).clamp(min=1).to(x.dtype)
        if self.price_emb is not None:
            x = x + self.price_emb(self.price_bucket)
        return F.normalize(x + self.item_mlp(x), dim=-1)

    def _weights(self, item_seq: torch.Tensor) -> torch.Tensor:
        l = item_seq.shape[1]
        w = (item_seq > 0).to(self.hist_emb.weight.dtype)
        if self.cfg.recency_decay > 0:
            steps_back = torch.arange(l - 1, -1, -1, device=item_seq.device, dtype=w.dtype)
            w = w * torch.exp(-self.cfg.recency_decay * steps_back)
        return w

    def user_feature_vector(self, user_feat: torch.Tensor | None, batch: int, length: int | None = None
                            ) -> torch.Tensor | None:
        """Mean of the user-feature embeddings: ``[B, d]`` from codes ``[B, F]``, or ``[B, L, d]`` from codes
        ``[B, L, F]`` (one set per position, ``length`` = L; only in ``user_states``). None without user features."""
        if not len(self.user_feat_emb):
            return None
        f = len(self.user_feat_emb)
        if user_feat is None:
            raise ValueError(f"this two-tower model needs user_feat [B, {f}] (model.user_features.enabled)")
        if user_feat.shape != (batch, f) and (length is None or user_feat.shape != (batch, length, f)):
            want = f"({batch}, {f})" + ("" if length is None else f" or ({batch}, {length}, {f})")
            raise ValueError(f"user_feat: expected shape {want}, got {tuple(user_feat.shape)}")
        return sum(emb(user_feat[..., j]) for j, emb in enumerate(self.user_feat_emb)) / f

    def _user_out(self, pooled: torch.Tensor, uf: torch.Tensor | None) -> torch.Tensor:
        if uf is None:
            return F.normalize(pooled + self.user_mlp(pooled), dim=-1)
        uf = uf.unsqueeze(1).expand_as(pooled) if uf.dim() < pooled.dim() else uf
        return F.normalize(pooled + self.user_mlp(torch.cat([pooled, uf], -1)), dim=-1)

    def user_states(self, item_seq: torch.Tensor, user_feat: torch.Tensor | None = None) -> torch.Tensor:
        """User embedding after each prefix ``[B, L, d]`` (causal running mean, then the MLP); ``user_feat``
        ``[B, F]`` (the same for every prefix) or ``[B, L, F]`` (as of each prefix: point in time)."""
        e = self.hist_emb(item_seq)                           # [B, L, d]
        w = self._weights(item_seq)                           # same weights as encode (ratios cancel)
        pooled = torch.cumsum(e * w.unsqueeze(-1), 1) / torch.cumsum(w, 1).clamp(min=1).unsqueeze(-1)
        return self._user_out(pooled, self.user_feature_vector(user_feat, item_seq.shape[0], item_seq.shape[1]))

    def encode(self, item_seq: torch.Tensor, user_feat: torch.Tensor | None = None) -> torch.Tensor:
        """User embedding from the whole (left-padded) sequence ``[B, d]``."""
        e = self.hist_emb(item_seq)
        w = self._weights(item_seq)
        pooled = (e * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-6)
        return self._user_out(pooled, self.user_feature_vector(user_feat, item_seq.shape[0]))


class TwoTowerEncoder(nn.Module):
    """Export wrapper: ``item_seq [B, L] (, user_feat [B, F]) -> user_emb [B, d]``."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_seq: torch.Tensor, user_feat: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.encode(item_seq, user_feat)
