"""Uplift benchmark on Hillstrom, and the Complete Journey coupon response model.

    python scripts/bench_uplift.py [uplift.cv.repeats=1] [uplift.methods=[S-GBT,project]] [uplift.completejourney.skip=true]

Hillstrom 'Womens E-Mail' vs 'No E-Mail', outcome visit: repeated stratified 5-fold CV (3 repeats,
fixed seeds; strata = outcome x arm); every method sees the same folds. uplift@30 % is the treated
minus control visit rate among the top 30 % (scikit-uplift's ``uplift_at_k``, strategy 'overall';
here the product's own copy in ``models.uplift``, tested against scikit-uplift), Qini is
``qini_auc_score``. The project's model ("project", ``conf/uplift/hillstrom.yaml``) is compared with
the best baseline per metric by a one-sided paired t-test over the folds (folds of repeated CV
overlap, so the p-value is optimistic). 'Mens E-Mail' and the conversion outcome are reported as
they come out. Then the Complete Journey response model (``training.campaign``): AUC and lift@10 %.

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
from training.campaign import (ClassTransformation, NetSettings, RandomLearner, SLearner,  # noqa: E402
                               TLearner, TwoHeadNet, load_hillstrom)

BASELINES = ("S-GBT", "T-GBT", "T-LR")


def make_methods(ucfg, feature_names: list[str]) -> dict:
    g = dict(ucfg.gbt)
    m = ucfg.model
    gbt = lambda: HistGradientBoostingClassifier(**g)  # noqa: E731
    lr = lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))  # noqa: E731
    ct_params = {k: v for k, v in m.ct.items() if k not in ("bags", "subsample")}
    ct = lambda: ClassTransformation(lambda: HistGradientBoostingClassifier(**ct_params),  # noqa: E731
                                     bags=m.ct.bags, subsample=m.ct.subsample)
    net = lambda: TwoHeadNet(NetSettings(**m.net), tuple(m.log_features), feature_names)  # noqa: E731
    return {
        "random": lambda: RandomLearner(0),
        "S-GBT": lambda: SLearner(gbt),
        "T-GBT": lambda: TLearner(gbt),
        "T-LR": lambda: TLearner(lr),
        "two-head-net": net,
        "CT-GBT-bagged": ct,
    }


def run_cv(data, methods: dict, names: list[str], folds: int, repeats: int, seed: int, k: float,
           blend: dict[str, float]) -> dict:
    """Every method on the same folds. "project" = the fixed-weight blend (mean of standardised scores,
    ``training.campaign.Blend``) of its members' predictions on the same fold (computed once)."""
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    res = {n: {"uplift_at_k": [], "qini": [], "seconds": 0.0} for n in names}
    base = [n for n in names if n != "project"]
    need = list(dict.fromkeys(base + (list(blend) if "project" in names else [])))
    for tr, te in cv.split(data.x, data.y * 2 + data.t):
        preds = {}
        for n in need:
            t0 = time.perf_counter()
            preds[n] = methods[n]().fit(data.x[tr], data.y[tr], data.t[tr]).predict(data.x[te])
            if n in res:
                res[n]["seconds"] += time.perf_counter() - t0
        if "project" in names:
            preds["project"] = sum(w * _z(preds[n]) for n, w in blend.items()) / sum(blend.values())
        for n in names:
            res[n]["uplift_at_k"].append(uplift_at_k(data.y[te], preds[n], data.t[te], k))
            res[n]["qini"].append(qini_auc_score(data.y[te], preds[n], data.t[te]))
    if "project" in names:
        res["project"]["seconds"] = sum(res[n]["seconds"] for n in blend if n in res)
    return res


def _z(u: np.ndarray) -> np.ndarray:
    return (u - u.mean()) / (u.std() + 1e-12)


