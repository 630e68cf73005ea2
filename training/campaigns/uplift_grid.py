"""The uplift benchmark grid (``scripts/bench_uplift.py grid``): Hillstrom's three arms x visit and
conversion, repeated stratified 5-fold, the project's model (``training.uplift.ProjectUplift``: what
``python -m training.uplift`` ships) beside S/T/X/DR learners, response-model targeting and random,
paired per fold against the project with 95 % intervals (Nadeau-Bengio corrected variance); the
business figure (incremental visits per 1,000 e-mails at 30 % targeting); and the semi-synthetic
draws with known effects (normalised true uplift@30, PEHE) for development only.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.ensemble import HistGradientBoostingClassifier as Clf
from sklearn.model_selection import RepeatedStratifiedKFold

from models.uplift import TableEncoder, qini_auc_score, uplift_at_k
from models.uplift_learners import DRLearner, RandomLearner, SLearner, TLearner, XLearner
from training.uplift import ProjectUplift

GBT = {"max_iter": 100, "learning_rate": 0.1, "random_state": 0}
COVARIATES = ["recency", "history_segment", "history", "mens", "womens", "zip_code", "newbie", "channel"]
ARMS = {"womens": (["Womens E-Mail"],), "mens": (["Mens E-Mail"],), "either": (["Womens E-Mail", "Mens E-Mail"],)}


class ResponseModel:
    """Response-model targeting: P(outcome | x) ignoring the treatment (the likeliest responders first)."""

    def fit(self, x, y, t):
        self.m = Clf(**GBT).fit(x, y)
        return self

    def predict(self, x):
        return self.m.predict_proba(x)[:, 1]


def methods(ucfg: dict) -> dict:
    from sklearn.ensemble import HistGradientBoostingRegressor as Reg

    return {
        "project": lambda: ProjectUplift(ucfg),
        "S-GBT": lambda: SLearner(lambda: Clf(**GBT)),
        "T-GBT": lambda: TLearner(lambda: Clf(**GBT)),
        "X-GBT": lambda: XLearner(lambda: Clf(**GBT), lambda: Reg(**GBT)),
        "DR-GBT": lambda: DRLearner(lambda: Clf(**GBT), lambda: Reg(**GBT), 2),
        "response": ResponseModel,
        "random": lambda: RandomLearner(0),
    }


def paired_ci(diff: np.ndarray, n_train: int, n_test: int) -> tuple[float, float, float]:
    """Mean of per-fold differences and its 95 % interval with Nadeau & Bengio's corrected variance."""
    k = len(diff)
    var = diff.var(ddof=1) * (1 / k + n_test / n_train) if k > 1 else np.nan
    half = stats.t.ppf(0.975, k - 1) * np.sqrt(var) if k > 1 else np.nan
    return float(diff.mean()), float(diff.mean() - half), float(diff.mean() + half)


def hillstrom_setting(df: pd.DataFrame, arm: str, outcome: str, ucfg: dict, folds: int, repeats: int, seed: int = 0) -> dict:
    treated = ARMS[arm][0]
    d = df[df["segment"].isin([*treated, "No E-Mail"])].reset_index(drop=True)
    x = TableEncoder.fit(d, COVARIATES).transform(d)
    y, t = d[outcome].to_numpy(dtype=int), d["segment"].isin(treated).to_numpy(dtype=int)
    ms = methods(ucfg)
    res = {n: {"uplift_at_30": [], "qini": []} for n in ms}
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    for tr, te in cv.split(x, y * 2 + t):
        for n, make in ms.items():
            p = make().fit(x[tr], y[tr], t[tr]).predict(x[te])
            res[n]["uplift_at_30"].append(uplift_at_k(y[te], p, t[te], 0.3))
            res[n]["qini"].append(qini_auc_score(y[te], p, t[te]))
    out = {"rows": int(len(y)), "average_effect": float(y[t == 1].mean() - y[t == 0].mean()), "methods": {}}
    for n, r in res.items():
        row = {m: float(np.mean(v)) for m, v in r.items()}
        if n != "project":
            for m in ("uplift_at_30", "qini"):
                diff = np.array(res["project"][m]) - np.array(r[m])
                row[f"project_minus_{m}"] = paired_ci(diff, len(tr), len(te))
        out["methods"][n] = row
    return out


