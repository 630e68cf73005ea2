"""The analytics report: PNG plots and one self-contained HTML page (plots embedded, no external
resources) with the reconciliation, the funnels, abandonment, durations, paths, repeat purchases and
the live recommendation funnel."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

BARS = (("viewed", "viewed"), ("carted_after_view", "carted after view"), ("purchased_after_cart", "purchased after cart"),
        ("purchased_after_view", "purchased after view"), ("with_purchase", "purchased (any order)"))


def _save(fig, path: Path, dpi: int) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_funnel(users: pd.DataFrame, pairs: pd.DataFrame, path: Path, dpi: int) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, t, title in ((axes[0], users, "Users"), (axes[1], pairs, "(user, item) pairs")):
        row = t.iloc[0]
        vals = [int(row[c]) for c, _ in BARS]
        bars = ax.bar([lab for _, lab in BARS], vals, color=["tab:blue", "tab:orange", "tab:green", "tab:olive", "tab:gray"])
        base = max(int(row["viewed"]), 1)
        for b, v in zip(bars, vals):
            share = f"\n{v / base:.1%} of viewed" if int(row["viewed"]) else ""
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:,}{share}", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"Funnel view → cart → purchase: {title} ({int(row['units']):,} in the funnel)")
        ax.tick_params(axis="x", labelsize=8, rotation=15)
        ax.margins(y=0.2)
    _save(fig, path, dpi)


def plot_by_day(by_day: pd.DataFrame, path: Path, dpi: int) -> None:
    """Days with under 1 % of the median day's events (stray times far from the data's window) are
    left out of the plot (they stay in the table) so that they do not stretch the time axis."""
    d = by_day.assign(day=pd.to_datetime(by_day["day"]))
    n = d.filter(like="events_").sum(axis=1)
    sparse = n < 0.01 * n.median()
    d = d[~sparse]
    fig, axes = plt.subplots(2, 1, figsize=(13, 6), sharex=True)
    for col, lab, colour in (("viewed", "users viewing", "tab:blue"), ("with_cart", "users carting", "tab:orange"),
                             ("with_purchase", "users purchasing", "tab:green")):
        if d[col].sum():
            axes[0].plot(d["day"], d[col], marker="." if len(d) < 60 else None, label=lab, color=colour)
    axes[0].set_ylabel("users per day")
    axes[0].legend(fontsize=8)
    hidden = f"; {int(sparse.sum())} sparse days not shown" if sparse.any() else ""
    axes[0].set_title(f"Daily funnel (within each calendar day{hidden})")
    for col in ("view_to_cart", "cart_to_purchase", "view_to_purchase"):
        if d[col].notna().any():
            axes[1].plot(d["day"], d[col], marker="." if len(d) < 60 else None, label=col.replace("_", " "))
    axes[1].set_ylabel("rate")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no rates: the data has no views or carts", ha="center", transform=axes[1].transAxes)
    _save(fig, path, dpi)


def plot_rates_by(table: pd.DataFrame, key: str, path: Path, dpi: int) -> bool:
    t = table[table["units"] > 0].iloc[::-1]
    if len(t) < 2:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.32 * len(t) + 1.8), sharey=True)
    axes[0].barh(t[key].astype(str), t["units"], color="tab:blue")
    axes[0].set_xlabel("users in the funnel")
    y = np.arange(len(t))
    axes[1].barh(y - 0.2, t["view_to_cart"].fillna(0), 0.4, label="view → cart")
    axes[1].barh(y + 0.2, t["cart_to_purchase"].fillna(0), 0.4, label="cart → purchase")
    axes[1].set_xlabel("rate (users)")
    axes[1].legend(fontsize=8)
    axes[0].tick_params(axis="y", labelsize=8)
    fig.suptitle(f"Funnel by {key}")
    _save(fig, path, dpi)
    return True


def _log_hist(ax, hours: pd.Series, title: str) -> None:
    h = hours.dropna()
    if len(h) == 0:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    else:
        ax.hist(np.log10(h.clip(lower=1 / 60)), bins=40, color="tab:purple")
        ax.axvline(np.log10(max(h.median(), 1 / 60)), color="black", ls="--", lw=1, label=f"median {h.median():,.2f} h")
        ax.legend(fontsize=8)
        ticks = [np.log10(x) for x in (1 / 60, 1, 24, 24 * 7, 24 * 30, 24 * 365) if np.log10(x) <= ax.get_xlim()[1] + 0.5]
        ax.set_xticks(ticks, ["1 min", "1 h", "1 d", "1 w", "30 d", "1 y"][:len(ticks)])
    ax.set_title(title)
    ax.set_ylabel("count")


def plot_durations(v2p: pd.Series, gap: pd.Series, occasions: pd.Series, path: Path, dpi: int) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    _log_hist(axes[0], v2p, "First view → purchase of the item ((user, item) pairs)")
    _log_hist(axes[1], gap, "First → second purchase occasion (buyers)")
    labels = [("10+" if k >= 10 else str(k)) for k in occasions.index]
    axes[2].bar(labels, occasions.to_numpy(), color="tab:green")
    axes[2].set_title("Buyers by number of purchase occasions")
    axes[2].set_xlabel("occasions")
    axes[2].set_ylabel("buyers")
    _save(fig, path, dpi)


def plot_paths(paths: pd.DataFrame, path: Path, dpi: int) -> bool:
    if paths.empty:
        return False
    p = paths.iloc[::-1]
    fig, ax = plt.subplots(figsize=(13, 0.35 * len(p) + 1.5))
    bars = ax.barh(p["path"], p["checkouts"], color="tab:orange")
    for b, s in zip(bars, p["share"]):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {s:.1%}", va="center", fontsize=8)
    ax.set_xlabel("checkouts")
    ax.set_title("Most frequent event-type paths before a purchase (within a session, repeats collapsed)")
    ax.tick_params(axis="y", labelsize=8)
    ax.margins(x=0.12)
    _save(fig, path, dpi)
    return True


def plot_live(table: pd.DataFrame, path: Path, dpi: int) -> bool:
    if table.empty:
        return False
    fig, ax = plt.subplots(figsize=(13, 4))
    labels = [f"{e}/{v}" for e, v in zip(table["experiment"], table["variant"])]
    x = np.arange(len(table))
    for i, (col, lab) in enumerate((("responses", "responses"), ("clicked_responses", "with a click"),
                                    ("purchased_after_click_responses", "purchase after click"))):
        ax.bar(x + (i - 1) * 0.27, table[col], 0.27, label=lab)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("responses")
    ax.set_title("Live funnel of recommendations: exposure → click → purchase (attributed by request id)")
    ax.legend(fontsize=8)
    _save(fig, path, dpi)
    return True


def _table(df: pd.DataFrame | dict, max_rows: int = 60) -> str:
    if isinstance(df, dict):
        df = pd.DataFrame([{"figure": k, "value": v} for k, v in df.items()])
    return df.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:,.4g}", na_rep="", escape=True, border=0)


FUNNEL_VIEW = ["units", "viewed", "carted_after_view", "purchased_after_cart", "purchased_after_view", "with_cart",
               "with_purchase", "view_to_cart", "cart_to_purchase", "view_to_purchase"]


def write_report(folder: Path, summary: dict[str, Any], users: pd.DataFrame, pairs: pd.DataFrame, by_day: pd.DataFrame,
                 by_cat: pd.DataFrame, by_seg: pd.DataFrame | None, v2p: pd.Series, gap: pd.Series,
                 occasions: pd.Series, paths: pd.DataFrame, live: Any, dpi: int) -> list[str]:
    """Write the PNGs and ``report.html`` into ``folder``; return the file names."""
    plots: list[tuple[str, str, Callable[[Path], Any], str]] = [
        ("funnel.png", "Funnel", lambda p: plot_funnel(users, pairs, p, dpi),
         _table(pd.concat([users.assign(unit="users"), pairs.assign(unit="(user, item) pairs")])[["unit", *FUNNEL_VIEW]])),
        ("funnel_by_day.png", "Funnel by day", lambda p: plot_by_day(by_day, p, dpi),
         _table(by_day[["day", *FUNNEL_VIEW]], 31) + (f"<p>{len(by_day)} days; all in funnel_by_day.csv</p>" if len(by_day) > 31 else "")),
        ("funnel_by_category.png", "Funnel by category", lambda p: plot_rates_by(by_cat, "category", p, dpi),
         _table(by_cat[["category", *FUNNEL_VIEW]])),
    ]
    if by_seg is not None:
        plots.append(("funnel_by_segment.png", f"Funnel by segment ({summary['segment_column']})",
                      lambda p: plot_rates_by(by_seg, "segment", p, dpi), _table(by_seg[["segment", *FUNNEL_VIEW]])))
    rp = summary["repeat_purchase"]
    plots += [
        ("durations.png", "Time to purchase and repeat purchases", lambda p: plot_durations(v2p, gap, occasions, p, dpi),
         "<h3>Cart abandonment</h3>" + _table(summary["cart_abandonment"])
         + "<h3>First view → purchase (hours)</h3>" + _table(summary["view_to_purchase_hours"])
         + "<h3>Repeat purchases</h3>" + _table({k: v for k, v in rp.items() if not isinstance(v, dict)})
         + "<h3>First → second purchase occasion (hours)</h3>" + _table(rp["first_to_second_purchase_hours"])),
        ("paths.png", "Paths before a purchase", lambda p: plot_paths(paths, p, dpi), _table(paths)),
    ]
    if live is not None:
        plots.append(("live_funnel.png", "Live funnel of recommendations", lambda p: plot_live(live.by_variant, p, dpi),
                      _table(live.summary["funnel"]) + "<h3>Per experiment and variant</h3>" + _table(live.by_variant)
                      + "<h3>Event-log lines by bucket (reconciliation)</h3>" + _table(live.summary["events_by_bucket"])))
    written, sections = [], []
    for name, title, draw, extra in plots:
        path = folder / name
        img = ""
        if draw(path) is not False and path.exists():
            written.append(name)
            b64 = base64.b64encode(path.read_bytes()).decode()
            img = f"<img src='data:image/png;base64,{b64}' style='max-width:100%'>"
        sections.append(f"<h2>{html.escape(title)}</h2>{img}{extra}")
    rec = summary["reconciliation"]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in summary["notes"])
    body = [
        f"<h1>Behaviour analytics: {html.escape(summary['data'])}</h1>",
        f"<p>{summary['n_events']:,} events of {summary['n_users']:,} users; time range "
        f"{html.escape(str(summary['time_range']))}. Funnel steps: {html.escape(str(summary['steps']))} "
        f"(other event types are counted outside the funnel). Days are calendar days in "
        f"{html.escape(str(summary['day_timezone']))}.</p>",
        f"<ul>{notes}</ul>" if notes else "",
        "<h2>Reconciliation: every event in exactly one step</h2>",
        _table({**{f"events in step {k}": v for k, v in rec["events_per_step"].items()},
                "sum of the steps": rec["sum_of_steps"], "events in the prepared data": rec["manifest_events"],
                "breakdowns checked (each event in one row)": ", ".join(rec["breakdowns_checked"])}),
        *sections,
    ]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Behaviour analytics</title><style>"
            "body{font-family:sans-serif;max-width:1400px;margin:auto} td,th{padding:2px 8px;font-size:13px;text-align:left}"
            " tr:nth-child(even){background:#f4f4f4}</style></head><body>")
    (folder / "report.html").write_text(page + "\n".join(body) + "</body></html>\n")
    return [*written, "report.html"]
