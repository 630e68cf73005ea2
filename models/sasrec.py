"""SASRec: a causal self-attention encoder over a user's item sequence (Kang & McAuley, ICDM 2018).

Conventions shared with training and the serving bundle:

- Item *indices* are ``item_id + 1``; index 0 is padding. Sequences are left-padded, most recent last.
- ``item_table()`` gives one row per index (row 0 = padding) = id embedding, plus the mean of the item's
  attribute embeddings (category, brand) when attributes are used. With ``tie_weights`` the same table
  scores the outputs; otherwise a second (output) table does.
- ``forward(item_seq)`` returns the hidden state at every position ``[B, L, d]``; ``encode(item_seq)``
  returns the last position ``[B, d]`` (the user embedding). Score of item *i* = ``h · output_table()[i+1]``.

Attention is ``F.scaled_dot_product_attention`` with a causal mask that also hides padding keys.

Blocks (``block``): ``transformer`` is the original residual block (pre- or post-LayerNorm);
``ligr`` is the gated-residual block of LinkedIn's LiGR ranker (arXiv 2502.03417), as eSASRec (RecSys 2025)
uses it in SASRec: pre-LayerNorm, and each residual branch scaled by ``sigmoid(W x)`` of the block's input.
``bsarec`` mixes attention with a frequency filter, as BSARec (AAAI 2024): ``filter_alpha`` of the branch is
the sequence's low-frequency part plus its high-frequency part scaled by a learned ``beta**2`` per channel,
the rest is attention. BSARec filters the whole sequence by FFT, so each position sees later ones; it scores
only the last position of every prefix. This model scores every position in one pass, so each position gets
the filter of the ``max_len`` window ending at it instead (``filter_bins`` lowest frequencies kept): a fixed
causal kernel that ignores padding, like the attention, and equals BSARec's filter at the last position.
``ffn_activation`` picks GELU or SwiGLU (``silu(W1 x) * W3 x``, bias-free) for the position-wise FFN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SASRecConfig:
    n_items: int                 # number of real items (indices 1..n_items)
    max_len: int = 50
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2         # attention / FFN / residual dropout
    emb_dropout: float = 0.2     # dropout on the summed input embeddings
    norm_first: bool = True      # pre-LayerNorm blocks (more stable); False = the original post-LN
    tie_weights: bool = True     # score outputs with the input item table
    ffn_mult: int = 1            # FFN inner size = ffn_mult * hidden (the original SASRec uses 1)
    n_attributes: int = 0        # > 0: attribute vocabulary size (ids 1..n_attributes, 0 = padding)
    block: str = "transformer"   # transformer | ligr (gated residual branches, always pre-LayerNorm) | bsarec
    ffn_activation: str = "gelu"  # gelu | swiglu
    filter_alpha: float = 0.7    # block=bsarec: share of the frequency filter in the mix (the rest is attention)
    filter_bins: int = 3         # block=bsarec: lowest rFFT bins of a max_len window kept, DC included (BSARec's c=5)

    def __post_init__(self) -> None:
        if self.max_len <= 0:
            raise ValueError(f"model.max_len must be > 0, got {self.max_len}")
        if self.n_items <= 0:
            raise ValueError(f"n_items must be > 0, got {self.n_items}")
        if self.hidden <= 0 or self.hidden % self.heads != 0:
            raise ValueError(f"model.hidden ({self.hidden}) must be > 0 and divisible by model.heads ({self.heads})")
        if self.block not in BLOCKS:
            raise ValueError(f"model.block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if self.ffn_activation not in ("gelu", "swiglu"):
            raise ValueError(f"model.ffn_activation must be gelu or swiglu, got {self.ffn_activation!r}")
        if self.block == "ligr" and not self.norm_first:
            raise ValueError("model.block=ligr is a pre-LayerNorm block: set model.norm_first=true")
        if not 0.0 <= self.filter_alpha <= 1.0:
            raise ValueError(f"model.filter_alpha must be in [0, 1], got {self.filter_alpha}")
        if self.filter_bins < 1:
            raise ValueError(f"model.filter_bins must be >= 1, got {self.filter_bins}")


class _SwiGLU(nn.Module):
    """Position-wise FFN ``W2 (silu(W1 x) * W3 x)`` (bias-free, as in LLaMA-style blocks)."""

    def __init__(self, d: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, inner, bias=False)
        self.w3 = nn.Linear(d, inner, bias=False)
        self.w2 = nn.Linear(inner, d, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.drop(F.silu(self.w1(x)) * self.w3(x)))


def _ffn(d: int, ffn_mult: int, dropout: float, activation: str) -> nn.Module:
    if activation == "swiglu":
        return _SwiGLU(d, ffn_mult * d, dropout)
    return nn.Sequential(nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * d, d))


class _Block(nn.Module):
    """One transformer block: multi-head causal self-attention + position-wise FFN."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.heads, self.norm_first, self.dropout = cfg.heads, cfg.norm_first, cfg.dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d, eps=1e-8)
        self.ln2 = nn.LayerNorm(d, eps=1e-8)
        self.ffn = _ffn(d, cfg.ffn_mult, cfg.dropout, cfg.ffn_activation)
        self.drop = nn.Dropout(cfg.dropout)

    def _attn(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(b, l, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop(self._attn(self.ln1(x), mask))
            return x + self.drop(self.ffn(self.ln2(x)))
        x = self.ln1(x + self.drop(self._attn(x, mask)))
        return self.ln2(x + self.drop(self.ffn(x)))


class _LiGRBlock(_Block):
    """Pre-LayerNorm block whose two residual branches are gated by ``sigmoid(W x)`` of the block input."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__(cfg)
        self.gate1 = nn.Linear(cfg.hidden, cfg.hidden)
        self.gate2 = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + torch.sigmoid(self.gate1(x)) * self.drop(self._attn(self.ln1(x), mask))
        return x + torch.sigmoid(self.gate2(x)) * self.drop(self.ffn(self.ln2(x)))


def lowpass_kernel(max_len: int, bins: int) -> torch.Tensor:
    """``k[lag]``: the weight of the item ``lag`` steps back in the low-pass (the ``bins`` lowest rFFT
    frequencies of a ``max_len`` window) at the window's last position."""
    spec = torch.fft.rfft(torch.eye(max_len, dtype=torch.float64), dim=0)
    spec[bins:] = 0
    low = torch.fft.irfft(spec, n=max_len, dim=0)        # column m: the low-pass of an impulse at m
    return low[max_len - 1].flip(0).float()              # lag = max_len - 1 - m


class _FilterMixBlock(_Block):
    """BSARec-style block: ``alpha * (low + beta**2 * (x - low)) + (1 - alpha) * attention``, then the FFN.

    ``low`` at a position is BSARec's low-pass of the ``max_len`` window ending there (padding and anything
    before the window as zeros), evaluated at that position: a fixed causal kernel. At the last position of
    a sequence it is BSARec's own filter of the zero-padded sequence."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__(cfg)
        self.alpha = cfg.filter_alpha
        self.sqrt_beta = nn.Parameter(torch.ones(cfg.hidden))
        kernel = lowpass_kernel(cfg.max_len, cfg.filter_bins)
        idx = torch.arange(cfg.max_len)
        lag = idx.unsqueeze(1) - idx.unsqueeze(0)                          # [query, key]
        # low = toeplitz @ x; a batch of width l uses its last l rows and columns (right-aligned positions)
        self.register_buffer("toeplitz", kernel[lag.clamp(min=0)] * (lag >= 0), persistent=False)
        self.ln_filter = None if cfg.norm_first else nn.LayerNorm(cfg.hidden, eps=1e-8)

    def _filter(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        l = x.shape[1]
        real = mask[:, 0, -1, :].unsqueeze(-1).to(x.dtype)     # the last position sees every real item
        low = self.toeplitz[-l:, -l:].to(x.dtype) @ (x * real)
        return low + self.sqrt_beta ** 2 * (x - low)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            h = self.ln1(x)
            x = x + self.drop(self.alpha * self._filter(h, mask) + (1 - self.alpha) * self._attn(h, mask))
            return x + self.drop(self.ffn(self.ln2(x)))
        filtered = self.ln_filter(x + self.drop(self._filter(x, mask)))
        attended = self.ln1(x + self.drop(self._attn(x, mask)))
        x = self.alpha * filtered + (1 - self.alpha) * attended
        return self.ln2(x + self.drop(self.ffn(x)))


BLOCKS = {"transformer": _Block, "ligr": _LiGRBlock, "bsarec": _FilterMixBlock}


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig, item_attributes: torch.Tensor | None = None) -> None:
        """``item_attributes``: int64 ``[n_items + 1, A]`` attribute ids per item index (0 = none);
        required when ``cfg.n_attributes > 0``."""
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.item_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, d)
        self.emb_drop = nn.Dropout(cfg.emb_dropout)
        self.blocks = nn.ModuleList(BLOCKS[cfg.block](cfg) for _ in range(cfg.blocks))
        self.final_ln = nn.LayerNorm(d, eps=1e-8) if cfg.norm_first else nn.Identity()
        if cfg.n_attributes > 0:
            if item_attributes is None or item_attributes.shape[0] != cfg.n_items + 1:
                raise ValueError("item_attributes [n_items + 1, A] is required when n_attributes > 0")
            self.attr_emb = nn.Embedding(cfg.n_attributes + 1, d, padding_idx=0)
            self.register_buffer("item_attributes", item_attributes.long(), persistent=True)
        else:
            self.attr_emb = None
        self.out_emb = None if cfg.tie_weights else nn.Embedding(cfg.n_items + 1, d, padding_idx=0)
        self._init()

    def _init(self) -> None:
        for emb in (self.item_emb, self.pos_emb, self.attr_emb, self.out_emb):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
                if emb.padding_idx is not None:
                    with torch.no_grad():
                        emb.weight[emb.padding_idx].zero_()

    def _with_attributes(self, table: torch.Tensor) -> torch.Tensor:
        if self.attr_emb is None:
            return table
        attrs = self.item_attributes
        emb = self.attr_emb(attrs)                                   # [N+1, A, d]
        cnt = (attrs > 0).sum(1, keepdim=True).clamp(min=1).to(emb.dtype)
        return table + emb.sum(1) / cnt

    def item_table(self) -> torch.Tensor:
        """Input representation of every item index ``[n_items + 1, d]`` (row 0 = padding)."""
        return self._with_attributes(self.item_emb.weight)

    def output_table(self) -> torch.Tensor:
        """Output (scoring) representation of every item index ``[n_items + 1, d]``."""
        if self.out_emb is None:
            return self.item_table()
        return self._with_attributes(self.out_emb.weight)

    def forward(self, item_seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states ``[B, L, d]`` for a left-padded ``item_seq`` ``[B, L]`` (L ≤ max_len)."""
        table = self.item_table() if table is None else table
        b, l = item_seq.shape
        x = F.embedding(item_seq, table) * (self.cfg.hidden ** 0.5)
        pos = self.pos_emb.weight[self.cfg.max_len - l:]                    # right-aligned positions
        keep = item_seq > 0
        x = self.emb_drop(x + pos.unsqueeze(0)) * keep.unsqueeze(-1).to(x.dtype)
        idx = torch.arange(l, device=item_seq.device)
        causal = idx.unsqueeze(0) <= idx.unsqueeze(1)                       # [query, key]: key <= query
        eye = idx.unsqueeze(0) == idx.unsqueeze(1)
        # query i may see key j <= i when j is a real item; every query sees itself (no empty rows)
        mask = ((causal & keep.unsqueeze(1)) | eye).unsqueeze(1)            # [B, 1, L, L]
        for block in self.blocks:
            x = block(x, mask)
        return self.final_ln(x)

    def encode(self, item_seq: torch.Tensor) -> torch.Tensor:
        """User embedding: the hidden state at the last (most recent) position ``[B, d]``."""
        return self.forward(item_seq)[:, -1, :]


class SASRecEncoder(nn.Module):
    """Export wrapper: ``item_seq [B, L] -> user_emb [B, d]`` (what ``encoder.onnx`` computes)."""

    def __init__(self, model: SASRec) -> None:
        super().__init__()
        self.model = model
        with torch.no_grad():   # the item table is a constant at inference: computed once, not per call
            self.register_buffer("table", model.item_table().detach().clone())

    def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
        return self.model(item_seq, self.table)[:, -1, :]
