"""Campaign models and uplift metrics.

- ``CampaignNet``: a small MLP with a shared trunk and one logit head per arm. With two heads it is
  the two-headed uplift network (head 0 = control, head 1 = treatment; uplift = p1 - p0); with one
  head it is a response (propensity) model. Input preprocessing (log1p of chosen columns, then
  standardisation) lives in buffers, so the saved network takes raw profile columns.
- ``CampaignEnsemble``: the mean of several ``CampaignNet`` scores (seed ensemble).
- Uplift metrics: numpy copies of scikit-uplift 0.5.1's ``uplift_at_k`` (strategy 'overall'),
  ``qini_curve``, ``perfect_qini_curve``, ``qini_auc_score`` and ``uplift_curve``, so the product
  does not depend on that unmaintained package (tests compare them with it).
- ``FittedUplift`` (+ ``TableEncoder``, ``Calibration``, ``FrozenBlend``): an uplift model fitted on a
  table by ``training.uplift``, loaded by ``serving.campaigns.uplift_model``.

No I/O here besides ``state_dict`` round trips; training loops live in ``training.campaigns`` and
``training.uplift``. About 430 lines: the campaign network, the uplift metrics it is judged by and
the fitted table model are one family that serving loads; splitting them would scatter one contract.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

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


# ---------------------------------------------------------------------------------------------
# A fitted uplift model on a table (``python -m training.uplift``): feature encoding, the chosen
# learner, the calibration of its scores to effects in probability units, the treated arm's response.
# Pickled by training, loaded by ``serving.campaigns.uplift_model``; nothing here reads or writes files.

def _is_categorical(col) -> bool:
    import pandas as pd

    return (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)
            or isinstance(col.dtype, pd.CategoricalDtype))


class TableEncoder:
    """Raw table columns -> a float matrix: numeric columns as they are (a missing value = the training
    median), string (and categorical) columns one-hot over the categories seen in training (an unseen
    or missing category = all zeros). A feature column absent at prediction time is an error naming it."""

    def __init__(self, numeric: list[str], categorical: dict[str, list[str]], fill: dict[str, float]):
        self.numeric, self.categorical, self.fill = list(numeric), {k: list(v) for k, v in categorical.items()}, dict(fill)

    @classmethod
    def fit(cls, frame, features: Sequence[str]) -> "TableEncoder":
        import pandas as pd

        numeric, categorical, fill = [], {}, {}
        for c in features:
            col = frame[c]
            if _is_categorical(col):
                categorical[c] = sorted(str(v) for v in pd.unique(col.dropna()))
            else:
                values = pd.to_numeric(col, errors="raise").astype("float64")
                numeric.append(c)
                med = float(np.nanmedian(values)) if values.notna().any() else 0.0
                fill[c] = med
        return cls(numeric, categorical, fill)

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *(f"{c}={v}" for c, vals in self.categorical.items() for v in vals)]

    def transform(self, frame) -> np.ndarray:
        import pandas as pd

        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"feature column(s) {missing} are absent (the uplift model reads {self.features})")
        out = np.zeros((len(frame), len(self.columns)), dtype=np.float64)
        for j, c in enumerate(self.numeric):
            try:
                v = pd.to_numeric(frame[c], errors="raise").astype("float64").to_numpy(na_value=np.nan)
            except (TypeError, ValueError) as e:
                raise ValueError(f"feature column {c!r} must be numeric as in training: {e}") from None
            out[:, j] = np.where(np.isnan(v), self.fill[c], v)
        j = len(self.numeric)
        rows = np.arange(len(frame))
        for c, vals in self.categorical.items():
            seen, uniques = pd.factorize(frame[c], use_na_sentinel=True)          # fast on strings and categories
            where = {v: i for i, v in enumerate(vals)}
            lookup = np.array([where.get(str(u), -1) for u in uniques] + [-1], dtype=np.int64)
            codes = lookup[seen]                                                 # -1: unseen or missing
            hit = codes >= 0
            out[rows[hit], j + codes[hit]] = 1.0
            j += len(vals)
        return out


def _strip_factories(obj, seen: set | None = None):
    """Drop the factory callables (lambdas) a fitted learner keeps, so that it can be pickled; a fitted
    learner's ``predict`` never calls them."""
    import types as _types

    seen = set() if seen is None else seen
    if id(obj) in seen or not hasattr(obj, "__dict__") or type(obj).__module__.startswith("sklearn"):
        return obj
    seen.add(id(obj))
    for k, v in list(vars(obj).items()):
        if isinstance(v, (_types.FunctionType, _types.MethodType)):
            setattr(obj, k, None)
        elif isinstance(v, (list, tuple)):
            for m in v:
                _strip_factories(m, seen)
        else:
            _strip_factories(v, seen)
    return obj


