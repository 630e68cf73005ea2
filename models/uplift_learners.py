"""Uplift meta-learners on a randomised experiment, and honest (nested) model selection among them.

Every learner: ``fit(x, y, t) -> self`` and ``predict(x) -> uplift scores`` (higher = more
persuadable); ``x`` float (n, F), ``y`` and ``t`` 0/1 int arrays. Base models are passed as factories
(``make() -> sklearn estimator``) so that every fit starts fresh.

- ``SLearner``, ``TLearner``: one model on [x, t] / one model per arm (the benchmark's baselines).
- ``ClassTransformation``: bagged classifiers of z = 1{y == t} (Jaskowski & Jaroszewicz 2012).
- ``DRLearner``: the doubly robust learner (Kennedy 2023): cross-fitted outcome models per arm,
  the pseudo-outcome with the experiment's propensity, and a regression of it on x.
- ``XLearner``: Kuenzel et al. 2019, imputed effects per arm, weighted by the propensity.
- ``SeedBag``: the mean of several seeded copies of one learner (variance reduction).
- ``LinearTLearner``: one logistic regression per arm on standardised features, optionally with
  all pairwise feature products (a linear uplift model with interactions).
- ``Blend``: weighted mean of standardised (z-score) or rank-transformed member scores.
- ``InnerCVSelect``: picks among named candidates (single learners and blends) by an inner
  cross-validation on the rows it is fitted on only, then refits the winner on all of them. Inside
  an outer cross-validation this is nested selection: the outer test fold never influences the
  choice.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold

from models.uplift import qini_auc_score, uplift_at_k

Factory = Callable[[], Any]


def zscore(u: np.ndarray) -> np.ndarray:
    """Standardised scores (scale-free, for blending rankings of different learners)."""
    u = np.asarray(u, dtype=np.float64)
    return (u - u.mean()) / (u.std() + 1e-12)


def rank01(u: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1] (ties share their mean rank): a blend immune to heavy tails."""
    from scipy.stats import rankdata

    u = np.asarray(u, dtype=np.float64)
    return (rankdata(u) - 1.0) / max(len(u) - 1, 1)


BLEND_SCALES = {"zscore": zscore, "rank": rank01}


def _propensity(t: np.ndarray, given: float | None) -> float:
    """The treatment probability: ``given`` (a designed experiment) or the share treated in ``t``."""
    e = float(np.mean(t)) if given is None else float(given)
    if not 0.0 < e < 1.0:
        raise ValueError(f"propensity must be in (0, 1), got {e} (are both arms present?)")
    return e


