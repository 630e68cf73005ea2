"""Train an uplift model on a past campaign: ``python -m training.uplift data.path=T.parquet data.treatment=t data.outcome=y``.

The table has one row per targeted user: feature columns, a treatment column (0/1, or arm names
mapped by ``data.arms``) and one or more 0/1 outcome columns (``data.outcome``); ``data.features``
names the features (null = every other column but ``data.exclude``); string columns are categorical.
Config: ``conf/uplift/table.yaml`` (``--config-name hillstrom_campaign`` for Hillstrom as a past campaign).

Per outcome:

1. a stratified split (outcome x arm) into training and validation rows (``valid_fraction``);
2. model selection on the training rows only: an inner cross-validation
   (``models.uplift_learners.cv_table``) scores every candidate and blend of ``model``, the best by
   ``model.select.metric`` wins;
3. the winner's scores are calibrated to effects (treated minus control rate) on its out-of-fold
   scores of the training rows (``models.uplift.fit_calibration``), and an arm response model
   (gradient-boosted trees on [x, treatment level]) gives P(outcome | treated, offer level) for offer costs;
4. Qini and uplift@k on the validation rows (never used for any choice); with ``refit: true`` the
   chosen model is then refitted on all rows (the figures stay those of the training-rows fit);
5. with ``data.levels`` (the discount level each treated user was randomised to), one effect model
   per level (that level's treated rows against all control rows) for offer depth by expected profit.

Writes ``out_dir`` atomically (``serving.campaigns.uplift_model`` owns the layout: ``manifest.json``,
``uplift_model.joblib``). With ``predict.path=G.parquet predict.out=S.parquet`` it then writes S with
one ``uplift`` column (the first outcome; ``uplift_<outcome>`` per outcome when there are several)
aligned to G's rows; ``predict.run=<run folder>`` predicts with an existing run without training.

Bad input fails naming the column: a treatment that is not 0/1, an outcome with missing values or
other values than 0/1, no control (or no treated) rows, a feature absent at prediction time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import StratifiedKFold, train_test_split

from features.artifacts import atomic_dir, code_version, file_sha256
from features.cli import run_or_exit
from models.uplift import (ArmLogistic, FittedUplift, FrozenBlend, TableEncoder, fit_calibration, freeze,
                           qini_auc_score, uplift_at_k)
from models.uplift_learners import BLEND_SCALES, cv_table, learner_from_spec, selection_scores
from serving.campaigns import uplift_model

log = logging.getLogger(__name__)


@dataclass
class UpliftTable:
    frame: pd.DataFrame              # feature columns only
    t: np.ndarray                    # 0/1
    y: dict[str, np.ndarray]         # outcome -> 0/1
    levels: np.ndarray | None        # treatment level per row (0 for control rows)
    info: dict[str, Any]


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {path} not found")
    return pd.read_csv(path) if path.suffix.lower() in (".csv", ".txt") else pd.read_parquet(path)


def _binary(col: pd.Series, field: str, name: str) -> np.ndarray:
    if col.isna().any():
        raise ValueError(f"{field}: column {name!r} has {int(col.isna().sum())} missing value(s)")
    v = pd.to_numeric(col, errors="coerce") if not pd.api.types.is_bool_dtype(col) else col.astype(int)
    bad = v.isna() | ~v.isin([0, 1])
    if bad.any():
        shown = sorted({str(x) for x in col[bad].head(1000)})[:5]
        raise ValueError(f"{field}: column {name!r} must be 0/1, got value(s) {shown}")
    return v.to_numpy(dtype=np.int64)


def load_table(dcfg: dict[str, Any]) -> UpliftTable:
    """The validated table of ``data`` (see the module docstring)."""
    df = read_table(dcfg["path"])
    tcol = dcfg["treatment"]
    outcomes = dcfg["outcome"]
    outcomes = [outcomes] if isinstance(outcomes, str) else list(outcomes or [])
    if not outcomes:
        raise ValueError("data.outcome: name at least one outcome column")
    for field, cols in (("data.treatment", [tcol]), ("data.outcome", outcomes)):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{field}: column(s) {missing} not in {dcfg['path']} (columns: {list(df.columns)})")
    info: dict[str, Any] = {"rows_read": int(len(df))}
    arms = dcfg.get("arms")
    if arms:
        treated, control = [str(v) for v in arms["treated"]], [str(v) for v in arms["control"]]
        s = df[tcol].astype("string")
        keep = (s.isin(treated) | s.isin(control)).fillna(False).to_numpy(bool)
        info["rows_other_arms"] = int((~keep).sum())
        df = df[keep].reset_index(drop=True)
        t = df[tcol].astype("string").isin(treated).to_numpy(dtype=np.int64)
        info["arms"] = {"treated": treated, "control": control}
    else:
        t = _binary(df[tcol], "data.treatment", tcol)
    if (t == 0).sum() == 0:
        raise ValueError(f"data.treatment: column {tcol!r} has no control rows (value 0): an effect needs a comparison")
    if (t == 1).sum() == 0:
        raise ValueError(f"data.treatment: column {tcol!r} has no treated rows (value 1)")
    y = {o: _binary(df[o], "data.outcome", o) for o in outcomes}
    lcol = dcfg.get("levels")
    levels = None
    if lcol:
        if lcol not in df.columns:
            raise ValueError(f"data.levels: column {lcol!r} not in {dcfg['path']}")
        lv = pd.to_numeric(df[lcol], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(lv[t == 1]).any():
            raise ValueError(f"data.levels: column {lcol!r} has missing or non-numeric values on treated rows")
        levels = np.where(t == 1, lv, 0.0)
    used = {tcol, *outcomes, *([lcol] if lcol else []), *(dcfg.get("exclude") or [])}
    feats = list(dcfg.get("features") or [c for c in df.columns if c not in used])
    missing = [c for c in feats if c not in df.columns]
    if missing:
        raise ValueError(f"data.features: column(s) {missing} not in {dcfg['path']}")
    clash = [c for c in feats if c in (tcol, *outcomes)]
    if clash:
        raise ValueError(f"data.features: {clash} is the treatment or an outcome")
    if not feats:
        raise ValueError("data.features: no feature column left")
    info.update({"rows": int(len(df)), "treated": int(t.sum()), "control": int((t == 0).sum()),
                 "features": feats, "outcomes": outcomes, "treatment": tcol})
    return UpliftTable(df[feats], t, y, levels, info)


# ---------------------------------------------------------------------------------------------
# Candidates, selection, fitting.

def candidates_of(mcfg: dict[str, Any]) -> tuple[dict, dict, str]:
    cands = {n: learner_from_spec(spec, f"model.candidates.{n}") for n, spec in mcfg["candidates"].items()}
    blends = {n: dict(w) for n, w in (mcfg.get("blends") or {}).items()}
    for n, w in blends.items():
        unknown = [m for m in w if m not in cands]
        if unknown:
            raise ValueError(f"model.blends.{n}: unknown member(s) {unknown} (candidates: {list(cands)})")
    scale = mcfg.get("blend_scale", "zscore")
    if scale not in BLEND_SCALES:
        raise ValueError(f"model.blend_scale: must be one of {sorted(BLEND_SCALES)}, got {scale!r}")
    return cands, blends, scale


def fit_named(name: str, cands: dict, blends: dict, scale: str, x, y, t):
    """The candidate or blend ``name`` fitted on (x, y, t); blends with scales frozen on x."""
    if name in blends:
        members = [cands[m]().fit(x, y, t) for m in blends[name]]
        return FrozenBlend(members, list(blends[name].values()), scale, x)
    return cands[name]().fit(x, y, t)


def oof_scores(name: str, cands: dict, blends: dict, scale: str, x, y, t, folds: int, seed: int) -> np.ndarray:
    out = np.zeros(len(y))
    for a, b in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y * 2 + t):
        out[b] = fit_named(name, cands, blends, scale, x[a], y[a], t[a]).predict(x[b])
    return out


def arm_response_model(x: np.ndarray, y: np.ndarray, t: np.ndarray, level: np.ndarray, settings: dict):
    """P(outcome | x, treated, offer level) on [x, t, level] (level 0 for control rows and when the
    past campaign randomised no levels): ``settings.kind`` ``lr`` (logistic regression with arm and
    level interactions: fast to score, the audience default) or ``gbt`` (gradient-boosted trees)."""
    s = dict(settings)
    kind = s.pop("kind", "lr")
    if kind == "gbt":
        return HistGradientBoostingClassifier(**s).fit(np.c_[x, t, level], y)
    if kind != "lr":
        raise ValueError(f"arm_model.kind: must be lr or gbt, got {kind!r}")
    return ArmLogistic(float(s.get("C", 1.0))).fit(np.c_[x, t, level], y)


def fit_outcome(x: np.ndarray, y: np.ndarray, t: np.ndarray, levels: np.ndarray | None, encoder: TableEncoder,
                outcome: str, ucfg: dict[str, Any]) -> tuple[FittedUplift, dict[str, Any]]:
    """Select, calibrate and validate an uplift model of ``outcome``; returns (model, report)."""
    mcfg, sel = ucfg["model"], ucfg["model"]["select"]
    cands, blends, scale = candidates_of(mcfg)
    seed, k = int(ucfg["seed"]), float(ucfg["k"])
    tr, va = train_test_split(np.arange(len(y)), test_size=float(ucfg["valid_fraction"]), random_state=seed,
                              stratify=y * 2 + t)
    t0 = time.perf_counter()
    table = cv_table(cands, blends, x[tr], y[tr], t[tr], int(sel["folds"]), int(sel["repeats"]), int(sel["seed"]), k, scale)
    scores = selection_scores(table, sel["metric"])
    chosen = max(scores, key=scores.get)
    log.info("uplift %s: chose %s by inner CV on %d training rows (%.0f s)", outcome, chosen, len(tr), time.perf_counter() - t0)
    cal = fit_calibration(oof_scores(chosen, cands, blends, scale, x[tr], y[tr], t[tr], int(sel["folds"]), seed), y[tr], t[tr])
    learner = fit_named(chosen, cands, blends, scale, x[tr], y[tr], t[tr])
    raw_va = learner.predict(x[va])
    effect_va = cal(raw_va)
    yv, tv = y[va], t[va]
    validation = {"rows": int(len(va)), "qini": qini_auc_score(yv, raw_va, tv), f"uplift_at_{int(k * 100)}": uplift_at_k(yv, raw_va, tv, k),
                  "observed_effect": float(yv[tv == 1].mean() - yv[tv == 0].mean()),
                  "mean_predicted_effect": float(effect_va.mean()),
                  "share_negative_effect": float((effect_va < 0).mean())}
    lvl = levels if levels is not None else np.zeros(len(y))
    if ucfg["refit"]:
        cal = fit_calibration(oof_scores(chosen, cands, blends, scale, x, y, t, int(sel["folds"]), seed), y, t)
        learner = fit_named(chosen, cands, blends, scale, x, y, t)
        rows = np.arange(len(y))
    else:
        rows = tr
    arm = arm_response_model(x[rows], y[rows], t[rows], lvl[rows], dict(ucfg["arm_model"]))
    per_level = {}
    if levels is not None:
        for value in sorted(np.unique(levels[t == 1])):
            m = (t == 0) | (levels == value)
            m[np.setdiff1d(np.arange(len(y)), rows)] = False
            xl, yl, tl = x[m], y[m], t[m]
            lcal = fit_calibration(oof_scores(chosen, cands, blends, scale, xl, yl, tl, int(sel["folds"]), seed), yl, tl)
            per_level[float(value)] = (freeze(fit_named(chosen, cands, blends, scale, xl, yl, tl)), lcal)
    model = FittedUplift(outcome, encoder, freeze(learner), cal, chosen, arm, per_level)
    report = {"chosen": chosen, "selection_metric": sel["metric"], "inner_cv": table, "validation": validation,
              "levels": sorted(per_level), "refit_on_all_rows": bool(ucfg["refit"]),
              "train_rows": int(len(tr)), "seconds": time.perf_counter() - t0}
    return model, report


def train(ucfg: dict[str, Any]) -> tuple[dict[str, FittedUplift], dict[str, Any]]:
    """Models per outcome and the manifest facts, from the plain config mapping."""
    data = load_table(ucfg["data"])
    encoder = TableEncoder.fit(data.frame, data.info["features"])
    x = encoder.transform(data.frame)
    models, reports = {}, {}
    for outcome, y in data.y.items():
        models[outcome], reports[outcome] = fit_outcome(x, y, data.t, data.levels, encoder, outcome, ucfg)
    facts = {"data": {**data.info, "path": str(ucfg["data"]["path"]), "sha256": file_sha256(ucfg["data"]["path"]),
                      "categorical": list(encoder.categorical), "levels_column": ucfg["data"].get("levels")},
             "results": reports}
    return models, facts


def default_out_dir(ucfg: dict[str, Any], artifacts: str) -> Path:
    return Path(ucfg.get("out_dir") or Path(artifacts) / "uplift" / Path(str(ucfg["data"]["path"])).stem)


def run(cfg: DictConfig) -> dict[str, Any]:
    ucfg = OmegaConf.to_container(cfg, resolve=True)
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(ucfg["threads"]))
    result: dict[str, Any] = {}
    pred = ucfg.get("predict") or {}
    if pred.get("run"):
        run_dir = Path(pred["run"])
    else:
        if ucfg["data"].get("path") in (None, "", "???"):
            raise ValueError("data.path: name the past campaign's table (or predict.run=<run folder> to predict only)")
        t0 = time.perf_counter()
        models, facts = train(ucfg)
        run_dir = default_out_dir(ucfg, ucfg["paths"]["artifacts"])
        with atomic_dir(run_dir) as tmp:
            uplift_model.save(tmp, models, {**facts, "config": {k: ucfg[k] for k in ("model", "k", "valid_fraction", "seed", "refit")},
                                            "code_version": code_version(), "seconds": time.perf_counter() - t0})
        result["run_dir"] = str(run_dir)
        result["validation"] = {o: r["validation"] for o, r in facts["results"].items()}
        result["chosen"] = {o: r["chosen"] for o, r in facts["results"].items()}
    if pred.get("path"):
        if not pred.get("out"):
            raise ValueError("predict.out: name the Parquet file to write the uplift column to")
        n = uplift_model.predict_file(run_dir, pred["path"], pred["out"])
        result["predictions"] = {"path": str(pred["out"]), "rows": n}
    result["run_dir"] = str(run_dir)
    return result


@hydra.main(config_path="../conf", config_name="uplift/table", version_base=None)
def main(cfg: DictConfig) -> None:
    res = run_or_exit("training.uplift", run, cfg)
    for outcome, v in (res.get("validation") or {}).items():
        print(f"uplift model ({outcome}): {res['chosen'][outcome]}; validation Qini {v['qini']:.4f}, "
              + ", ".join(f"{k} {val:.4f}" for k, val in v.items() if k.startswith("uplift_at")))
    if "predictions" in res:
        print(f"uplift of {res['predictions']['rows']} rows -> {res['predictions']['path']}")
    print(f"run -> {res['run_dir']}")


if __name__ == "__main__":
    main()


class ProjectUplift:
    """The model ``python -m training.uplift`` ships, as a ``fit(x, y, t)`` / ``predict(x)`` learner for
    benchmarks: selection by inner CV on the rows it is fitted on, calibrated effects."""

    def __init__(self, ucfg: dict[str, Any]):
        self.ucfg = ucfg

    def fit(self, x, y, t):
        mcfg, sel = self.ucfg["model"], self.ucfg["model"]["select"]
        cands, blends, scale = candidates_of(mcfg)
        table = cv_table(cands, blends, x, y, t, int(sel["folds"]), int(sel["repeats"]), int(sel["seed"]),
                         float(self.ucfg["k"]), scale)
        scores = selection_scores(table, sel["metric"])
        self.chosen_ = max(scores, key=scores.get)
        self.cal = fit_calibration(oof_scores(self.chosen_, cands, blends, scale, x, y, t, int(sel["folds"]),
                                              int(self.ucfg["seed"])), y, t)
        self.learner = fit_named(self.chosen_, cands, blends, scale, x, y, t)
        return self

    def predict(self, x):
        return self.cal(self.learner.predict(x))
