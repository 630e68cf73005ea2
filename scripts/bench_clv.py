"""Calibration / holdout validation of the CLV and churn model (BG/NBD + Gamma-Gamma) on CDNOW and
Online Retail: ``python scripts/bench_clv.py`` (Hydra overrides welcome, e.g.
``profile.clv.time_unit_days=1`` or ``profile.bench_clv.datasets=[cdnow]``).

For each dataset the model is fitted on the calibration period and predicts, per customer seen in
calibration, the number of repeat purchase periods and the revenue in the holdout, and the
probability of no purchase in the holdout (``churn_prob``). Compared with a naive baseline that keeps
each customer's calibration rate. Prints a table, then one JSON object as the last line.
"""
from __future__ import annotations

import json
import time
from typing import Any

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import roc_auc_score

from features.cli import run_or_exit
from features.profiles.clv import calibration_holdout
from features.profiles.transactions import read_cdnow, read_online_retail

READERS = {"cdnow": read_cdnow, "online_retail": read_online_retail}


def _errors(pred: pd.Series, actual: pd.Series) -> tuple[float, float]:
    e = (pred - actual).to_numpy(dtype="float64")
    return float(np.mean(np.abs(e))), float(np.sqrt(np.mean(e ** 2)))


def evaluate(name: str, ds_cfg: dict[str, Any], clv_cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Fit, predict the holdout and score one dataset."""
    tx = READERS[name](ds_cfg["path"])
    start = pd.Timestamp(ds_cfg["holdout_start"], tz="UTC")
    end = pd.Timestamp(ds_cfg["holdout_end"], tz="UTC")
    t0 = time.perf_counter()
    res = calibration_holdout(tx, start, end, clv_cfg, seed)
    seconds = time.perf_counter() - t0
    f = res.frame
    out: dict[str, Any] = {"customers": int(res.n_users), "transactions": int(len(tx)), "fit_predict_s": round(seconds, 2),
                           "holdout_weeks": round((end - start) / pd.Timedelta(weeks=1), 1),
                           "bgnbd": res.model.bgnbd, "gamma_gamma": res.model.gamma_gamma}
    for target in ("purchases", "revenue"):
        actual = f[f"actual_{target}"]
        for method in ("pred", "naive"):
            mae, rmse = _errors(f[f"{method}_{target}"], actual)
            key = "model" if method == "pred" else "naive"
            out[f"{target}_mae_{key}"] = mae
            out[f"{target}_rmse_{key}"] = rmse
            out[f"{target}_total_{key}"] = float(f[f"{method}_{target}"].sum())
        out[f"{target}_total_actual"] = float(actual.sum())
        out[f"{target}_mae_ratio"] = out[f"{target}_mae_model"] / out[f"{target}_mae_naive"]
    churned = f["churned"].to_numpy()
    out["churn_rate"] = float(churned.mean())
    out["churn_auc"] = float(roc_auc_score(churned, f["churn_prob"]))
    out["churn_brier_model"] = float(np.mean((f["churn_prob"] - churned) ** 2))
    out["churn_brier_base_rate"] = float(np.mean((churned.mean() - churned) ** 2))
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    bench = OmegaConf.to_container(cfg.profile.bench_clv, resolve=True)
    clv_cfg = OmegaConf.to_container(cfg.profile.clv, resolve=True)
    unknown = [d for d in bench["datasets"] if d not in READERS]
    if unknown:
        raise ValueError(f"profile.bench_clv.datasets: unknown dataset(s) {unknown}; known: {sorted(READERS)}")
    return {"time_unit_days": clv_cfg["time_unit_days"],
            **{name: evaluate(name, bench[name], clv_cfg, int(cfg.seed)) for name in bench["datasets"]}}


def print_table(result: dict[str, Any]) -> None:
    print(f"BG/NBD + Gamma-Gamma, period {result['time_unit_days']} days; naive = each customer's calibration rate")
    header = f"{'dataset':14} {'target':10} {'MAE model':>10} {'MAE naive':>10} {'RMSE model':>11} {'RMSE naive':>11} {'total model':>12} {'total naive':>12} {'total actual':>13}"
    print(header)
    print("-" * len(header))
    for name, r in result.items():
        if not isinstance(r, dict):
            continue
        for t in ("purchases", "revenue"):
            print(f"{name:14} {t:10} {r[f'{t}_mae_model']:10.3f} {r[f'{t}_mae_naive']:10.3f} {r[f'{t}_rmse_model']:11.3f} "
                  f"{r[f'{t}_rmse_naive']:11.3f} {r[f'{t}_total_model']:12.0f} {r[f'{t}_total_naive']:12.0f} {r[f'{t}_total_actual']:13.0f}")
        print(f"{name:14} {'churn':10} AUC {r['churn_auc']:.3f}  Brier {r['churn_brier_model']:.3f} (base rate {r['churn_brier_base_rate']:.3f}, "
              f"churn rate {r['churn_rate']:.2f}); {r['customers']} customers, {r['holdout_weeks']} holdout weeks, fit+predict {r['fit_predict_s']} s")


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    result = run_or_exit("bench_clv", run, cfg, code=1)
    print_table(result)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
