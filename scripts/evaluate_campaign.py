"""Did the campaign pay? ``python scripts/evaluate_campaign.py campaign=<name> outcomes=<file|simulate>``.

Reads the audience (``${paths.artifacts}/campaigns/<id>/audience.parquet``, from build_audience) and
an outcomes table (parquet or csv) with one row per audience user: ``user_key``, ``responded`` (0/1,
e.g. visited or clicked), ``converted`` (0/1, the objective within its window), ``revenue`` (>= 0) and
``retained`` (0/1, active ``evaluation.retention_days`` after the send date). Users of the audience
missing from the file count as 0 / 0 / 0.0 / 0.

``outcomes=simulate`` writes and uses a *seeded simulation* (``outcomes_simulated.parquet`` next to the
audience; the report says so): conversion follows the campaign model's score, treatment adds a
relative lift that grows with the discount, revenue is the user's average order value (from the
profiles) less the discount. It exists to demo and test the evaluation; it is not evidence.

Per group (treatment / control): users, response, conversion, revenue per user and retention; the
uplift of each with a 95 % confidence interval and p-value (two-proportion z-test; Welch for
revenue); incremental conversions and revenue; costs (channel cost of treated users + discount on
treated revenue) and ROI = (incremental revenue - cost) / cost; uplift by segment and by channel;
Qini and uplift curves of the model score. Writes ``${paths.reports}/campaigns/<id>/`` (report.html
with the plots as PNG, results.json, manifest.json) atomically.
"""
from __future__ import annotations

import base64
import html
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig
from scipy import stats

from features.artifacts import atomic_dir, code_version, file_sha256, read_json, write_json
from models.uplift import qini_curve, uplift_curve
from serving.campaign_config import CampaignConfig, from_hydra

log = logging.getLogger("evaluate_campaign")
OUTCOME_COLUMNS = ("responded", "converted", "revenue", "retained")


@dataclass
class Effect:
    metric: str
    treatment: float
    control: float
    uplift: float
    ci_low: float
    ci_high: float
    p_value: float


def proportion_effect(metric: str, t: np.ndarray, c: np.ndarray) -> Effect:
    """Difference of two proportions: Wald 95 % CI, pooled two-sided z-test."""
    pt, pc = t.mean() if len(t) else np.nan, c.mean() if len(c) else np.nan
    diff = pt - pc
    se = np.sqrt(pt * (1 - pt) / max(len(t), 1) + pc * (1 - pc) / max(len(c), 1))
    pool = (t.sum() + c.sum()) / max(len(t) + len(c), 1)
    se0 = np.sqrt(pool * (1 - pool) * (1 / max(len(t), 1) + 1 / max(len(c), 1)))
    p = float(2 * stats.norm.sf(abs(diff) / se0)) if se0 > 0 else 1.0
    return Effect(metric, float(pt), float(pc), float(diff), float(diff - 1.96 * se), float(diff + 1.96 * se), p)


def mean_effect(metric: str, t: np.ndarray, c: np.ndarray) -> Effect:
    """Difference of means: Welch 95 % CI and two-sided p."""
    diff = t.mean() - c.mean()
    vt, vc = t.var(ddof=1) / len(t), c.var(ddof=1) / len(c)
    se = np.sqrt(vt + vc)
    if se == 0:
        return Effect(metric, float(t.mean()), float(c.mean()), float(diff), float(diff), float(diff), 1.0)
    df = (vt + vc) ** 2 / (vt ** 2 / (len(t) - 1) + vc ** 2 / (len(c) - 1))
    q = stats.t.ppf(0.975, df)
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Effect(metric, float(t.mean()), float(c.mean()), float(diff), float(diff - q * se), float(diff + q * se), p)


