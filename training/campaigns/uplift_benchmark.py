"""The uplift benchmark's machinery (``scripts/bench_uplift.py``): methods, outer CV, paired tests, screening.

- ``make_methods``: name -> factory of a fresh learner from ``conf/uplift/<name>.yaml`` ("project" is
  ``uplift.model.fixed`` or, when null, the nested selection ``models.uplift_learners.InnerCVSelect``);
- ``run_cv``: every method on the same repeated stratified outer folds (strata = outcome x arm);
- ``paired``: the project against the best baseline, one-sided paired t-test over the folds, plain
  and with Nadeau & Bengio's corrected variance;
- ``screen``: candidates and blends scored by an inner CV on the training rows of one outer fold only.
"""
from __future__ import annotations

import sys
import time

import numpy as np
from omegaconf import OmegaConf
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.uplift import qini_auc_score, uplift_at_k
from models.uplift_learners import (BLEND_SCALES, Blend, InnerCVSelect, RandomLearner, SLearner, TLearner,
                                    blend_scores, learner_from_spec)
from serving.campaigns.spec import NetSettings
from training.campaigns.hillstrom import TwoHeadNet

BASELINES = ("S-GBT", "T-GBT", "T-LR")


def make_methods(ucfg, feature_names: list[str]) -> dict:
    """name -> factory of a fresh learner. "project" is ``uplift.model.fixed`` (a candidate or a
    blend) or, when that is null, the nested selection; "nested-select" is the nested selection
    (``InnerCVSelect``) over ``uplift.model.candidates`` / ``blends``; every candidate is also
    available under its own name."""
    g = dict(ucfg.gbt)
    m = ucfg.model
    gbt = lambda: HistGradientBoostingClassifier(**g)  # noqa: E731
    lr = lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))  # noqa: E731
    net = lambda: TwoHeadNet(NetSettings(**m.net), tuple(m.log_features), feature_names)  # noqa: E731
    candidates = {name: learner_from_spec(OmegaConf.to_container(spec, resolve=True), f"uplift.model.candidates.{name}")
                  for name, spec in m.candidates.items()}
    blends = {name: dict(w) for name, w in (m.blends or {}).items()}
    scale = m.get("blend_scale", "zscore")
    if scale not in BLEND_SCALES:
        raise ValueError(f"uplift.model.blend_scale: must be one of {sorted(BLEND_SCALES)}, got {scale!r}")
    sel = m.select
    nested = lambda: InnerCVSelect(candidates, blends, folds=sel.folds, repeats=sel.repeats,  # noqa: E731
                                   metric=sel.metric, k=ucfg.k, seed=sel.seed, blend_scale=scale)
    fixed = m.get("fixed")
    if fixed is None:
        project = nested
    elif fixed in blends:
        w = blends[fixed]
        project = lambda: Named(fixed, Blend([candidates[c]() for c in w], list(w.values()), scale))  # noqa: E731
    elif fixed in candidates:
        project = lambda: Named(fixed, candidates[fixed]())  # noqa: E731
    else:
        raise ValueError(f"uplift.model.fixed: {fixed!r} is neither a candidate nor a blend "
                         f"(known: {', '.join([*candidates, *blends])})")
    return {
        "random": lambda: RandomLearner(0),
        "two-head-net": net,
        **candidates,
        "S-GBT": lambda: SLearner(gbt),
        "T-GBT": lambda: TLearner(gbt),
        "T-LR": lambda: TLearner(lr),
        "nested-select": nested,
        "project": project,
    }


class Named:
    """A fixed model that reports its config name as ``chosen_`` (like ``InnerCVSelect``)."""

    def __init__(self, name: str, model):
        self.chosen_, self.model = name, model

    def fit(self, x, y, t):
        self.model.fit(x, y, t)
        return self

    def predict(self, x):
        return self.model.predict(x)