class RandomLearner:
    """Random scores (the floor of the benchmark)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, x, y, t):
        return self

    def predict(self, x):
        return np.random.default_rng(self.seed).random(len(x))


class SLearner:
    """One model on [x, t]; uplift = f(x, 1) - f(x, 0)."""

    def __init__(self, make: Factory):
        self.make = make

    def fit(self, x, y, t):
        self.m = self.make().fit(np.c_[x, t], y)
        return self

    def predict(self, x):
        one, zero = np.ones(len(x)), np.zeros(len(x))
        return self.m.predict_proba(np.c_[x, one])[:, 1] - self.m.predict_proba(np.c_[x, zero])[:, 1]


class TLearner:
    """One model per arm; uplift = f1(x) - f0(x)."""

    def __init__(self, make: Factory):
        self.make = make

    def fit(self, x, y, t):
        self.m1 = self.make().fit(x[t == 1], y[t == 1])
        self.m0 = self.make().fit(x[t == 0], y[t == 0])
        return self

    def predict(self, x):
        return self.m1.predict_proba(x)[:, 1] - self.m0.predict_proba(x)[:, 1]


class LinearTLearner(TLearner):
    """T-learner on logistic regression: per arm, standardise x (optionally add every pairwise product
    of the standardised features, standardised again) and fit an L2 logistic regression with inverse
    strength ``C``. Uplift = p1(x) - p0(x)."""

    def __init__(self, C: float = 1.0, interactions: bool = False):
        if C <= 0:
            raise ValueError(f"LinearTLearner C must be > 0, got {C}")
        self.C, self.interactions = float(C), bool(interactions)
        super().__init__(self._make)

    def _make(self):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler

        steps = [StandardScaler()]
        if self.interactions:
            steps += [PolynomialFeatures(2, interaction_only=True, include_bias=False), StandardScaler()]
        return make_pipeline(*steps, LogisticRegression(C=self.C, max_iter=2000))


class ClassTransformation:
    """Bagged classifiers of z = 1{y == t}; with a balanced randomised treatment, 2 P(z=1|x) - 1 is
    the uplift. ``bags`` seeded subsamples reduce variance."""

    def __init__(self, make: Factory, bags: int = 5, subsample: float = 0.8, seed: int = 0):
        self.make, self.bags, self.subsample, self.seed = make, bags, subsample, seed

    def fit(self, x, y, t):
        z = (y == t).astype(int)
        rng = np.random.default_rng(self.seed)
        self.models = []
        for _ in range(self.bags):
            idx = rng.choice(len(z), int(self.subsample * len(z)), replace=False)
            self.models.append(self.make().fit(x[idx], z[idx]))
        return self

    def predict(self, x):
        return np.mean([m.predict_proba(x)[:, 1] for m in self.models], axis=0)


class DRLearner:
    """Doubly robust learner: mu0, mu1 (classifiers per arm) cross-fitted over ``folds`` stratified
    folds, pseudo-outcome ``phi = mu1 - mu0 + t (y - mu1) / e - (1 - t) (y - mu0) / (1 - e)`` with the
    propensity ``e`` (known in a randomised experiment; ``None`` = the share treated in the
    training rows), then ``make_final()`` (a regressor) fitted on (x, phi). Its prediction is the
    uplift."""

    def __init__(self, make_outcome: Factory, make_final: Factory, folds: int = 2,
                 propensity: float | None = None, seed: int = 0):
        if folds < 2:
            raise ValueError(f"DRLearner folds must be >= 2 (cross-fitting), got {folds}")
        self.make_outcome, self.make_final, self.folds = make_outcome, make_final, folds
        self.propensity, self.seed = propensity, seed

    def pseudo_outcome(self, x, y, t) -> np.ndarray:
        e = _propensity(t, self.propensity)
        m0, m1 = np.zeros(len(y)), np.zeros(len(y))
        split = StratifiedKFold(self.folds, shuffle=True, random_state=self.seed).split(x, y * 2 + t)
        for a, b in split:
            ta, ya = t[a], y[a]
            m1[b] = self.make_outcome().fit(x[a][ta == 1], ya[ta == 1]).predict_proba(x[b])[:, 1]
            m0[b] = self.make_outcome().fit(x[a][ta == 0], ya[ta == 0]).predict_proba(x[b])[:, 1]
        return m1 - m0 + t * (y - m1) / e - (1 - t) * (y - m0) / (1 - e)

    def fit(self, x, y, t):
        self.final = self.make_final().fit(x, self.pseudo_outcome(x, y, t))
        return self

    def predict(self, x):
        return self.final.predict(x)


class XLearner:
    """X-learner: per-arm outcome classifiers, imputed effects d1 = y - mu0(x) on treated rows and
    d0 = mu1(x) - y on control rows, one regressor per arm on them, blended as e * tau0 + (1 - e) * tau1."""

    def __init__(self, make_outcome: Factory, make_final: Factory, propensity: float | None = None):
        self.make_outcome, self.make_final, self.propensity = make_outcome, make_final, propensity

    def fit(self, x, y, t):
        self.e = _propensity(t, self.propensity)
        x1, y1, x0, y0 = x[t == 1], y[t == 1], x[t == 0], y[t == 0]
        m1 = self.make_outcome().fit(x1, y1)
        m0 = self.make_outcome().fit(x0, y0)
        self.f1 = self.make_final().fit(x1, y1 - m0.predict_proba(x1)[:, 1])
        self.f0 = self.make_final().fit(x0, m1.predict_proba(x0)[:, 1] - y0)
        return self

    def predict(self, x):
        return self.e * self.f0.predict(x) + (1 - self.e) * self.f1.predict(x)


class SeedBag:
    """Mean score of ``n`` copies of a learner built by ``make(seed)`` for seeds 0..n-1."""

    def __init__(self, make: Callable[[int], Any], n: int):
        if n < 1:
            raise ValueError(f"SeedBag needs n >= 1, got {n}")
        self.make, self.n = make, n

    def fit(self, x, y, t):
        self.members = [self.make(i).fit(x, y, t) for i in range(self.n)]
        return self

    def predict(self, x):
        return np.mean([m.predict(x) for m in self.members], axis=0)


def blend_scores(preds: Mapping[str, np.ndarray], weights: Mapping[str, float], scale: str = "zscore") -> np.ndarray:
    """Weighted mean of the ``scale``-transformed ``preds[name]`` (z-score or rank in [0, 1]) for
    every name in ``weights``."""
    if scale not in BLEND_SCALES:
        raise ValueError(f"blend scale must be one of {sorted(BLEND_SCALES)}, got {scale!r}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError(f"blend weights must sum to > 0, got {dict(weights)}")
    f = BLEND_SCALES[scale]
    return sum(w * f(preds[n]) for n, w in weights.items()) / total


class Blend:
    """Weighted mean of the members' z-scored or ranked uplift scores (scale-free blending)."""

    def __init__(self, members: list, weights: list[float] | None = None, scale: str = "zscore"):
        if scale not in BLEND_SCALES:
            raise ValueError(f"blend scale must be one of {sorted(BLEND_SCALES)}, got {scale!r}")
        self.members, self.scale = members, scale
        self.weights = weights or [1.0] * len(members)

    def fit(self, x, y, t):
        for m in self.members:
            m.fit(x, y, t)
        return self

    def predict(self, x):
        return blend_scores({str(i): m.predict(x) for i, m in enumerate(self.members)},
                            {str(i): w for i, w in enumerate(self.weights)}, self.scale)