def semisynth(path: str, ucfg: dict, seed: int = 0) -> dict:
    """50/50 split of one draw: normalised true uplift@30 (random 0, oracle 1) and PEHE on the test half."""
    d = pd.read_parquet(path)
    feats = [c for c in d.columns if c not in ("treatment", "outcome", "true_uplift")]
    rng = np.random.default_rng(seed)
    test = rng.random(len(d)) < 0.5
    enc = TableEncoder.fit(d[~test], feats)
    x, y, t, tau = enc.transform(d), d["outcome"].to_numpy(int), d["treatment"].to_numpy(int), d["true_uplift"].to_numpy()
    k = int(test.sum() * 0.3)
    tt = tau[test]
    best = np.sort(tt)[::-1][:k].mean()
    out = {}
    for n, make in methods(ucfg).items():
        p = make().fit(x[~test], y[~test], t[~test]).predict(x[test])
        top = tt[np.argsort(-p, kind="stable")[:k]].mean()
        out[n] = {"true_uplift_at_30_norm": float((top - tt.mean()) / (best - tt.mean())),
                  "pehe": float(np.sqrt(np.mean((p - tt) ** 2))) if n not in ("response", "random") else None}
    return out


def run_grid(ucfg: dict, hillstrom_csv: str, semisynth_dir: str | None, folds: int, repeats: int,
             outcomes: list[str], arms: list[str]) -> dict:
    t0 = time.perf_counter()
    df = pd.read_csv(hillstrom_csv)
    out = {"hillstrom": {}, "folds": folds, "repeats": repeats}
    for arm in arms:
        for outcome in outcomes:
            out["hillstrom"][f"{arm}:{outcome}"] = hillstrom_setting(df, arm, outcome, ucfg, folds, repeats)
    if semisynth_dir:
        from pathlib import Path

        out["semisynth"] = {p.stem: semisynth(str(p), ucfg) for p in sorted(Path(semisynth_dir).glob("public_seed*.parquet"))}
    out["seconds"] = time.perf_counter() - t0
    return out


def grid_tables(out: dict) -> str:
    lines = []
    for setting, r in out["hillstrom"].items():
        lines.append(f"\nHillstrom {setting} ({out['repeats']}x{out['folds']}-fold, n={r['rows']}, average effect {r['average_effect']:.4f})")
        lines.append(f"{'method':10s} {'uplift@30':>10s} {'qini':>8s}  {'project - method: uplift@30 [95% CI]':>40s}")
        for n, m in r["methods"].items():
            ci = m.get("project_minus_uplift_at_30")
            cis = f"{ci[0]:+.4f} [{ci[1]:+.4f}, {ci[2]:+.4f}]" if ci else ""
            lines.append(f"{n:10s} {m['uplift_at_30']:10.4f} {m['qini']:8.4f}  {cis:>40s}")
        if setting.endswith(":visit"):
            lines.append("incremental visits per 1,000 e-mails at 30 % targeting: " + ", ".join(
                f"{n} {1000 * r['methods'][n]['uplift_at_30']:.1f}" for n in ("project", "response", "random")))
    for draw, r in (out.get("semisynth") or {}).items():
        lines.append(f"\nsemi-synthetic {draw} (development only): normalised true uplift@30 / PEHE")
        for n, m in r.items():
            lines.append(f"{n:10s} {m['true_uplift_at_30_norm']:8.3f} " + (f"{m['pehe']:.4f}" if m["pehe"] is not None else "-"))
    return "\n".join(lines)