def run_cv(data, methods: dict, names: list[str], folds: int, repeats: int, seed: int, k: float) -> dict:
    """Every method on the same outer folds (strata = outcome x arm). "project" selects its model
    inside each outer training fold (``InnerCVSelect``): the outer test fold never sees the choice."""
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    res = {n: {"uplift_at_k": [], "qini": [], "seconds": 0.0} for n in names}
    chosen: dict[str, list[str]] = {}
    t_start = time.perf_counter()
    for i, (tr, te) in enumerate(cv.split(data.x, data.y * 2 + data.t)):
        print(f"  outer fold {i + 1}/{folds * repeats} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        for n in names:
            t0 = time.perf_counter()
            model = methods[n]().fit(data.x[tr], data.y[tr], data.t[tr])
            pred = model.predict(data.x[te])
            res[n]["seconds"] += time.perf_counter() - t0
            if hasattr(model, "chosen_"):
                chosen.setdefault(n, []).append(model.chosen_)
            res[n]["uplift_at_k"].append(uplift_at_k(data.y[te], pred, data.t[te], k))
            res[n]["qini"].append(qini_auc_score(data.y[te], pred, data.t[te]))
    for n, c in chosen.items():
        res[n]["chosen"] = c
    res["_split"] = {"n_train": len(tr), "n_test": len(te), "folds": folds * repeats}
    return res


def _z(u: np.ndarray) -> np.ndarray:
    return (u - u.mean()) / (u.std() + 1e-12)


def table(res: dict, title: str, avg_effect: float) -> str:
    lines = [title, f"{'method':16s} {'uplift@30':>10s} {'±sd':>7s} {'x avg':>6s} {'qini':>8s} {'±sd':>7s} {'s':>6s}"]
    for n, r in res.items():
        if n.startswith("_"):
            continue
        u, q = np.array(r["uplift_at_k"]), np.array(r["qini"])
        lines.append(f"{n:16s} {u.mean():10.4f} {u.std():7.4f} {u.mean() / avg_effect:6.2f} {q.mean():8.4f} {q.std():7.4f} {r['seconds']:6.1f}")
    return "\n".join(lines)


def paired(res: dict, metric: str, model: str = "project") -> tuple[str, float, float, float]:
    """Best baseline by mean ``metric``; one-sided paired t-test p (model > baseline) over the folds,
    and the same with Nadeau & Bengio's (2003) corrected variance (1/J + n_test/n_train) for the
    overlap of repeated-CV training sets (the honest one of the two)."""
    best = max(BASELINES, key=lambda n: np.mean(res[n][metric]))
    a, b = np.array(res[model][metric]), np.array(res[best][metric])
    p = float(stats.ttest_rel(a, b, alternative="greater").pvalue)
    d = a - b
    sp = res["_split"]
    se = np.sqrt((1.0 / len(d) + sp["n_test"] / sp["n_train"]) * d.var(ddof=1))
    p_nb = float(stats.t.sf(d.mean() / se, df=len(d) - 1)) if se > 0 else float("nan")
    return best, float(b.mean()), p, p_nb


def screen(data, ucfg) -> dict:
    """Screening of candidate learners and blends WITHOUT the outer test folds: an inner stratified CV
    (``uplift.screen.folds`` x ``repeats``) on the training rows of outer fold
    ``uplift.screen.outer_fold`` only (same outer split as the benchmark). Candidates = the model's
    and ``uplift.screen.candidates``; blends = the model's and ``uplift.screen.blends``, each under
    every blend scale (z-score and rank). Returns name -> mean/sd of uplift@k and Qini."""
    sc = ucfg.screen
    outer = RepeatedStratifiedKFold(n_splits=ucfg.cv.folds, n_repeats=ucfg.cv.repeats, random_state=ucfg.cv.seed)
    tr, _ = list(outer.split(data.x, data.y * 2 + data.t))[int(sc.outer_fold)]
    x, y, t = data.x[tr], data.y[tr], data.t[tr]
    specs = {**OmegaConf.to_container(ucfg.model.candidates, resolve=True),
             **OmegaConf.to_container(sc.candidates or {}, resolve=True)}
    cands = {n: learner_from_spec(s, f"uplift.screen.candidates.{n}") for n, s in specs.items()}
    blends = {**{n: dict(w) for n, w in (ucfg.model.blends or {}).items()}, **{n: dict(w) for n, w in (sc.blends or {}).items()}}
    for n, w in blends.items():
        unknown = [m for m in w if m not in cands]
        if unknown:
            raise ValueError(f"uplift.screen.blends.{n}: unknown member(s) {unknown}")
    inner = RepeatedStratifiedKFold(n_splits=sc.folds, n_repeats=sc.repeats, random_state=sc.seed)
    q: dict[str, list[float]] = {}
    u: dict[str, list[float]] = {}
    secs = {n: 0.0 for n in cands}
    for i, (a, b) in enumerate(inner.split(x, y * 2 + t)):
        print(f"  screening fold {i + 1}/{sc.folds * sc.repeats}", file=sys.stderr, flush=True)
        preds = {}
        for n, make in cands.items():
            t0 = time.perf_counter()
            preds[n] = make().fit(x[a], y[a], t[a]).predict(x[b])
            secs[n] += time.perf_counter() - t0
        for n, w in blends.items():
            for scale in BLEND_SCALES:
                preds[f"{n}@{scale}"] = blend_scores(preds, w, scale)
        for n, p in preds.items():
            q.setdefault(n, []).append(qini_auc_score(y[b], p, t[b]))
            u.setdefault(n, []).append(uplift_at_k(y[b], p, t[b], ucfg.k))
    res = {n: {"uplift_at_30": float(np.mean(u[n])), "uplift_at_30_sd": float(np.std(u[n])),
               "qini": float(np.mean(q[n])), "qini_sd": float(np.std(q[n])), "seconds": secs.get(n)} for n in q}
    print(f"Screening on the training rows of outer fold {sc.outer_fold} only ({len(tr)} rows), inner "
          f"{sc.repeats}x{sc.folds}-fold CV; the outer test folds are not used")
    print(f"{'candidate':28s} {'uplift@30':>10s} {'±sd':>7s} {'qini':>8s} {'±sd':>7s} {'s':>6s}")
    for n, r in sorted(res.items(), key=lambda kv: -kv[1]["uplift_at_30"]):
        s = f"{r['seconds']:6.1f}" if r["seconds"] is not None else f"{'':6s}"
        print(f"{n:28s} {r['uplift_at_30']:10.4f} {r['uplift_at_30_sd']:7.4f} {r['qini']:8.4f} {r['qini_sd']:7.4f} {s}")
    return {"screen": res, "rows": int(len(tr)), "outer_fold": int(sc.outer_fold), "folds": int(sc.folds),
            "repeats": int(sc.repeats)}