SELECTION_METRICS = ("qini", "uplift_at_k", "mix")


class InnerCVSelect:
    """Choose among ``candidates`` (name -> factory) and ``blends`` (name -> {candidate: weight}) by
    the mean ``metric`` over a repeated stratified inner CV of the fitting rows, refit the winner on
    all of them. ``metric``: ``qini``, ``uplift_at_k``, or ``mix`` (the mean of each candidate's
    rank-normalised position under both, so neither scale dominates). ``inner_scores_``,
    ``inner_table_`` (name -> {qini, uplift_at_k}) and ``chosen_`` tell what happened."""

    def __init__(self, candidates: Mapping[str, Factory], blends: Mapping[str, Mapping[str, float]] | None = None,
                 folds: int = 3, repeats: int = 1, metric: str = "qini", k: float = 0.3, seed: int = 0,
                 blend_scale: str = "zscore"):
        if not candidates:
            raise ValueError("InnerCVSelect needs at least one candidate")
        if metric not in SELECTION_METRICS:
            raise ValueError(f"selection metric must be one of {SELECTION_METRICS}, got {metric!r}")
        for name, w in (blends or {}).items():
            unknown = [m for m in w if m not in candidates]
            if unknown:
                raise ValueError(f"blend {name!r}: unknown member(s) {unknown} (candidates: {list(candidates)})")
        self.candidates, self.blends = dict(candidates), {n: dict(w) for n, w in (blends or {}).items()}
        if blend_scale not in BLEND_SCALES:
            raise ValueError(f"blend scale must be one of {sorted(BLEND_SCALES)}, got {blend_scale!r}")
        self.folds, self.repeats, self.metric, self.k, self.seed = folds, repeats, metric, k, seed
        self.blend_scale = blend_scale

    def fit(self, x, y, t):
        self.inner_table_ = cv_table(self.candidates, self.blends, x, y, t, self.folds, self.repeats,
                                     self.seed, self.k, self.blend_scale)
        self.inner_scores_ = selection_scores(self.inner_table_, self.metric)
        self.chosen_ = max(self.inner_scores_, key=self.inner_scores_.get)
        if self.chosen_ in self.blends:
            w = self.blends[self.chosen_]
            self.model_ = Blend([self.candidates[m]() for m in w], list(w.values()), self.blend_scale)
        else:
            self.model_ = self.candidates[self.chosen_]()
        self.model_.fit(x, y, t)
        return self

    def predict(self, x):
        return self.model_.predict(x)


def cv_table(candidates: Mapping[str, Factory], blends: Mapping[str, Mapping[str, float]], x, y, t,
             folds: int, repeats: int, seed: int, k: float, blend_scale: str = "zscore") -> dict[str, dict[str, float]]:
    """Mean Qini and uplift@k of every candidate and blend over a repeated stratified CV (strata =
    outcome x arm) of the given rows: name -> {"qini", "uplift_at_k", "qini_sd", "uplift_at_k_sd"}."""
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    names = [*candidates, *blends]
    q: dict[str, list[float]] = {n: [] for n in names}
    u: dict[str, list[float]] = {n: [] for n in names}
    for a, b in cv.split(x, y * 2 + t):
        preds = {n: make().fit(x[a], y[a], t[a]).predict(x[b]) for n, make in candidates.items()}
        preds.update({n: blend_scores(preds, w, blend_scale) for n, w in blends.items()})
        for n, p in preds.items():
            q[n].append(qini_auc_score(y[b], p, t[b]))
            u[n].append(uplift_at_k(y[b], p, t[b], k))
    return {n: {"qini": float(np.mean(q[n])), "uplift_at_k": float(np.mean(u[n])),
                "qini_sd": float(np.std(q[n])), "uplift_at_k_sd": float(np.std(u[n]))} for n in names}


