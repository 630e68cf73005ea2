"""Uplift benchmark on Hillstrom, and the Complete Journey coupon response model.

    flock /tmp/shoprec-bench.lock python scripts/bench_uplift.py [uplift.cv.repeats=1] [uplift.methods=[S-GBT,project]] [uplift.completejourney.skip=true]

Hillstrom 'Womens E-Mail' vs 'No E-Mail', outcome visit: repeated stratified 5-fold CV (3 repeats,
fixed seeds; strata = outcome x arm); every method sees the same folds. uplift@30 % is the treated
minus control visit rate among the top 30 % (scikit-uplift's ``uplift_at_k``, strategy 'overall';
here the product's own copy in ``models.uplift``, tested against scikit-uplift), Qini is
``qini_auc_score``.

The project's model ("project", ``conf/uplift/hillstrom.yaml``) is fixed in config before the outer
run (``uplift.model.fixed``, chosen by the screening mode below), or with ``fixed: null`` chosen
honestly per fold: "nested-select" (``models.uplift_learners.InnerCVSelect``) runs an inner CV on
each outer training fold's rows only, picks one of the configured candidates or blends by the
inner ``select.metric``, and refits it on the whole outer training fold; the outer test fold is
scored once. The table prints which model each outer fold chose.

``uplift.screen.run=true`` only screens candidates: an inner CV on the training rows of one outer
fold (never an outer test fold), every blend under z-score and rank scaling. The project is compared with the best baseline per metric by a one-sided paired t-test
over the outer folds, and by the same test with Nadeau & Bengio's corrected variance (folds of
repeated CV overlap, so the plain p-value is optimistic). 'Mens E-Mail' and the conversion
outcome are reported as they come out. Then the Complete Journey response model
(``training.campaign``): AUC and lift@10 %.

Prints tables, then as its last line one JSON object.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.uplift import qini_auc_score, uplift_at_k  # noqa: E402
from models.uplift_learners import (BLEND_SCALES, Blend, InnerCVSelect, RandomLearner, SLearner, TLearner,  # noqa: E402
                                    blend_scores, learner_from_spec)
from training.campaign import NetSettings, TwoHeadNet, load_hillstrom  # noqa: E402

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
        raise SystemExit(f"uplift.model.blend_scale: must be one of {sorted(BLEND_SCALES)}, got {scale!r}")
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
        raise SystemExit(f"uplift.model.fixed: {fixed!r} is neither a candidate nor a blend "
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
            raise SystemExit(f"uplift.screen.blends.{n}: unknown member(s) {unknown}")
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


def main(argv: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["+uplift=hillstrom", *argv])
    u = cfg.uplift
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(int(u.threads))
    threadpool_limits(int(u.threads))
    t_all = time.perf_counter()
    data = load_hillstrom(u.data, u.treatment_arm, u.outcome)
    if u.screen.run:
        return {**screen(data, u), "seconds": time.perf_counter() - t_all}
    methods = make_methods(u, data.feature_names)
    names = list(u.methods) if u.methods else list(methods)
    for n in names:
        if n not in methods:
            raise SystemExit(f"uplift.methods: unknown method {n!r} (known: {', '.join(methods)})")
    avg = data.y[data.t == 1].mean() - data.y[data.t == 0].mean()
    res = run_cv(data, methods, names, u.cv.folds, u.cv.repeats, u.cv.seed, u.k)
    print(table(res, f"Hillstrom {u.treatment_arm} vs No E-Mail, outcome {u.outcome}: {u.cv.repeats}x{u.cv.folds}-fold CV, "
                     f"n={len(data.y)}, average effect {avg:.4f}", avg))
    out = {"dataset": "hillstrom", "arm": u.treatment_arm, "outcome": u.outcome, "folds": u.cv.folds,
           "repeats": u.cv.repeats, "average_effect": float(avg), "selection": "nested (inner CV on each outer training fold)"}
    for n in ("project", "nested-select"):
        if n in names:
            ch = res[n]["chosen"]
            out[f"{n.replace('-', '_')}_chosen"] = {c: ch.count(c) for c in dict.fromkeys(ch)}
            print(f"{n}: model per outer fold: " + ", ".join(f"{c} x{k}" for c, k in out[f"{n.replace('-', '_')}_chosen"].items()))
    if "project" in names and all(b in names for b in BASELINES):
        bu, bu_mean, pu, pu_nb = paired(res, "uplift_at_k")
        bq, bq_mean, pq, pq_nb = paired(res, "qini")
        out.update({"uplift_at_30": float(np.mean(res["project"]["uplift_at_k"])),
                    "qini": float(np.mean(res["project"]["qini"])),
                    "best_baseline_uplift_at_30": bu_mean, "best_baseline_uplift_name": bu,
                    "best_baseline_qini": bq_mean, "best_baseline_qini_name": bq,
                    "paired_p_uplift_at_30": pu, "paired_p_qini": pq, "paired_p": max(pu, pq),
                    "paired_p_corrected_uplift_at_30": pu_nb, "paired_p_corrected_qini": pq_nb,
                    "wins_uplift_at_30": int(np.sum(np.array(res["project"]["uplift_at_k"]) > np.array(res[bu]["uplift_at_k"]))),
                    "wins_qini": int(np.sum(np.array(res["project"]["qini"]) > np.array(res[bq]["qini"])))})
        print(f"\nproject vs best baseline over the same {len(res['project']['qini'])} folds: "
              f"uplift@30 {out['uplift_at_30']:.4f} vs {bu} {bu_mean:.4f} (paired one-sided t p={pu:.3g}, "
              f"corrected p={pu_nb:.3g}, wins {out['wins_uplift_at_30']}); "
              f"qini {out['qini']:.4f} vs {bq} {bq_mean:.4f} (p={pq:.3g}, corrected p={pq_nb:.3g}, wins {out['wins_qini']})")
    out["methods"] = {n: {"uplift_at_30": float(np.mean(r["uplift_at_k"])), "uplift_at_30_sd": float(np.std(r["uplift_at_k"])),
                          "qini": float(np.mean(r["qini"])), "seconds": r["seconds"]}
                      for n, r in res.items() if not n.startswith("_")}
    also = {}
    for spec in u.also or []:
        arm, outcome = spec.split(":")
        d = load_hillstrom(u.data, arm, outcome)
        sub = [n for n in ("random", *BASELINES, "nested-select", "project") if n in names]
        r = run_cv(d, make_methods(u, d.feature_names), sub, u.cv.folds, u.also_repeats, u.cv.seed, u.k)
        eff = d.y[d.t == 1].mean() - d.y[d.t == 0].mean()
        print()
        print(table(r, f"Hillstrom {arm} vs No E-Mail, outcome {outcome}: {u.also_repeats}x{u.cv.folds}-fold CV, average effect {eff:.4f}", eff))
        also[spec] = {n: {"uplift_at_30": float(np.mean(x["uplift_at_k"])), "qini": float(np.mean(x["qini"]))}
                      for n, x in r.items() if not n.startswith("_")}
        for n in ("project", "nested-select"):
            if n in r:
                also[spec][f"{n.replace('-', '_')}_chosen"] = {c: r[n]["chosen"].count(c) for c in dict.fromkeys(r[n]["chosen"])}
        also[spec]["average_effect"] = float(eff)
    out["also"] = also
    if not u.completejourney.get("skip", False):
        from training.campaign import complete_journey_benchmark
        cj = complete_journey_benchmark(u.completejourney.dir, u.completejourney.test_fraction, u.completejourney.seed)
        print()
        print(cj["table"])
        out["completejourney"] = {k: v for k, v in cj.items() if k != "table"}
    out["seconds"] = time.perf_counter() - t_all
    return out


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(json.dumps(result, sort_keys=True, default=float))
