"""The readout as people read it: a text table, and an HTML page with plots (``write_report``).

``write_report(readout, out_dir)`` writes ``report.html`` (table, the per-variant metric plots with
their 95 % intervals, cumulative units per variant over time), ``results.json`` (the readout),
``quarantine.jsonl`` (every rejected line with its reason) and ``manifest.json``, atomically
(``features.artifacts.atomic_dir``).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from features.artifacts import atomic_dir
from serving.experiments.readout import Readout

METRICS = (("conversion_rate", "conversion rate"), ("ctr", "CTR"), ("revenue_per_user", "revenue / user"))


def _f(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.2f}%" if pct else (f"{x:.4g}" if isinstance(x, float) else str(x))


def table(result: dict[str, Any]) -> str:
    """Per-variant figures, then the comparisons against the control."""
    lines = [f"experiment {result['experiment']} (primary: {result['primary_metric']}, control: {result['control']})"]
    head = f"{'variant':<14}{'users':>8}{'expos.':>9}{'clicks':>8}{'conv.':>7}{'revenue':>11}  " \
           f"{'CTR [95% CI]':<24}{'conv. rate [95% CI]':<26}{'rev/user [95% CI]':<24}"
    lines += [head, "-" * len(head)]
    for v, f in result["variants"].items():
        ci = lambda k, pct: f"{_f(f[k], pct)} [{_f(f[k + '_ci'][0], pct)}, {_f(f[k + '_ci'][1], pct)}]"  # noqa: E731
        lines.append(f"{v:<14}{f['users']:>8}{f['exposures']:>9}{f['clicks']:>8}{f['conversions']:>7}"
                     f"{f['revenue']:>11.2f}  {ci('ctr', True):<24}{ci('conversion_rate', True):<26}"
                     f"{ci('revenue_per_user', False):<24}")
    lines.append("")
    lines.append(f"{'variant vs control':<22}{'metric':<18}{'lift':>9}{'lift 95% CI':>22}{'p-value':>10}")
    for v, comp in result["comparisons"].items():
        for m in ("conversion", "ctr", "revenue_per_user", "cuped"):
            c = comp[m]
            name = f"{result['primary_metric']} (CUPED)" if m == "cuped" else m
            lines.append(f"{v + ' vs ' + result['control']:<22}{name:<18}{_f(c['lift'], True):>9}"
                         f"{'[' + _f(c['lift_ci'][0], True) + ', ' + _f(c['lift_ci'][1], True) + ']':>22}"
                         f"{_f(c['p_value']):>10}")
        lines.append(f"{'':<22}always-valid p-value of the primary metric: {_f(comp['always_valid_p_value'])}; "
                     f"CUPED variance reduction {_f(comp['cuped']['variance_reduction'], True)}")
    lines.append("")
    lines.append(f"sample ratio: chi2 {_f(result['srm_chi2'])}, p {_f(result['srm_p_value'])}"
                 + ("  ** SAMPLE RATIO MISMATCH: the split is broken, do not trust the comparison **"
                    if result["srm_flag"] else " (no mismatch)"))
    lines.append(f"planned users per variant (MDE): {result['planned_users_per_variant']}"
                 + (f"; {result['horizon_warning']}" if result.get("horizon_warning") else "; horizon reached"))
    for v, g in (result.get("guardrails") or {}).items():
        lines.append(f"guardrails {v}: p99 {_f(g['latency_p99_ms'])} ms, empty {_f(g['empty_rate'], True)}, "
                     f"degraded {_f(g['degraded_rate'], True)} -> {'ok' if g['ok'] else 'BREACHED'}")
    q = result.get("quarantined") or {}
    if q:
        lines.append(f"quarantined lines: {q}")
    if result.get("crossover_units"):
        lines.append(f"units seen in two variants (left out): {result['crossover_units']}")
    return "\n".join(lines)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(readout: Readout) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = readout.result
    out = []
    names = list(res["variants"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    for ax, (key, label) in zip(axes, METRICS):
        vals = [res["variants"][v][key] for v in names]
        cis = [res["variants"][v][key + "_ci"] for v in names]
        y = np.array([np.nan if v is None else v for v in vals], float)
        lo = np.array([np.nan if c[0] is None else c[0] for c in cis], float)
        hi = np.array([np.nan if c[1] is None else c[1] for c in cis], float)
        ax.bar(names, y, color="#8fb3d9")
        ax.errorbar(names, y, yerr=[np.nan_to_num(y - lo), np.nan_to_num(hi - y)], fmt="none", ecolor="k", capsize=4)
        ax.set_title(f"{label} (95 % CI)")
    out.append(("Per-variant metrics", _png(fig)))
    plt.close(fig)
    ex = readout.exposures
    if len(ex):
        fig, ax = plt.subplots(figsize=(8, 3))
        first = ex.sort_values("ts").drop_duplicates("unit")
        for v in names:
            t = np.sort(first.ts[first.variant == v].to_numpy())
            if len(t):
                ax.plot((t - first.ts.min()) / 3600.0, np.arange(1, len(t) + 1), label=v)
        ax.set_xlabel("hours since the first exposure")
        ax.set_ylabel("units exposed")
        ax.legend()
        ax.set_title("Cumulative units per variant (a diverging ratio means a broken split)")
        out.append(("Units over time", _png(fig)))
        plt.close(fig)
    return out


def write_report(readout: Readout, out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    res = readout.result
    with atomic_dir(out_dir) as tmp:
        (tmp / "results.json").write_text(json.dumps(res, indent=2))
        with open(tmp / "quarantine.jsonl", "w") as f:
            for row in readout.quarantine.rows:
                f.write(json.dumps(row, ensure_ascii=True) + "\n")
        imgs = "".join(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}'/>" for t, b in plots(readout))
        warn = res.get("horizon_warning")
        page = (f"<html><head><meta charset='utf-8'><title>experiment {html.escape(res['experiment'])}</title></head>"
                f"<body style='font-family:sans-serif'><h1>Experiment {html.escape(res['experiment'])}</h1>"
                + (f"<p style='color:#b00'><b>{html.escape(warn)}</b></p>" if warn else "")
                + ("<p style='color:#b00'><b>Sample ratio mismatch: the split is broken.</b></p>"
                   if res["srm_flag"] else "")
                + f"<pre>{html.escape(table(res))}</pre>{imgs}</body></html>")
        (tmp / "report.html").write_text(page)
        (tmp / "manifest.json").write_text(json.dumps(
            {**manifest, "files": sorted(os.listdir(tmp)) + ["manifest.json"]}, indent=2, default=str))
    return Path(out_dir)
