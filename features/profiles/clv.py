"""Predicted customer lifetime value and churn probability over a horizon: BG/NBD + Gamma-Gamma
(Fader, Hardie & Lee 2005), implemented here with scipy and checked against ``lifetimes``.

Transactions are aggregated to periods of ``time_unit_days`` (lifetimes' convention): per user
``frequency`` = periods with a purchase - 1 (repeat periods), ``recency`` = last - first purchase
period, ``T`` = observation end - first purchase period, ``monetary_value`` = mean revenue of the
repeat periods. Predictions over ``horizon_days``:

- ``expected_purchases``: BG/NBD conditional expectation;
- ``p_alive``: probability the user has not dropped out;
- ``churn_prob``: probability of **no purchase within the horizon** =
  (1 - p_alive) + p_alive * ((alpha + T) / (alpha + T + t)) ** (r + frequency)
  (alive users buy at a Gamma(r + x, alpha + T)-distributed Poisson rate);
- ``clv``: expected_purchases × Gamma-Gamma expected revenue per purchase (undiscounted); null when
  the data has no prices.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, gammaln, hyp2f1

DAY = pd.Timedelta(days=1)
log = logging.getLogger(__name__)


@dataclass
class ClvModel:
    """Fitted parameters (BG/NBD: r, alpha, a, b; Gamma-Gamma: p, q, v) and the fit sizes."""

    time_unit_days: float
    bgnbd: dict[str, float]
    gamma_gamma: dict[str, float] | None
    n_fit: int
    n_fit_monetary: int
    penalizer: float

    def as_dict(self) -> dict[str, Any]:
        return {"time_unit_days": self.time_unit_days, "bgnbd": self.bgnbd, "gamma_gamma": self.gamma_gamma,
                "n_fit": self.n_fit, "n_fit_monetary": self.n_fit_monetary, "penalizer": self.penalizer}


def rfm_summary(tx: pd.DataFrame, observation_end: pd.Timestamp, time_unit_days: float) -> pd.DataFrame:
    """Per user (index) frequency, recency, T (in periods) and monetary_value from ``tx`` with columns
    user_id, ts, value (value may be NaN when the data has no prices). Only ``ts < observation_end``."""
    tx = tx[tx["ts"] < observation_end]
    unit = pd.Timedelta(days=time_unit_days)
    epoch = pd.Timestamp("1970-01-01", tz=tx["ts"].dt.tz) if tx["ts"].dt.tz is not None else pd.Timestamp("1970-01-01")
    period = ((tx["ts"] - epoch) // unit).astype("int64")
    per = pd.DataFrame({"user_id": tx["user_id"].to_numpy(), "period": period.to_numpy(), "value": tx["value"].to_numpy()})
    per = per.groupby(["user_id", "period"], sort=True)["value"].sum(min_count=1).reset_index()
    first = per.groupby("user_id")["period"].transform("min")
    end_period = (observation_end - epoch) // unit
    g = per.groupby("user_id")
    out = pd.DataFrame({
        "frequency": g.size() - 1,
        "recency": g["period"].max() - g["period"].min(),
        "T": end_period - g["period"].min(),
    }).astype("float64")
    repeat = per[per["period"] > first]
    out["monetary_value"] = repeat.groupby("user_id")["value"].mean().reindex(out.index).fillna(0.0)
    return out


# --- BG/NBD and Gamma-Gamma: the likelihoods and conditional expectations of Fader, Hardie & Lee (2005),
# written as in ``lifetimes`` (whose fitter aborts on scipy's harmless "precision loss" status and
# prints to stdout); fitted here with bounded L-BFGS-B on log-parameters. Tests compare with lifetimes.

def bgnbd_log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per-user log-likelihood of BG/NBD with params (r, alpha, a, b)."""
    r, alpha, a, b = params
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.where(x > 0, np.log(a) - np.log(b + np.maximum(x, 1) - 1) - (r + x) * np.log(alpha + t_x), -np.inf)
    return a1 + a2 + np.logaddexp(a3, a4)