class FrozenBlend:
    """A fitted blend whose member scales are fixed on the training rows (mean/sd for ``zscore``, the
    sorted training scores for ``rank``), so a user's score never depends on the batch it is scored in."""

    def __init__(self, members: list, weights: list[float], scale: str, x_train: np.ndarray):
        if scale not in ("zscore", "rank"):
            raise ValueError(f"blend scale must be zscore or rank, got {scale!r}")
        self.members, self.weights, self.scale = members, [float(w) for w in weights], scale
        preds = [np.asarray(m.predict(x_train), dtype=np.float64) for m in members]
        self.stats = [(p.mean(), p.std() + 1e-12, np.sort(p)) for p in preds]

    def predict(self, x) -> np.ndarray:
        total = np.zeros(len(x))
        for m, w, (mu, sd, ref) in zip(self.members, self.weights, self.stats):
            p = np.asarray(m.predict(x), dtype=np.float64)
            total += w * ((p - mu) / sd if self.scale == "zscore" else np.searchsorted(ref, p, side="right") / len(ref))
        return total / sum(self.weights)


@dataclass
class Calibration:
    """Monotone map of raw learner scores to effects (treated minus control rate): isotonic over
    quantile bins of out-of-fold scores, linear between bin centres; ties broken by the raw score
    (``tie`` x its z-score), so the ranking of the raw scores is kept exactly."""

    x: np.ndarray
    y: np.ndarray
    mean: float
    sd: float
    tie: float = 1e-6

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        return np.clip(np.interp(raw, self.x, self.y) + self.tie * (raw - self.mean) / self.sd, -1.0, 1.0)


