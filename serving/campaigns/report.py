"""The campaign readout as files: plots (PNG, also inlined) and ``report.html``.

Results with 95 % intervals, the audience funnel, conversion uplift by segment, Qini and uplift
curves of the model score; the page says where the outcomes came from (events, a file, or a
simulation that is not evidence) and, in a backtest, the A/A statement. ``audience_report``: an
uplift audience's page before any outcome (sleeping dogs, expected conversions, cost and profit, the
expected profit curve against budget).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from models.uplift import qini_curve, uplift_curve
from serving.campaigns.spec import CampaignConfig


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
    from matplotlib import ticker

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
    # Labelled decades only ("100", "1,000"): the default minor labels (2x10^2, 3x10^2, ...) overlap.
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    counts = [s["users"] for s in steps if s["users"] > 0] or [1]
    ax.set_xlim(10 ** np.floor(np.log10(min(counts))), max(counts) * 2.5)  # a labelled decade; room for the counts
    ax.set_xlabel("users left (log scale)")
    ax.set_title("Audience funnel: users after every step")
    for i, s in enumerate(steps[::-1]):
        ax.text(s["users"], i, f" {s['users']:,}", va="center", fontsize=8)
    images["funnel"] = _png(fig)
    plt.close(fig)

    if res["by_segment"]:
        seg = pd.DataFrame(res["by_segment"])
        # Users per segment and group from the frame: "treatment"/"control" of by_segment are conversion rates.
        frame = res["_frame"]
        n = frame.groupby([frame["segment"].astype(str), frame["group"].astype(str)]).size()
        labels = [f"segment {s} (n={int(n.get((str(s), 'treatment'), 0)):,} treated, "
                  f"{int(n.get((str(s), 'control'), 0)):,} control)" for s in seg["segment"]]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.errorbar(seg["uplift"], np.arange(len(seg)), xerr=[seg["uplift"] - seg["ci_low"], seg["ci_high"] - seg["uplift"]], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(np.arange(len(seg)), labels)
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


def render_html(campaign: CampaignConfig, res: dict, images: dict[str, str], source: str, where: str) -> str:
    e_rows = "".join(
        f"<tr><td>{html.escape(e['metric'])}</td><td>{e['treatment']:.4f}</td><td>{e['control']:.4f}</td>"
        f"<td>{e['uplift']:+.4f}</td><td>[{e['ci_low']:+.4f}, {e['ci_high']:+.4f}] ({e['interval']})</td>"
        f"<td>{e['p_value']:.3g}</td></tr>" for e in res["effects"])
    costs = res["costs"]
    roi = "n/a" if res["roi"] is None else f"{res['roi']:.2f}"
    notes = ""
    if source == "simulate":
        notes += ("<p style='color:#a00'><b>Outcomes are a seeded simulation</b> (serving.campaigns.outcomes."
                  "simulate_outcomes): they demo the evaluation, they are not evidence.</p>")
    if res.get("aa_check"):
        a = res["aa_check"]
        notes += f"<p style='color:{'#070' if a['passed'] else '#a00'}'><b>{html.escape(a['statement'])}</b></p>"
    for w in res.get("warnings", []):
        notes += f"<p style='color:#a60'><b>Warning:</b> {html.escape(w)}</p>"
    imgs = "".join(f"<h3>{html.escape(k)}</h3><img src='data:image/png;base64,{v}'/>" for k, v in images.items())
    return f"""<!doctype html><html><head><meta charset='utf-8'><title>Campaign {html.escape(campaign.id)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{padding:3px 8px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>Campaign {html.escape(campaign.name)} ({html.escape(campaign.id)})</h1>{notes}
<p>Outcomes: {html.escape(source)} ({html.escape(where)}), counted in the {campaign.attribution_days} days after each
user's send_at. Treatment {res['n_treatment']:,} users, control {res['n_control']:,}
(random, stratified by {html.escape(campaign.control.stratify_by)}).</p>
<table><tr><th>metric</th><th>treatment</th><th>control</th><th>uplift</th><th>95 % CI</th><th>p</th></tr>{e_rows}</table>
<p>Incremental conversions {res['incremental_conversions']:.1f}; incremental revenue {res['incremental_revenue']:.2f};
incremental margin {res['incremental_margin']:.2f} (margin rate {res['margin_rate']:.0%}, after discounts);
cost {costs['total']:.2f} (channels {costs['channel']:.2f}, discounts {costs['discounts']:.2f}); ROI {roi}.</p>
{imgs}</body></html>"""


def audience_report(manifest: dict, out: Path) -> None:
    """An uplift audience's page (``report.html`` + ``expected_profit.png`` in the audience folder):
    the funnel with the sleeping dogs, expected incremental conversions, cost and profit of the
    treated users, the offer levels, and the expected profit curve against budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = manifest["uplift"]
    curve = u["profit_curve"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(curve["cost"], curve["profit"], label="expected incremental profit")
    spent = u.get("expected_cost", {}).get("total")
    if spent is not None:
        ax.axvline(spent, color="#a00", ls="--", lw=1, label=f"this audience's expected cost ({spent:,.2f})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("budget: expected cost (channel + discounts), best users first")
    ax.set_ylabel("expected incremental profit")
    ax.set_title("Expected profit against budget (model estimates, before any outcome)")
    ax.legend(fontsize=8)
    png = _png(fig)
    plt.close(fig)
    (out / "expected_profit.png").write_bytes(base64.b64decode(png))
    steps = "".join(f"<tr><td>{html.escape(s['step'])}</td><td>{s['users']:,}</td></tr>" for s in manifest["steps"])
    cost = u.get("expected_cost", {})
    levels = ", ".join(f"{k}: {v:,}" for k, v in (u.get("offer_levels") or {}).items()) or "none"
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>Audience {html.escape(manifest['campaign_id'])}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:auto}} td,th{{padding:3px 8px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>Uplift audience {html.escape(manifest['campaign_id'])}</h1>
<p>Ranked by {html.escape(u['mode'].replace('_', ' '))} (outcome {html.escape(str(u['outcome']))}); offer: {html.escape(u['offer_rule'])}.</p>
<p><b>Sleeping dogs</b> (negative estimated effect, never sent an offer): {u['sleeping_dogs']:,} of {u['scored']:,} scored users{
    f"; unprofitable (expected profit &le; 0): {u['unprofitable']:,}" if 'unprofitable' in u else ''}.</p>
<p>Treated users: {manifest['counts']['treatment']:,}, control (random): {manifest['counts']['control']:,}.
Expected incremental conversions {u.get('expected_incremental_conversions', 0.0):,.1f}; expected cost
{cost.get('total', 0.0):,.2f} (channel {cost.get('channel', 0.0):,.2f}, discounts {cost.get('discounts', 0.0):,.2f});
expected incremental profit {u.get('expected_incremental_profit', 0.0):,.2f} (margin rate {u['margin_rate']}). Offer levels: {html.escape(levels)}.</p>
<table><tr><th>step</th><th>users left</th></tr>{steps}</table>
<h3>Expected profit against budget</h3><img src='data:image/png;base64,{png}'/>
</body></html>"""
    (out / "report.html").write_text(page)