def selection_scores(table: Mapping[str, Mapping[str, float]], metric: str) -> dict[str, float]:
    """name -> the selection score under ``metric`` (``mix``: mean of the two metrics' min-max
    normalised values across the candidates, 1 = best on both)."""
    if metric not in SELECTION_METRICS:
        raise ValueError(f"selection metric must be one of {SELECTION_METRICS}, got {metric!r}")
    if metric != "mix":
        return {n: float(r[metric]) for n, r in table.items()}
    out = {n: 0.0 for n in table}
    for m in ("qini", "uplift_at_k"):
        v = np.array([table[n][m] for n in table])
        span = v.max() - v.min()
        for n, x in zip(table, v):
            out[n] += 0.5 * ((x - v.min()) / span if span > 0 else 1.0)
    return out


# ---------------------------------------------------------------------------------------------
# Learners from config (``conf/uplift/*.yaml``: ``model.candidates.<name>``), gradient-boosted trees
# (scikit-learn's HistGradientBoosting) as base models.

_SPEC_KEYS = {
    "s": {"kind", "gbt"},
    "t": {"kind", "gbt"},
    "ct": {"kind", "gbt", "bags", "subsample"},
    "dr": {"kind", "outcome", "final", "folds", "propensity", "seeds"},
    "x": {"kind", "outcome", "final", "propensity"},
    "lr": {"kind", "C", "interactions"},
}


def learner_from_spec(spec: Mapping[str, Any], where: str = "candidate") -> Factory:
    """A factory for the learner ``spec`` describes; an unknown kind or key fails naming ``where``.

    kinds: ``s`` / ``t`` (``gbt``: classifier settings), ``ct`` (``gbt``, ``bags``, ``subsample``),
    ``dr`` (``outcome``: classifier settings, ``final``: regressor settings, ``folds``,
    ``propensity``: null = share treated, ``seeds``: cross-fitting seeds averaged), ``x``
    (``outcome``, ``final``, ``propensity``), ``lr`` (``LinearTLearner``: ``C``, ``interactions``).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier as Clf
    from sklearn.ensemble import HistGradientBoostingRegressor as Reg

    kind = spec.get("kind")
    if kind not in _SPEC_KEYS:
        raise ValueError(f"{where}.kind: must be one of {sorted(_SPEC_KEYS)}, got {kind!r}")
    unknown = sorted(set(spec) - _SPEC_KEYS[kind])
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for kind {kind!r} (allowed: {sorted(_SPEC_KEYS[kind])})")

    if kind == "lr":
        C, inter = spec.get("C", 1.0), spec.get("interactions", False)
        if not isinstance(C, (int, float)) or isinstance(C, bool) or C <= 0:
            raise ValueError(f"{where}.C: must be a number > 0, got {C!r}")
        if not isinstance(inter, bool):
            raise ValueError(f"{where}.interactions: must be true or false, got {inter!r}")
        return lambda: LinearTLearner(float(C), inter)

    def settings(key: str) -> dict:
        value = spec.get(key)
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}.{key}: must be a mapping of gradient-boosting settings, got {value!r}")
        return dict(value)

    if kind in ("s", "t"):
        g = settings("gbt")
        return (lambda: SLearner(lambda: Clf(**g))) if kind == "s" else (lambda: TLearner(lambda: Clf(**g)))
    if kind == "ct":
        g = settings("gbt")
        bags, sub = int(spec.get("bags", 1)), float(spec.get("subsample", 1.0))
        return lambda: ClassTransformation(lambda: Clf(**g), bags=bags, subsample=sub)
    out, fin, prop = settings("outcome"), settings("final"), spec.get("propensity")
    if kind == "x":
        return lambda: XLearner(lambda: Clf(**out), lambda: Reg(**fin), prop)
    folds, seeds = int(spec.get("folds", 2)), int(spec.get("seeds", 1))
    if seeds < 1:
        raise ValueError(f"{where}.seeds: must be >= 1, got {seeds}")
    one = lambda i: DRLearner(lambda: Clf(**out), lambda: Reg(**fin), folds, prop, seed=i)  # noqa: E731
    return (lambda: one(0)) if seeds == 1 else (lambda: SeedBag(one, seeds))