def gamma_gamma_log_likelihood(params: np.ndarray, x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Per-user log-likelihood of the Gamma-Gamma spend model with params (p, q, v); x > 0, m > 0."""
    p, q, v = params
    return (gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(v) + (p * x - 1) * np.log(m)
            + (p * x) * np.log(x) - (p * x + q) * np.log(x * m + v))


def _fit_log_params(loglik, n_params: int, args: tuple, penalizer: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Maximise the (weighted) mean log-likelihood minus ``penalizer * sum(params²)`` over log-parameters."""
    w = np.ones(len(args[0])) if weights is None else np.asarray(weights, dtype="float64")

    def objective(log_params: np.ndarray) -> float:
        params = np.exp(log_params)
        value = -np.sum(w * loglik(params, *args)) / w.sum() + penalizer * np.sum(params ** 2)
        return float(value) if np.isfinite(value) else 1e300

    result = minimize(objective, np.zeros(n_params), method="L-BFGS-B", bounds=[(-12.0, 12.0)] * n_params)
    if not np.isfinite(result.fun) or result.fun >= 1e300:
        raise ValueError(f"the likelihood could not be evaluated ({result.message})")
    return np.exp(result.x)


def bgnbd_expected_purchases(params: dict[str, float], t: float, x, t_x, T) -> np.ndarray:
    """E[purchases in (T, T + t] | x, t_x, T]."""
    r, alpha, a, b = (params[k] for k in ("r", "alpha", "a", "b"))
    _a, _b, _c, _z = r + x, b + x, a + b + x - 1, t / (alpha + T + t)
    with np.errstate(all="ignore"):
        ln_hyp = np.log(hyp2f1(_a, _b, _c, _z))
        ln_hyp_alt = np.log(hyp2f1(_c - _a, _c - _b, _c, _z)) + (_c - _a - _b) * np.log(1 - _z)
        ln_hyp = np.where(np.isinf(ln_hyp), ln_hyp_alt, ln_hyp)
        numerator = (a + b + x - 1) / (a - 1) * (1 - np.exp(ln_hyp + (r + x) * np.log((alpha + T) / (alpha + t + T))))
        denominator = 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    return numerator / denominator


def bgnbd_p_alive(params: dict[str, float], x, t_x, T) -> np.ndarray:
    r, alpha, a, b = (params[k] for k in ("r", "alpha", "a", "b"))
    log_div = (r + x) * np.log((alpha + T) / (alpha + t_x)) + np.log(a / (b + np.maximum(x, 1) - 1))
    return np.where(x == 0, 1.0, expit(-log_div))


def gamma_gamma_expected_value(params: dict[str, float], x, m) -> np.ndarray:
    """E[revenue per purchase | x repeat purchases averaging m] (population mean when x = 0)."""
    p, q, v = (params[k] for k in ("p", "q", "v"))
    weight = p * x / (p * x + q - 1)
    return (1 - weight) * (v * p / (q - 1)) + weight * m


def fit(summary: pd.DataFrame, clv_cfg: dict[str, Any], seed: int) -> ClvModel | None:
    """Fit BG/NBD (and Gamma-Gamma where revenue is known) on at most ``fit_sample`` users; None when
    fewer than ``min_users`` users or nobody repeats (the model is then not identifiable)."""
    if len(summary) < int(clv_cfg["min_users"]) or (summary["frequency"] > 0).sum() == 0:
        return None
    sample = summary
    if len(summary) > int(clv_cfg["fit_sample"]):
        sample = summary.sample(int(clv_cfg["fit_sample"]), random_state=seed)
    pen = float(clv_cfg["penalizer"])
    # Users with the same (frequency, recency, T) have the same likelihood: fit on the distinct triples
    # weighted by their counts (a few thousand rows instead of up to fit_sample users).
    triples = sample.groupby(["frequency", "recency", "T"]).size().reset_index(name="n")
    x, t_x, T = (triples[c].to_numpy(dtype="float64") for c in ("frequency", "recency", "T"))
    bg = _fit_log_params(bgnbd_log_likelihood, 4, (x, t_x, T), pen, weights=triples["n"].to_numpy())
    rep = sample[(sample["frequency"] > 0) & (sample["monetary_value"] > 0)]
    gg = None
    if len(rep) >= int(clv_cfg["min_users"]):
        gg = _fit_log_params(gamma_gamma_log_likelihood, 3, (rep["frequency"].to_numpy(dtype="float64"),
                                                             rep["monetary_value"].to_numpy(dtype="float64")), pen)
        if gg[1] <= 1:   # q <= 1: the expected spend is infinite; no usable monetary model
            log.warning("Gamma-Gamma fit has q = %.3g <= 1: CLV left null", gg[1])
            gg = None
    return ClvModel(
        time_unit_days=float(clv_cfg["time_unit_days"]),
        bgnbd=dict(zip(("r", "alpha", "a", "b"), map(float, bg))),
        gamma_gamma=None if gg is None else dict(zip(("p", "q", "v"), map(float, gg))),
        n_fit=len(sample), n_fit_monetary=0 if gg is None else len(rep), penalizer=pen,
    )


def predict(model: ClvModel, summary: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
    """expected_purchases, p_alive, churn_prob, expected_value, clv per user of ``summary``."""
    t = horizon_days / model.time_unit_days
    triples = summary[["frequency", "recency", "T"]].to_numpy(dtype="float64")
    # The BG/NBD quantities depend only on (frequency, recency, T): evaluate each distinct triple once
    # (the hypergeometric function is slow; there are far fewer triples than users).
    uniq, inverse = np.unique(triples, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    x, t_x, T = uniq[:, 0], uniq[:, 1], uniq[:, 2]
    r, alpha = model.bgnbd["r"], model.bgnbd["alpha"]
    with np.errstate(all="ignore"):
        p_alive = bgnbd_p_alive(model.bgnbd, x, t_x, T)
        expected = bgnbd_expected_purchases(model.bgnbd, t, x, t_x, T)
        # The hypergeometric term can overflow for extreme parameters; there, use the expectation of
        # an alive user who keeps their posterior purchase rate (an upper bound).
        bad = ~np.isfinite(expected)
        expected[bad] = (p_alive * (r + x) / (alpha + T) * t)[bad]
        no_buy_if_alive = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t)))
    churn = np.clip((1 - p_alive) + p_alive * no_buy_if_alive, 0.0, 1.0)
    out = pd.DataFrame(index=summary.index)
    out["expected_purchases"] = expected[inverse]
    out["p_alive"] = p_alive[inverse]
    out["churn_prob"] = churn[inverse]
    if model.gamma_gamma is not None:
        m = summary["monetary_value"].to_numpy(dtype="float64")
        f = np.where(m > 0, triples[:, 0], 0.0)
        out["expected_value"] = gamma_gamma_expected_value(model.gamma_gamma, f, np.where(m > 0, m, 0.0))
        out["clv"] = out["expected_purchases"].to_numpy() * out["expected_value"].to_numpy()
    else:
        out["expected_value"] = np.nan
        out["clv"] = np.nan
    return out


