"""The item content tower: an item's embedding from what the catalogue says about it, not from interactions.

An item is described by a bag of tokens (``training.cold_items.item_tokens`` builds them from the items
table: attribute ids, category, price band, title words where the data has them). The tower averages
one learned vector per token (``nn.EmbeddingBag``, mean; token 0 = padding) and maps the average through
a small MLP to the retrieval model's item space (``dim``). An item whose tokens are all unknown gets the
MLP's output for an empty bag: a learned "average item".

Trained (``training.cold_items``) to regress the item embeddings a sequence model learned for items with
interactions, so a new item lands where items like it sit and can be scored with the same inner product.
Plain ``nn.Module``: no Lightning, no I/O.
"""
from __future__ import annotations

import torch
from torch import nn


class ItemContentTower(nn.Module):
    """``tokens [B, T]`` int64 (0 = padding) -> ``[B, dim]`` item embeddings."""

    def __init__(self, n_tokens: int, dim: int, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        if n_tokens < 1 or dim < 1 or hidden < 1:
            raise ValueError(f"ItemContentTower: n_tokens, dim, hidden must be >= 1, got {n_tokens}, {dim}, {hidden}")
        self.n_tokens, self.dim, self.hidden = int(n_tokens), int(dim), int(hidden)
        self.tokens = nn.EmbeddingBag(n_tokens + 1, hidden, mode="sum", padding_idx=0)
        self.mlp = nn.Sequential(nn.LayerNorm(hidden), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))
        nn.init.normal_(self.tokens.weight, std=0.1)
        with torch.no_grad():
            self.tokens.weight[0].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) > self.n_tokens):
            raise ValueError(f"token ids must lie in [0, {self.n_tokens}]")
        count = (tokens > 0).sum(1, keepdim=True).clamp(min=1).float()
        pooled = self.tokens(tokens) / count            # the mean over real tokens (padding adds zeros)
        return self.mlp(pooled)

    def config(self) -> dict:
        """Constructor arguments (saved beside the weights)."""
        return {"n_tokens": self.n_tokens, "dim": self.dim, "hidden": self.hidden,
                "dropout": float(self.mlp[1].p)}