def table(res: dict, title: str, avg_effect: float) -> str:
    lines = [title, f"{'method':16s} {'uplift@30':>10s} {'±sd':>7s} {'x avg':>6s} {'qini':>8s} {'±sd':>7s} {'s':>6s}"]
    for n, r in res.items():
        u, q = np.array(r["uplift_at_k"]), np.array(r["qini"])
        lines.append(f"{n:16s} {u.mean():10.4f} {u.std():7.4f} {u.mean() / avg_effect:6.2f} {q.mean():8.4f} {q.std():7.4f} {r['seconds']:6.1f}")
    return "\n".join(lines)


def paired(res: dict, metric: str, model: str = "project") -> tuple[str, float, float]:
    """Best baseline by mean ``metric`` and the one-sided paired t-test p (model > baseline)."""
    best = max(BASELINES, key=lambda n: np.mean(res[n][metric]))
    a, b = np.array(res[model][metric]), np.array(res[best][metric])
    p = float(stats.ttest_rel(a, b, alternative="greater").pvalue)
    return best, float(b.mean()), p


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
    methods = make_methods(u, data.feature_names)
    names = list(u.methods) if u.methods else [*methods, "project"]
    blend = dict(u.model.blend)
    for n in [*names, *blend]:
        if n == "project":
            continue
        if n not in methods:
            raise SystemExit(f"uplift.methods: unknown method {n!r} (known: {', '.join(methods)})")
    avg = data.y[data.t == 1].mean() - data.y[data.t == 0].mean()
    res = run_cv(data, methods, names, u.cv.folds, u.cv.repeats, u.cv.seed, u.k, blend)
    print(table(res, f"Hillstrom {u.treatment_arm} vs No E-Mail, outcome {u.outcome}: {u.cv.repeats}x{u.cv.folds}-fold CV, "
                     f"n={len(data.y)}, average effect {avg:.4f}", avg))
    out = {"dataset": "hillstrom", "arm": u.treatment_arm, "outcome": u.outcome, "folds": u.cv.folds,
           "repeats": u.cv.repeats, "average_effect": float(avg)}
    if "project" in names and all(b in names for b in BASELINES):
        bu, bu_mean, pu = paired(res, "uplift_at_k")
        bq, bq_mean, pq = paired(res, "qini")
        out.update({"uplift_at_30": float(np.mean(res["project"]["uplift_at_k"])),
                    "qini": float(np.mean(res["project"]["qini"])),
                    "best_baseline_uplift_at_30": bu_mean, "best_baseline_uplift_name": bu,
                    "best_baseline_qini": bq_mean, "best_baseline_qini_name": bq,
                    "paired_p_uplift_at_30": pu, "paired_p_qini": pq, "paired_p": max(pu, pq)})
        print(f"\nproject vs best baseline: uplift@30 {out['uplift_at_30']:.4f} vs {bu} {bu_mean:.4f} (paired one-sided p={pu:.3g}); "
              f"qini {out['qini']:.4f} vs {bq} {bq_mean:.4f} (p={pq:.3g})")
    out["methods"] = {n: {"uplift_at_30": float(np.mean(r["uplift_at_k"])), "uplift_at_30_sd": float(np.std(r["uplift_at_k"])),
                          "qini": float(np.mean(r["qini"])), "seconds": r["seconds"]} for n, r in res.items()}
    also = {}
    for spec in u.also or []:
        arm, outcome = spec.split(":")
        d = load_hillstrom(u.data, arm, outcome)
        sub = [n for n in ("random", *BASELINES, "project") if n in names]
        r = run_cv(d, make_methods(u, d.feature_names), sub, u.cv.folds, u.also_repeats, u.cv.seed, u.k, blend)
        eff = d.y[d.t == 1].mean() - d.y[d.t == 0].mean()
        print()
        print(table(r, f"Hillstrom {arm} vs No E-Mail, outcome {outcome}: {u.also_repeats}x{u.cv.folds}-fold CV, average effect {eff:.4f}", eff))
        also[spec] = {n: {"uplift_at_30": float(np.mean(x["uplift_at_k"])), "qini": float(np.mean(x["qini"]))} for n, x in r.items()}
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