def load_outcomes(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"outcomes file {path} (setting outcomes) not found")
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"user_key": "string"})
    missing = [c for c in ("user_key", *OUTCOME_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(f"outcomes file {path} lacks column(s) {missing}")
    for col in ("responded", "converted", "retained"):
        bad = ~df[col].isin([0, 1, True, False])
        if bad.any():
            raise ValueError(f"outcomes file {path}: column {col} must be 0/1, got {df.loc[bad, col].iloc[0]!r}")
    if (pd.to_numeric(df["revenue"], errors="coerce").fillna(-1) < 0).any():
        raise ValueError(f"outcomes file {path}: column revenue must be a number >= 0")
    if df["user_key"].duplicated().any():
        raise ValueError(f"outcomes file {path}: user_key {df.loc[df['user_key'].duplicated(), 'user_key'].iloc[0]!r} appears twice")
    return df


def simulate_outcomes(audience: pd.DataFrame, profiles: pd.DataFrame, campaign: CampaignConfig, seed: int) -> pd.DataFrame:
    """A seeded, documented simulation of campaign outcomes (see the module docstring)."""
    rng = np.random.default_rng(seed)
    prof = profiles.set_index(profiles["user_key"].astype(str))
    keys = audience["user_key"].astype(str)
    freq = prof["frequency"].reindex(keys).to_numpy(dtype=float)
    monetary = prof["monetary"].reindex(keys).to_numpy(dtype=float)
    aov = np.nan_to_num(np.clip(monetary, 0, None) / np.clip(freq, 1, None), nan=20.0)
    treated = (audience["group"] == "treatment").to_numpy()
    offer = audience["offer"].to_numpy(dtype=float)
    p0 = np.clip(audience["score"].to_numpy(dtype=float), 0.01, 0.95)
    p1 = np.clip(p0 * (1.15 + 1.5 * offer) + 0.01, 0, 0.99)
    p_conv = np.where(treated, p1, p0)
    converted = rng.random(len(p0)) < p_conv
    responded = converted | (rng.random(len(p0)) < np.where(treated, 0.12, 0.04))
    revenue = np.where(converted, aov * rng.lognormal(0.0, 0.4, len(p0)) * np.where(treated, 1 - offer, 1.0), 0.0)
    retained = rng.random(len(p0)) < np.where(converted, 0.8, 0.45)
    return pd.DataFrame({"user_key": keys.to_numpy(), "responded": responded.astype(int), "converted": converted.astype(int),
                         "revenue": np.round(revenue, 2), "retained": retained.astype(int)})


def evaluate(audience: pd.DataFrame, outcomes: pd.DataFrame, campaign: CampaignConfig) -> dict:
    df = audience.merge(outcomes, on="user_key", how="left")
    unmatched = int(df["converted"].isna().sum())
    for col in OUTCOME_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype(float)
    t, c = df[df["group"] == "treatment"], df[df["group"] == "control"]
    if len(t) < 2 or len(c) < 2:
        raise ValueError(f"need at least 2 treatment and 2 control users, got {len(t)} and {len(c)} "
                         "(campaign.control.fraction too small?)")
    effects = [proportion_effect("response", t["responded"].to_numpy(), c["responded"].to_numpy()),
               proportion_effect("conversion", t["converted"].to_numpy(), c["converted"].to_numpy()),
               mean_effect("revenue_per_user", t["revenue"].to_numpy(), c["revenue"].to_numpy()),
               proportion_effect(f"retention_{campaign.evaluation.retention_days}d", t["retained"].to_numpy(), c["retained"].to_numpy())]
    by = {e.metric: e for e in effects}
    channel_cost = float(t["cost"].sum())
    offer_cost = float((t["revenue"] * t["offer"] / (1 - t["offer"]).clip(lower=1e-9)).sum())  # discount given
    inc_rev = by["revenue_per_user"].uplift * len(t)
    cost = channel_cost + offer_cost
    segs = []
    for name, g in df.groupby("segment", dropna=False):
        gt, gc = g[g["group"] == "treatment"], g[g["group"] == "control"]
        if len(gt) >= 2 and len(gc) >= 2:
            e = proportion_effect("conversion", gt["converted"].to_numpy(), gc["converted"].to_numpy())
            segs.append({"segment": str(name), "treatment": len(gt), "control": len(gc), **{k: v for k, v in vars(e).items() if k != "metric"}})
    chans = [{"channel": str(ch), "treatment": int(len(g)), "conversion": float(g["converted"].mean()),
              "cost": float(g["cost"].sum())} for ch, g in t.groupby("channel", observed=True)]
    return {
        "n_treatment": int(len(t)), "n_control": int(len(c)), "unmatched_audience_users": unmatched,
        "effects": [vars(e) for e in effects],
        "incremental_conversions": by["conversion"].uplift * len(t),
        "incremental_revenue": inc_rev,
        "costs": {"channel": channel_cost, "offer": offer_cost, "total": cost},
        "roi": (inc_rev - cost) / cost if cost > 0 else None,
        "by_segment": segs, "by_channel": chans,
        "_frame": df,
    }


def _png(fig) -> str:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(res: dict, steps: list[dict], out: Path) -> dict[str, str]:
    """Campaign results, funnel, uplift by segment, Qini and uplift curves -> PNG files (+ base64)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = {}
    eff = res["effects"]
    fig, axes = plt.subplots(1, len(eff), figsize=(3.2 * len(eff), 3.2))
    for ax, e in zip(axes, eff):
        vals = [e["treatment"], e["control"]]
        ax.bar(["treatment", "control"], vals, color=["#1f77b4", "#aaaaaa"])
        ax.errorbar([0], [e["treatment"]], yerr=[[e["uplift"] - e["ci_low"]], [e["ci_high"] - e["uplift"]]], fmt="none", ecolor="k", capsize=4)
        ax.set_title(f"{e['metric']}\nuplift {e['uplift']:+.3f} (p={e['p_value']:.2g})", fontsize=9)
    fig.suptitle("Campaign results: treatment vs control (bar on treatment: 95 % CI of the uplift)", fontsize=10, y=1.08)
    images["results"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.barh([s["step"] for s in steps][::-1], [s["users"] for s in steps][::-1], color="#4c72b0")
    ax.set_xscale("log")
    ax.set_xlabel("users left (log scale)")
    ax.set_title("Audience funnel: users after every step")
    for i, s in enumerate(steps[::-1]):
        ax.text(s["users"], i, f" {s['users']:,}", va="center", fontsize=8)
    images["funnel"] = _png(fig)
    plt.close(fig)

    if res["by_segment"]:
        seg = pd.DataFrame(res["by_segment"])
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.errorbar(seg["uplift"], np.arange(len(seg)), xerr=[seg["uplift"] - seg["ci_low"], seg["ci_high"] - seg["uplift"]], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(np.arange(len(seg)), [f"segment {s} (n={a}+{b})" for s, a, b in zip(seg["segment"], seg["treatment"], seg["control"])])
        ax.set_xlabel("conversion uplift (95 % CI)")
        ax.set_title("Conversion uplift by segment")
        images["segments"] = _png(fig)
        plt.close(fig)

    df = res["_frame"]
    y, tt, s = df["converted"].astype(int).to_numpy(), (df["group"] == "treatment").astype(int).to_numpy(), df["score"].to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (name, fn) in zip(axes, (("Qini curve", qini_curve), ("Uplift curve", uplift_curve))):
        x, v = fn(y, s, tt)
        ax.plot(x, v, label="ranked by model score")
        ax.plot([0, x[-1]], [0, v[-1]], "--", color="grey", label="random targeting")
        ax.set_xlabel("users targeted (best score first)")
        ax.set_ylabel("incremental conversions")
        ax.set_title(f"{name} (outcome: conversion)")
        ax.legend(fontsize=8)
    images["qini"] = _png(fig)
    plt.close(fig)
    for name, b64 in images.items():
        (out / f"{name}.png").write_bytes(base64.b64decode(b64))
    return images


def render_html(campaign: CampaignConfig, res: dict, images: dict[str, str], simulated: bool, outcomes_path: str) -> str:
    e_rows = "".join(
        f"<tr><td>{html.escape(e['metric'])}</td><td>{e['treatment']:.4f}</td><td>{e['control']:.4f}</td><td>{e['uplift']:+.4f}</td>"
        f"<td>[{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]</td><td>{e['p_value']:.3g}</td></tr>" for e in res["effects"])
    costs = res["costs"]
    roi = "n/a" if res["roi"] is None else f"{res['roi']:.2f}"
    warn = ("<p style='color:#a00'><b>Outcomes are a seeded simulation</b> (scripts/evaluate_campaign.py, "
            "simulate_outcomes): they demo the evaluation, they are not evidence.</p>") if simulated else ""
    imgs = "".join(f"<h3>{html.escape(k)}</h3><img src='data:image/png;base64,{v}'/>" for k, v in images.items())
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>Campaign {html.escape(campaign.id)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{padding:3px 8px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>Campaign {html.escape(campaign.name)} ({html.escape(campaign.id)})</h1>{warn}
<p>Outcomes: {html.escape(outcomes_path)}. Treatment {res['n_treatment']:,} users, control {res['n_control']:,}
(random, stratified by {html.escape(campaign.control.stratify_by)}).</p>
<table><tr><th>metric</th><th>treatment</th><th>control</th><th>uplift</th><th>95 % CI</th><th>p</th></tr>{e_rows}</table>
<p>Incremental conversions {res['incremental_conversions']:.1f}; incremental revenue {res['incremental_revenue']:.2f};
cost {costs['total']:.2f} (channels {costs['channel']:.2f}, discounts {costs['offer']:.2f}); ROI {roi}.</p>
{imgs}</body></html>"""


def run(cfg: DictConfig) -> dict:
    campaign = from_hydra(cfg.campaign)
    if not campaign.job.outcomes:
        raise ValueError("outcomes is not set: pass outcomes=<file> (parquet/csv) or outcomes=simulate")
    aud_dir = Path(campaign.job.out_dir)
    if not (aud_dir / "audience.parquet").is_file():
        raise FileNotFoundError(f"{aud_dir / 'audience.parquet'} not found: run scripts/build_audience.py campaign={campaign.id} first")
    audience = pd.read_parquet(aud_dir / "audience.parquet")
    aud_manifest = read_json(aud_dir / "manifest.json")
    simulated = campaign.job.outcomes == "simulate"
    if simulated:
        profiles = pd.read_parquet(campaign.job.profiles, columns=["user_key", "frequency", "monetary"])
        outcomes = simulate_outcomes(audience, profiles, campaign, int(cfg.seed))
        outcomes_path = aud_dir / "outcomes_simulated.parquet"
        outcomes.to_parquet(outcomes_path, index=False)
    else:
        outcomes_path = Path(campaign.job.outcomes)
        outcomes = load_outcomes(outcomes_path)
    res = evaluate(audience, outcomes, campaign)
    with atomic_dir(campaign.job.report_dir) as tmp:
        images = plots(res, aud_manifest["steps"], tmp)
        (tmp / "report.html").write_text(render_html(campaign, res, images, simulated, str(outcomes_path)))
        public = {k: v for k, v in res.items() if not k.startswith("_")}
        public["simulated_outcomes"] = simulated
        write_json(tmp / "results.json", public)
        write_json(tmp / "manifest.json", {"campaign_id": campaign.id, "simulated_outcomes": simulated,
                                           "inputs": {"audience": file_sha256(aud_dir / "audience.parquet"),
                                                      "outcomes": {"path": str(outcomes_path), "sha256": file_sha256(outcomes_path)}},
                                           "counts": {"treatment": res["n_treatment"], "control": res["n_control"]},
                                           "code_version": code_version(), "device": "cpu"})
    public["report"] = str(Path(campaign.job.report_dir) / "report.html")
    return public


def _rewrite_argv(argv: list[str]) -> list[str]:
    """``outcomes=<file>`` -> ``campaign.job.outcomes=<file>`` (the campaign job setting)."""
    return [("campaign.job.outcomes=" + a.split("=", 1)[1]) if a.startswith("outcomes=") else a for a in argv]


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        res = run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate_campaign: error: {e}", file=sys.stderr)
        sys.exit(2)
    for e in res["effects"]:
        print(f"{e['metric']:16s} T {e['treatment']:.4f}  C {e['control']:.4f}  uplift {e['uplift']:+.4f} "
              f"[{e['ci_low']:+.4f}, {e['ci_high']:+.4f}] p={e['p_value']:.3g}")
    roi = "n/a" if res["roi"] is None else f"{res['roi']:.2f}"
    print(f"incremental revenue {res['incremental_revenue']:.2f}, cost {res['costs']['total']:.2f}, ROI {roi}"
          + (" (SIMULATED outcomes)" if res["simulated_outcomes"] else "") + f"; report {res['report']}")


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_rewrite_argv(sys.argv[1:])]
    main()