@dataclass
class HoldoutResult:
    """Per-user predictions and actuals over a holdout period (for ``scripts/bench_clv.py``)."""

    n_users: int
    frame: pd.DataFrame   # columns: pred_purchases, naive_purchases, actual_purchases, pred_revenue, naive_revenue, actual_revenue, churn_prob, churned
    model: ClvModel


def calibration_holdout(tx: pd.DataFrame, calibration_end: pd.Timestamp, observation_end: pd.Timestamp,
                        clv_cfg: dict[str, Any], seed: int) -> HoldoutResult:
    """Fit on ``ts < calibration_end``, predict the holdout ``[calibration_end, observation_end)`` for
    users seen in calibration, and return predictions next to the actual repeat purchases (periods with
    a purchase) and revenue. Naive baseline: each user keeps their calibration rate (repeat periods /
    T for purchases, revenue / T for revenue)."""
    if not calibration_end < observation_end:
        raise ValueError(f"calibration end {calibration_end} must be before observation end {observation_end}")
    unit = float(clv_cfg["time_unit_days"])
    cal = rfm_summary(tx, calibration_end, unit)
    model = fit(cal, clv_cfg, seed)
    if model is None:
        raise ValueError(f"too few calibration users with repeat purchases ({len(cal)} users)")
    horizon_days = (observation_end - calibration_end) / DAY
    pred = predict(model, cal, horizon_days)
    hold = tx[(tx["ts"] >= calibration_end) & (tx["ts"] < observation_end) & tx["user_id"].isin(cal.index)]
    unit_td = pd.Timedelta(days=unit)
    hold_periods = hold.assign(p=(hold["ts"] - hold["ts"].min()) // unit_td).groupby("user_id")["p"].nunique()
    hold_revenue = hold.groupby("user_id")["value"].sum(min_count=1)
    cal_tx = tx[tx["ts"] < calibration_end]
    cal_revenue = cal_tx.groupby("user_id")["value"].sum(min_count=1).reindex(cal.index)
    t = horizon_days / unit
    age = cal["T"].clip(lower=1.0)
    frame = pd.DataFrame(index=cal.index)
    frame["pred_purchases"] = pred["expected_purchases"]
    frame["naive_purchases"] = cal["frequency"] / age * t
    frame["actual_purchases"] = hold_periods.reindex(cal.index).fillna(0).astype("float64")
    frame["pred_revenue"] = pred["clv"]
    frame["naive_revenue"] = cal_revenue / age * t
    frame["actual_revenue"] = hold_revenue.reindex(cal.index).fillna(0.0)
    frame["churn_prob"] = pred["churn_prob"]
    frame["churned"] = frame["actual_purchases"] == 0
    return HoldoutResult(n_users=len(cal), frame=frame, model=model)
