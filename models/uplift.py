"""Campaign models and uplift metrics.

- ``CampaignNet``: a small MLP with a shared trunk and one logit head per arm. With two heads it is
  the two-headed uplift network (head 0 = control, head 1 = treatment; uplift = p1 - p0); with one
  head it is a response (propensity) model. Input preprocessing (log1p of chosen columns, then
  standardisation) lives in buffers, so the saved network takes raw profile columns.
- ``CampaignEnsemble``: the mean of several ``CampaignNet`` scores (seed ensemble).
- Uplift metrics: numpy copies of scikit-uplift 0.5.1's ``uplift_at_k`` (strategy 'overall'),
  ``qini_curve``, ``perfect_qini_curve``, ``qini_auc_score`` and ``uplift_curve``, so the product
  does not depend on that unmaintained package (tests compare them with it).

No I/O here besides ``state_dict`` round trips; training loops live in ``training.campaigns``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


class CampaignNet(nn.Module):
    """MLP trunk + ``n_heads`` logit heads; preprocessing of raw features built in."""

    def __init__(self, n_features: int, hidden: int = 32, n_heads: int = 2, dropout: float = 0.1):
        super().__init__()
        if n_heads not in (1, 2):
            raise ValueError(f"n_heads must be 1 (response) or 2 (uplift), got {n_heads}")
        self.n_features, self.hidden, self.n_heads = n_features, hidden, n_heads
        self.register_buffer("log_mask", torch.zeros(n_features, dtype=torch.bool))
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.trunk = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )
        self.heads = nn.Linear(hidden, n_heads)

    def set_preprocessing(self, x_raw: np.ndarray, log_mask: Sequence[bool]) -> None:
        """Fit log1p mask and standardisation on raw training features (NaN = column mean)."""
        dev = self.mean.device          # the buffers' device (the CPU, or CUDA once moved there)
        mask = torch.as_tensor(np.asarray(log_mask, dtype=bool), device=dev)
        self.log_mask.copy_(mask)
        x = self._transform_log(torch.as_tensor(np.asarray(x_raw, dtype=np.float32), device=dev))
        mean = torch.nanmean(x, dim=0)
        filled = torch.where(torch.isnan(x), mean, x)
        std = filled.std(dim=0)
        self.mean.copy_(torch.nan_to_num(mean, nan=0.0))
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def _transform_log(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.log_mask, torch.log1p(torch.clamp(x, min=0.0)), x)

    def preprocess(self, x_raw: torch.Tensor) -> torch.Tensor:
        x = self._transform_log(x_raw.float())
        x = (x - self.mean) / self.std
        return torch.nan_to_num(x, nan=0.0)  # missing value = training mean

    def forward(self, x_raw: torch.Tensor) -> torch.Tensor:
        """Raw features (B, F) -> logits (B, n_heads)."""
        return self.heads(self.trunk(self.preprocess(x_raw)))

    @torch.no_grad()
    def score(self, x_raw: torch.Tensor) -> torch.Tensor:
        """Uplift p1 - p0 (two heads) or response probability (one head), shape (B,)."""
        p = torch.sigmoid(self.forward(x_raw))
        return p[:, 1] - p[:, 0] if self.n_heads == 2 else p[:, 0]

    @torch.no_grad()
    def arm_probabilities(self, x_raw: torch.Tensor) -> torch.Tensor:
        """Per-arm response probabilities (B, n_heads)."""
        return torch.sigmoid(self.forward(x_raw))


class CampaignEnsemble(nn.Module):
    """Average score of several ``CampaignNet`` members (e.g. one per seed)."""

    def __init__(self, members: Sequence[CampaignNet]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def n_heads(self) -> int:
        return self.members[0].n_heads

    @property
    def n_features(self) -> int:
        return self.members[0].n_features

    @torch.no_grad()
    def score(self, x_raw: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.score(x_raw) for m in self.members]).mean(0)

    @torch.no_grad()
    def arm_probabilities(self, x_raw: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.arm_probabilities(x_raw) for m in self.members]).mean(0)


def build_ensemble(n_features: int, hidden: int, n_heads: int, n_members: int) -> CampaignEnsemble:
    """An untrained ensemble with the given shape (to load a saved ``state_dict`` into)."""
    return CampaignEnsemble([CampaignNet(n_features, hidden, n_heads) for _ in range(n_members)])


# ---------------------------------------------------------------------------------------------
# Uplift metrics (numpy copies of scikit-uplift 0.5.1).

def _check(y_true, uplift, treatment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, u, t = np.asarray(y_true), np.asarray(uplift, dtype=np.float64), np.asarray(treatment)
    if not (len(y) == len(u) == len(t)):
        raise ValueError(f"y_true, uplift and treatment differ in length: {len(y)}, {len(u)}, {len(t)}")
    for name, a in (("y_true", y), ("treatment", t)):
        if not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must be binary 0/1")
    return y.astype(np.float64), u, t.astype(np.float64)


def uplift_at_k(y_true, uplift, treatment, k: float = 0.3) -> float:
    """Treated minus control response rate among the top ``k`` share ranked by uplift (strategy 'overall')."""
    y, u, t = _check(y_true, uplift, treatment)
    if not 0.0 < k < 1.0:
        raise ValueError(f"k must be in (0, 1), got {k}")
    order = np.argsort(u, kind="mergesort")[::-1]
    n = int(len(y) * k)
    yk, tk = y[order][:n], t[order][:n]
    return float(yk[tk == 1].mean() - yk[tk == 0].mean())


def _curve_parts(y, u, t):
    order = np.argsort(u, kind="mergesort")[::-1]
    y, u, t = y[order], u[order], t[order]
    y_trmnt = np.where(t == 1, y, 0.0)
    y_ctrl = np.where(t == 0, y, 0.0)
    thresholds = np.r_[np.where(np.diff(u))[0], u.size - 1]
    num_trmnt = np.cumsum(t)[thresholds]
    num_all = thresholds + 1
    num_ctrl = num_all - num_trmnt
    return num_all, num_trmnt, num_ctrl, np.cumsum(y_trmnt)[thresholds], np.cumsum(y_ctrl)[thresholds]


def _start_at_origin(x, v):
    if x.size == 0 or v[0] != 0 or x[0] != 0:
        x, v = np.r_[0, x], np.r_[0, v]
    return x, v


def qini_curve(y_true, uplift, treatment) -> tuple[np.ndarray, np.ndarray]:
    """(number targeted, incremental responders) at each distinct uplift threshold."""
    y, u, t = _check(y_true, uplift, treatment)
    num_all, num_t, num_c, y_t, y_c = _curve_parts(y, u, t)
    ratio = np.divide(num_t, num_c, out=np.zeros_like(num_t), where=num_c != 0)
    return _start_at_origin(num_all, y_t - y_c * ratio)


def uplift_curve(y_true, uplift, treatment) -> tuple[np.ndarray, np.ndarray]:
    """(number targeted, (rate_t - rate_c) * number targeted) at each distinct uplift threshold."""
    y, u, t = _check(y_true, uplift, treatment)
    num_all, num_t, num_c, y_t, y_c = _curve_parts(y, u, t)
    rt = np.divide(y_t, num_t, out=np.zeros_like(y_t), where=num_t != 0)
    rc = np.divide(y_c, num_c, out=np.zeros_like(y_c), where=num_c != 0)
    return _start_at_origin(num_all, (rt - rc) * num_all)


def perfect_qini_curve(y_true, treatment) -> tuple[np.ndarray, np.ndarray]:
    """The optimum Qini curve (negative effects included, as scikit-uplift's default)."""
    y = np.asarray(y_true, dtype=np.float64)
    t = np.asarray(treatment, dtype=np.float64)
    return qini_curve(y, y * t - y * (1 - t), t)


def _auc(x: np.ndarray, v: np.ndarray) -> float:
    return float(np.trapezoid(v, x))


def qini_auc_score(y_true, uplift, treatment) -> float:
    """Qini coefficient: area between the Qini curve and the diagonal over that of the optimum curve."""
    x_a, y_a = qini_curve(y_true, uplift, treatment)
    x_p, y_p = perfect_qini_curve(y_true, treatment)
    base = _auc(np.array([0, x_p[-1]]), np.array([0, y_p[-1]]))
    return (_auc(x_a, y_a) - base) / (_auc(x_p, y_p) - base)


# ---------------------------------------------------------------------------------------------
# Packing: what a saved campaign model holds (files are written and read by serving.campaigns.scoring;
# this module only turns it into / from plain objects).

def ensemble_meta(ensemble: CampaignEnsemble) -> dict:
    """The shape facts needed to rebuild ``ensemble`` before loading its ``state_dict``."""
    first = ensemble.members[0]
    return {"n_features": first.n_features, "hidden": first.hidden, "n_heads": first.n_heads,
            "n_members": len(ensemble.members)}


def ensemble_from(meta: dict, state_dict: dict) -> CampaignEnsemble:
    ens = build_ensemble(int(meta["n_features"]), int(meta["hidden"]), int(meta["n_heads"]), int(meta["n_members"]))
    ens.load_state_dict(state_dict)
    ens.eval()
    return ens