def fit_calibration(raw: np.ndarray, y: np.ndarray, t: np.ndarray, bins: int = 20) -> Calibration:
    """``Calibration`` from out-of-fold ``raw`` scores of training rows with outcome ``y`` and arm ``t``:
    treated minus control rate per quantile bin (at least ~200 rows of each arm per bin), made
    non-decreasing by isotonic regression weighted by bin size."""
    from sklearn.isotonic import IsotonicRegression

    raw, y, t = np.asarray(raw, dtype=np.float64), np.asarray(y, dtype=np.float64), np.asarray(t)
    n_bins = int(max(1, min(bins, min((t == 1).sum(), (t == 0).sum()) // 200)))
    edges = np.unique(np.quantile(raw, np.linspace(0, 1, n_bins + 1)))
    b = np.clip(np.searchsorted(edges, raw, side="right") - 1, 0, max(len(edges) - 2, 0))
    xs, ys, ws = [], [], []
    for k in np.unique(b):
        m = b == k
        m1, m0 = m & (t == 1), m & (t == 0)
        if m1.sum() == 0 or m0.sum() == 0:
            continue
        xs.append(raw[m].mean())
        ys.append(y[m1].mean() - y[m0].mean())
        ws.append(m.sum())
    if not xs:
        raise ValueError("cannot calibrate uplift scores: no score bin holds both arms")
    iso = IsotonicRegression(increasing=True).fit(xs, ys, sample_weight=ws)
    xs = np.asarray(xs)
    return Calibration(xs, iso.predict(xs), float(raw.mean()), float(raw.std() + 1e-12))


@dataclass
class FittedUplift:
    """An uplift model of one outcome on a table: ``predict(frame)`` -> the estimated effect of the
    treatment on the outcome's probability per row (calibrated; the ranking is the learner's).

    ``arm_model`` (a classifier on [encoded x, treated, offer level]) gives the outcome probability
    under treatment (``p_treated``), which costs an offer paid on every treated conversion. ``levels``
    (discount level -> (learner, calibration)) holds per-level effects when the past campaign
    randomised its offer levels."""

    outcome: str
    encoder: TableEncoder
    learner: Any
    calibration: Calibration
    chosen: str
    arm_model: Any = None
    levels: dict = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return self.encoder.features

    def raw_scores(self, frame) -> np.ndarray:
        return np.asarray(self.learner.predict(self.encoder.transform(frame)), dtype=np.float64)

    def predict(self, frame) -> np.ndarray:
        return self.predict_encoded(self.encoder.transform(frame))

    def predict_encoded(self, x: np.ndarray) -> np.ndarray:
        return self.calibration(np.asarray(self.learner.predict(x), dtype=np.float64))

    def p_treated_encoded(self, x: np.ndarray, level: float = 0.0) -> np.ndarray:
        """P(outcome | treated at offer ``level``) per row (``level`` 0.0 = the past campaign's plain
        treatment when it randomised no levels). The arm model reads [x, treated, level]."""
        if self.arm_model is None:
            raise ValueError("this uplift model has no arm response model")
        n = len(x)
        return self.arm_model.predict_proba(np.c_[x, np.ones(n), np.full(n, float(level))])[:, 1]

    def predict_levels_encoded(self, x: np.ndarray) -> dict[float, np.ndarray]:
        """Effect per randomised offer level (empty when the past campaign had none)."""
        return {lvl: cal(np.asarray(m.predict(x), dtype=np.float64)) for lvl, (m, cal) in self.levels.items()}


class ArmLogistic:
    """P(outcome | x, treated, level) by logistic regression on standardised [x, t, level, x*t, x*level]
    (arm- and level-specific slopes); ``predict_proba`` of rows [x, t, level], like a classifier."""

    def __init__(self, C: float = 1.0):
        self.C = C

    @staticmethod
    def _expand(z: np.ndarray) -> np.ndarray:
        x, t, lv = z[:, :-2], z[:, -2:-1], z[:, -1:]
        return np.hstack([x, t, lv, x * t, x * lv])

    def fit(self, z, y):
        from sklearn.linear_model import LogisticRegression

        e = self._expand(np.asarray(z, dtype=np.float64))
        mean, sd = e.mean(0), e.std(0)
        sd[sd < 1e-12] = 1.0
        m = LogisticRegression(C=self.C, max_iter=2000).fit((e - mean) / sd, y)
        w = m.coef_[0] / sd                                   # standardisation folded into the weights
        self.intercept_ = float(m.intercept_[0] - mean @ w)
        f = (len(w) - 2) // 3
        self.w_x, self.w_t, self.w_l, self.w_xt, self.w_xl = w[:f], w[f], w[f + 1], w[f + 2:2 * f + 2], w[2 * f + 2:]
        return self

    def predict_proba(self, z) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        x, t, lv = z[:, :-2], z[:, -2], z[:, -1]
        logit = x @ self.w_x + t * (self.w_t + x @ self.w_xt) + lv * (self.w_l + x @ self.w_xl) + self.intercept_
        p = 1.0 / (1.0 + np.exp(-logit))
        return np.c_[1.0 - p, p]


def freeze(learner):
    """A fitted learner ready to pickle (its factories dropped)."""
    return _strip_factories(learner)
