"""The profile report: PNG plots and one self-contained HTML page (plots embedded) with the segment
sizes and profiles, the RFM grid, the lifecycle flows and the CLV / churn distributions."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from features.profiles.lifecycle import NOT_SEEN, STAGES  # noqa: E402


def _annotate(ax, matrix: np.ndarray, fmt: str = "{:,.0f}") -> None:
    """Write each non-zero cell value, black on a white halo (readable on any colour)."""
    halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for (i, j), v in np.ndenumerate(matrix):
        if np.isfinite(v) and v != 0:
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=8, color="black", path_effects=halo)


def plot_segment_sizes(segments: pd.DataFrame, path: Path, dpi: int) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, kind, title in ((axes[0], "cluster", "Clusters (k by silhouette)"), (axes[1], "named", "Named marketing segments")):
        s = segments[segments["kind"] == kind].iloc[::-1]
        bars = ax.barh(s["name"], s["size"], color="tab:blue" if kind == "cluster" else "tab:orange")
        for b, share in zip(bars, s["share"]):
            ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {share:.0%}", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("users")
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_segment_profiles(segments: pd.DataFrame, path: Path, dpi: int) -> None:
    segments = segments[segments["size"] > 0]
    # Features that do not vary in this data (e.g. views in a purchase log) would only add blank columns.
    zcols = [c for c in segments.columns if c.startswith("z_") and segments[c].fillna(0).abs().max() > 1e-9]
    m = segments[zcols].to_numpy(dtype="float64")
    labels = [f"{k[:1]}| {n}" for k, n in zip(segments["kind"], segments["name"])]
    fig, ax = plt.subplots(figsize=(1.0 * len(zcols) + 4, 0.38 * len(segments) + 1.8))
    im = ax.imshow(np.nan_to_num(m), cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    ax.set_xticks(range(len(zcols)), [c[2:] for c in zcols], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    _annotate(ax, np.round(m, 1), "{:+.1f}")
    ax.set_title("Segment profiles: mean of each feature in sd from the average user (c = cluster, n = named)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_rfm_grid(profiles: pd.DataFrame, path: Path, dpi: int, no_purchase_group: str) -> None:
    buyers = profiles[profiles["rfm_group"] != no_purchase_group]
    counts = buyers.pivot_table(index="r_score", columns="f_score", values="user_id", aggfunc="count").reindex(
        index=range(5, 0, -1), columns=range(1, 6))
    value_col = "monetary" if buyers["monetary"].notna().any() else "m_score"
    value = buyers.pivot_table(index="r_score", columns="f_score", values=value_col, aggfunc="mean").reindex(
        index=range(5, 0, -1), columns=range(1, 6))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    ax = axes[0]
    im = ax.imshow(value.to_numpy(dtype="float64"), cmap="YlGn", aspect="auto")
    ax.set_xticks(range(5), [str(c) for c in value.columns])
    ax.set_yticks(range(5), [str(i) for i in value.index])
    ax.set_xlabel("F score (frequency quintile)")
    ax.set_ylabel("R score (recency quintile, 5 = most recent)")
    _annotate(ax, counts.to_numpy(dtype="float64"))
    ax.set_title(f"RFM grid: users per cell, colour = mean {value_col}")
    fig.colorbar(im, ax=ax, fraction=0.04)
    groups = profiles["rfm_group"].value_counts()
    axes[1].barh(groups.index[::-1], groups.to_numpy()[::-1], color="tab:green")
    axes[1].set_title("Named RFM groups")
    axes[1].set_xlabel("users")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_lifecycle_flows(flows: pd.DataFrame, path: Path, dpi: int) -> None:
    rows = [s for s in (NOT_SEEN, *STAGES) if s in set(flows["from_stage"])]
    m = flows.pivot_table(index="from_stage", columns="to_stage", values="n_users", aggfunc="sum").reindex(
        index=rows, columns=list(STAGES)).fillna(0)
    d0, d1 = flows["from_date"].iloc[0], flows["to_date"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    ax = axes[0]
    share = m.div(m.sum(axis=1).replace(0, np.nan), axis=0)
    im = ax.imshow(share.to_numpy(dtype="float64"), cmap="Purples", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(STAGES)), STAGES)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(f"stage at {d1:%Y-%m-%d}")
    ax.set_ylabel(f"stage at {d0:%Y-%m-%d}")
    _annotate(ax, m.to_numpy(dtype="float64"))
    ax.set_title("Lifecycle flows: users (colour = share of the row)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    before = flows.groupby("from_stage")["n_users"].sum().reindex(list(STAGES)).fillna(0)
    after = flows.groupby("to_stage")["n_users"].sum().reindex(list(STAGES)).fillna(0)
    x = np.arange(len(STAGES))
    axes[1].bar(x - 0.2, before.to_numpy(), 0.4, label=f"{d0:%Y-%m-%d}")
    axes[1].bar(x + 0.2, after.to_numpy(), 0.4, label=f"{d1:%Y-%m-%d}")
    axes[1].set_xticks(x, STAGES)
    axes[1].set_ylabel("users")
    axes[1].set_title("Users per stage at the two dates")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_clv_churn(profiles: pd.DataFrame, path: Path, dpi: int) -> bool:
    if profiles["churn_prob"].notna().sum() == 0:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    clv = profiles["clv"].dropna()
    if len(clv):
        axes[0].hist(np.log10(clv.clip(lower=1)), bins=40, color="tab:purple")
        axes[0].set_xlabel("log10 predicted CLV over the horizon")
    axes[0].set_title("Predicted CLV (BG/NBD + Gamma-Gamma)")
    axes[0].set_ylabel("users")
    stages = [s for s in STAGES if (profiles["lifecycle"] == s).any()]
    data = [profiles.loc[profiles["lifecycle"] == s, "churn_prob"].dropna().to_numpy() for s in stages]
    keep = [i for i, d in enumerate(data) if len(d)]
    axes[1].boxplot([data[i] for i in keep], tick_labels=[stages[i] for i in keep])
    axes[1].set_title("Churn probability (no purchase in the horizon) by lifecycle stage")
    axes[1].set_ylabel("churn_prob")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return True


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:,.3g}", na_rep="", escape=True, border=0)


def write_report(folder: Path, profiles: pd.DataFrame, segments: pd.DataFrame, flows: pd.DataFrame,
                 meta: dict[str, Any], pcfg: dict[str, Any]) -> list[str]:
    """Write the PNGs and ``report.html`` into ``folder``; return the file names."""
    dpi = int(pcfg["report"]["dpi"])
    no_purchase = pcfg["rfm"]["no_purchase_group"]
    plots = [("segment_sizes.png", "Segment sizes", lambda p: plot_segment_sizes(segments, p, dpi)),
             ("segment_profiles.png", "Segment profiles", lambda p: plot_segment_profiles(segments, p, dpi)),
             ("rfm_grid.png", "RFM grid", lambda p: plot_rfm_grid(profiles, p, dpi, no_purchase)),
             ("lifecycle_flows.png", "Lifecycle flows", lambda p: plot_lifecycle_flows(flows, p, dpi)),
             ("clv_churn.png", "CLV and churn", lambda p: plot_clv_churn(profiles, p, dpi))]
    written, sections = [], []
    for name, title, draw in plots:
        path = folder / name
        if draw(path) is False or not path.exists():
            continue
        written.append(name)
        b64 = base64.b64encode(path.read_bytes()).decode()
        sections.append(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{b64}' style='max-width:100%'>")
    seg_cols = ["kind", "segment", "name", "size", "share", "rule", "description"]
    lc = profiles["lifecycle"].value_counts().rename_axis("lifecycle").reset_index(name="users")
    rfm = (profiles.groupby("rfm_group")
           .agg(users=("user_id", "size"), median_recency_days=("recency_days", "median"),
                median_frequency=("frequency", "median"), median_monetary=("monetary", "median"))
           .sort_values("users", ascending=False).reset_index())
    body = [
        f"<h1>User profiles: {html.escape(str(meta['data']))}</h1>",
        f"<p>Snapshot {html.escape(str(meta['snapshot_date']))}; {meta['counts']['users']:,} users; "
        f"flows from {html.escape(str(meta['flows_from']))}. Consent: {html.escape(meta['consent']['source'])}. "
        f"Price proxy: {html.escape(str(meta['notes']['price_proxy']))}. Preferred channel: "
        f"{html.escape(meta['notes']['preferred_channel'])}.</p>",
        "<h2>Segments</h2>", _table_html(segments[seg_cols]),
        "<h2>Lifecycle stages at the snapshot</h2>", _table_html(lc),
        "<h2>RFM groups</h2>", _table_html(rfm),
        *sections,
    ]
    page = "<!doctype html><html><head><meta charset='utf-8'><title>Profiles</title><style>body{font-family:sans-serif;max-width:1400px;margin:auto} td,th{padding:2px 8px;font-size:13px;text-align:left} tr:nth-child(even){background:#f4f4f4}</style></head><body>"
    (folder / "report.html").write_text(page + "\n".join(body) + "</body></html>\n")
    return [*written, "report.html"]
