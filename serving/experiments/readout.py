"""The readout of an experiment: exposures joined with events, per-variant figures and comparisons.

Inputs: the exposure log (``exposures.jsonl``), the event log (``serve.store.event_log``: CSV
``user_key,item_key,event,ts,received_at,event_id``), the attribution log (``attributions.jsonl``:
``event_id -> request_id, position``), optional item prices (revenue of a purchase = the item's price)
and optional pre-period covariates per user. Each line is parsed on its own: a malformed one (not
JSON / CSV, a missing or mistyped field, an unparseable time, an unknown variant or event type, a
repeated request id) is counted and written to the quarantine with its reason; the readout goes on.

The analysis unit is the assignment unit (user key, or session id of an anonymous visitor). A unit
seen in two variants (a changed salt or split) is left out and counted (``crossover_units``). An
event counts for a unit when it names one of the unit's responses (attribution by ``request_id``),
or else when its user is one of the unit's users and its time lies within
``primary_metric.window_hours`` after one of the unit's exposures.

Per unit: exposures, impressions (items shown), clicks, purchases, converted (0/1), revenue, and the
CUPED covariate (the
given pre-period value, else the unit's events in the ``pre_period_days`` before its first
exposure). Per variant: users, exposures, clicks, conversions, revenue, CTR (clicks per impression,
a ratio over units), conversion rate (Wilson), revenue per user (t), each with a 95 % interval; per
treatment variant against the control: difference, relative lift (delta method) and p-value of each
metric, CUPED-adjusted primary metric, the always-valid p-value. Over the experiment: SRM
chi-square against the weights, the planned sample size from the minimum detectable effect and a
warning when read before it, guardrails (p99 latency, empty and degraded answers).
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from features.schema import EVENT_TYPES
from serving import stats
from serving.experiments.spec import ExperimentSpec
from serving.store import LOG_COLUMNS

CLICK_EVENTS = frozenset({"click"})
PURCHASE_EVENTS = frozenset({"purchase"})


# ------------------------------------------------------------------------------------------------ parsing
@dataclass
class Quarantine:
    """Rejected lines with their reason (and counts per source and reason)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def add(self, source: str, line_no: int, reason: str, text: str) -> None:
        self.counts[(source, reason.split(":")[0])] += 1
        self.rows.append({"source": source, "line": line_no, "reason": reason, "text": text[:500]})

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (src, _), n in self.counts.items():
            out[src] = out.get(src, 0) + n
        return out


def _epoch(value: Any, name: str) -> float:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected an ISO 8601 string, got {type(value).__name__}")
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: {value[:40]!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    ts = t.timestamp()
    if not math.isfinite(ts):
        raise ValueError(f"{name}: not a finite time")
    return ts


def _read_lines(path: str | Path | None) -> Iterable[tuple[int, str]]:
    if path is None or not Path(path).exists():
        return []
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n")  # a torn last line (writer still busy) is not read
    text = data[: end + 1].decode("utf-8", errors="replace")
    return enumerate(text.split("\n")[:-1], start=1)


def parse_exposures(path: str | Path | None, spec: ExperimentSpec, q: Quarantine) -> pd.DataFrame:
    names = {v.name for v in spec.variants}
    rows, seen = [], set()
    for no, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict):
                raise ValueError("not a JSON object")
            if r.get("experiment") != spec.name:
                if not isinstance(r.get("experiment"), str):
                    raise ValueError("experiment: missing or not a string")
                continue
            for f in ("request_id", "user_key", "variant"):
                if not isinstance(r.get(f), str) or not r[f]:
                    raise ValueError(f"{f}: missing or not a non-empty string")
            unit = r.get("unit") or r["user_key"]
            if not isinstance(unit, str):
                raise ValueError("unit: not a string")
            if r["variant"] not in names:
                raise ValueError(f"variant: {r['variant']!r} is not a variant of {spec.name}")
            items = r.get("items")
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError("items: missing or not a list of strings")
            ts = _epoch(r.get("ts"), "ts")
            if r["request_id"] in seen:
                raise ValueError(f"request_id: {r['request_id']!r} repeated")
            seen.add(r["request_id"])
            lat = r.get("latency_ms")
            lat = float(lat) if isinstance(lat, (int, float)) and not isinstance(lat, bool) else math.nan
            rows.append((r["request_id"], r["user_key"], unit, r["variant"], ts, tuple(items), len(items), lat,
                         r.get("degraded") is not None))
        except (ValueError, TypeError, OverflowError) as e:
            q.add("exposures", no, str(e) if not isinstance(e, json.JSONDecodeError) else f"not JSON: {e}", line)
    return pd.DataFrame(rows, columns=["request_id", "user_key", "unit", "variant", "ts", "items", "n_items",
                                       "latency_ms", "degraded"])


def parse_events(path: str | Path | None, q: Quarantine) -> pd.DataFrame:
    rows = []
    header = ",".join(LOG_COLUMNS)
    for no, line in _read_lines(path):
        if not line or line == header:
            continue
        try:
            row = next(csv.reader([line]))
            if len(row) != len(LOG_COLUMNS):
                raise ValueError(f"fields: {len(row)} fields, expected {len(LOG_COLUMNS)}")
            user, item, event, ts, _, event_id = row
            if not user or not item:
                raise ValueError("user_key/item_key: empty")
            if event not in EVENT_TYPES:
                raise ValueError(f"event: unknown type {event!r}")
            rows.append((user, item, event, _epoch(ts, "ts"), event_id))
        except (csv.Error, StopIteration, ValueError, OverflowError) as e:
            q.add("events", no, str(e), line)
    return pd.DataFrame(rows, columns=["user_key", "item_key", "event", "ts", "event_id"])


def parse_attributions(path: str | Path | None, q: Quarantine) -> pd.DataFrame:
    rows = []
    for no, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not isinstance(r, dict) or not isinstance(r.get("event_id"), str) or not isinstance(
                    r.get("request_id"), str):
                raise ValueError("event_id/request_id: missing or not strings")
            pos = r.get("position")
            if pos is not None and (not isinstance(pos, int) or isinstance(pos, bool) or pos < 0):
                raise ValueError(f"position: {pos!r} is not a non-negative integer")
            rows.append((r["event_id"], r["request_id"], -1 if pos is None else pos))
        except (ValueError, TypeError) as e:
            q.add("attributions", no, str(e) if not isinstance(e, json.JSONDecodeError) else f"not JSON: {e}", line)
    return pd.DataFrame(rows, columns=["event_id", "request_id", "position"]).drop_duplicates("event_id")


# ------------------------------------------------------------------------------------------------ units
def unit_table(exposures: pd.DataFrame, events: pd.DataFrame, attributions: pd.DataFrame, spec: ExperimentSpec,
               prices: Mapping[str, float] | None = None, pre_values: Mapping[str, float] | None = None
               ) -> tuple[pd.DataFrame, int]:
    """One row per unit: variant, first exposure, exposures, clicks, purchases, converted, revenue, pre.

    Returns the table and the number of crossover units left out."""
    cols = ["unit", "variant", "first_ts", "exposures", "impressions", "clicks", "purchases", "converted", "revenue",
            "pre"]
    if exposures.empty:
        return pd.DataFrame(columns=cols), 0
    nvar = exposures.groupby("unit")["variant"].nunique()
    crossover = set(nvar.index[nvar > 1])
    ex = exposures[~exposures.unit.isin(crossover)] if crossover else exposures
    units = ex.groupby("unit").agg(variant=("variant", "first"), first_ts=("ts", "min"), exposures=("ts", "size"),
                                   impressions=("n_items", "sum"))
    window = spec.primary_metric.window_hours * 3600.0

    ev = events
    # 1. events that name a response of this experiment
    att = attributions.merge(ex[["request_id", "unit"]], on="request_id", how="inner")
    linked = ev.merge(att[["event_id", "unit"]], on="event_id", how="inner")
    linked_ids = set(linked.event_id)
    # 2. the other events of the exposed users, within the window after one of their unit's exposures:
    #    purchases of any item (conversion within the window), clicks on an item that exposure showed
    rest = ev[~ev.event_id.isin(linked_ids) & ev.user_key.isin(set(ex.user_key))] if len(ev) else ev
    in_window = [pd.DataFrame(columns=["event_id", "unit"])]
    if len(rest):
        exp_ts = ex[["user_key", "unit", "ts", "items"]].rename(columns={"ts": "exp_ts"})
        buys = rest[rest.event.isin(PURCHASE_EVENTS)][["event_id", "user_key", "ts"]].merge(
            exp_ts.drop(columns="items"), on="user_key")
        clicks = rest[rest.event.isin(CLICK_EVENTS)][["event_id", "user_key", "item_key", "ts"]].merge(
            exp_ts.explode("items").rename(columns={"items": "item_key"}), on=["user_key", "item_key"])
        for pairs in (buys, clicks):
            hit = pairs[(pairs.ts >= pairs.exp_ts) & (pairs.ts <= pairs.exp_ts + window)]
            in_window.append(hit.drop_duplicates("event_id")[["event_id", "unit"]])
    counted = pd.concat([linked[["event_id", "unit"]], *in_window], ignore_index=True).merge(
        ev[["event_id", "item_key", "event"]], on="event_id")
    price = counted.item_key.map(prices).fillna(0.0).astype(float) if prices else pd.Series(0.0, index=counted.index)
    counted = counted.assign(click=counted.event.isin(CLICK_EVENTS), purchase=counted.event.isin(PURCHASE_EVENTS))
    counted = counted.assign(revenue=np.where(counted.purchase, price, 0.0))
    per = counted.groupby("unit").agg(clicks=("click", "sum"), purchases=("purchase", "sum"),
                                      revenue=("revenue", "sum"))
    units = units.join(per, how="left").fillna({"clicks": 0, "purchases": 0, "revenue": 0.0})
    units["converted"] = (units.purchases > 0).astype(int)
    # CUPED covariate
    if pre_values is not None:
        first_user = ex.sort_values("ts").groupby("unit")["user_key"].first()
        units["pre"] = first_user.reindex(units.index).map(pre_values).fillna(0.0).astype(float)
    elif len(ev):
        pre_s = spec.pre_period_days * 86400.0
        pairs = ev[["user_key", "ts"]].merge(ex.groupby(["unit", "user_key"]).ts.min().rename("first").reset_index(),
                                             on="user_key")
        pre = pairs[(pairs.ts < pairs["first"]) & (pairs.ts >= pairs["first"] - pre_s)].groupby("unit").size()
        units["pre"] = pre.reindex(units.index).fillna(0).astype(float)
    else:
        units["pre"] = 0.0
    units = units.reset_index()
    for c in ("clicks", "purchases", "exposures", "impressions"):
        units[c] = units[c].astype(int)
    return units[cols], len(crossover)


# ------------------------------------------------------------------------------------------------ figures
def _ci(pair: tuple[float, float]) -> list[float]:
    return [float(pair[0]), float(pair[1])]


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return _clean(float(x))
    return x


def variant_figures(u: pd.DataFrame, alpha: float = 0.05) -> dict[str, Any]:
    n = len(u)
    conv = int(u.converted.sum())
    rev = stats.MeanStats.of(u.revenue.to_numpy(float))
    ctr = stats.ratio_stats(u.clicks.to_numpy(float), u.impressions.to_numpy(float))
    z = stats.z_value(alpha)
    return {
        "users": n, "exposures": int(u.exposures.sum()), "impressions": int(u.impressions.sum()),
        "clicks": int(u.clicks.sum()),
        "conversions": conv, "purchases": int(u.purchases.sum()), "revenue": float(u.revenue.sum()),
        "ctr": ctr.ratio, "ctr_ci": [ctr.ratio - z * ctr.se, ctr.ratio + z * ctr.se],
        "conversion_rate": conv / n if n else math.nan,
        "conversion_rate_ci": _ci(stats.wilson_interval(conv, n, alpha)) if n else [math.nan, math.nan],
        "revenue_per_user": rev.mean, "revenue_per_user_ci": _ci(stats.mean_interval(rev, alpha)),
    }


def compare(t: pd.DataFrame, c: pd.DataFrame, metric: str, alpha: float = 0.05) -> dict[str, Any]:
    """Treatment ``t`` against control ``c`` on one metric: diff, its CI, p-value, lift and its CI."""
    if metric == "conversion":
        xt, xc = int(t.converted.sum()), int(c.converted.sum())
        diff = (xt / len(t) - xc / len(c)) if len(t) and len(c) else math.nan
        ci = stats.newcombe_interval(xt, len(t), xc, len(c), alpha)
        _, p = stats.two_proportion_test(xt, len(t), xc, len(c))
        lift = stats.relative_lift(stats.MeanStats.of(t.converted), stats.MeanStats.of(c.converted), alpha)
    elif metric == "revenue_per_user":
        w = stats.welch_test(stats.MeanStats.of(t.revenue), stats.MeanStats.of(c.revenue), alpha)
        diff, ci, p = w.diff, w.ci, w.p_value
        lift = stats.relative_lift(stats.MeanStats.of(t.revenue), stats.MeanStats.of(c.revenue), alpha)
    elif metric == "ctr":
        diff, ci, p, lift = stats.ratio_comparison(stats.ratio_stats(t.clicks, t.impressions),
                                                   stats.ratio_stats(c.clicks, c.impressions), alpha)
    else:
        raise ValueError(f"metric: unknown {metric!r}")
    return {"metric": metric, "diff": diff, "diff_ci": _ci(ci), "p_value": p, "lift": lift.lift,
            "lift_ci": _ci(lift.ci)}


def _primary_values(u: pd.DataFrame, metric: str) -> np.ndarray:
    return (u.converted if metric == "conversion" else u.revenue if metric == "revenue_per_user" else
            u.clicks / u.impressions.clip(lower=1)).to_numpy(float)


def cuped_comparison(units: pd.DataFrame, variant: str, control: str, metric: str, alpha: float = 0.05
                     ) -> dict[str, Any]:
    """The primary metric adjusted by the pre-period covariate (theta pooled over all units), compared
    as the unadjusted one (Welch difference, delta-method lift); ``variance_reduction`` is
    ``1 - var(adjusted) / var(raw)`` over all units (``corr(y, pre)**2``)."""
    y_all, x_all = _primary_values(units, metric), units.pre.to_numpy(float)
    theta = stats.cuped_theta(y_all, x_all)
    adj = stats.cuped_adjust(y_all, x_all, theta, float(x_all.mean()) if len(x_all) else 0.0)
    a = stats.MeanStats.of(adj[(units.variant == variant).to_numpy()])
    b = stats.MeanStats.of(adj[(units.variant == control).to_numpy()])
    w = stats.welch_test(a, b, alpha)
    lift = stats.relative_lift(a, b, alpha)
    v_raw = float(np.var(y_all, ddof=1)) if len(y_all) > 1 else math.nan
    reduction = 1 - float(np.var(adj, ddof=1)) / v_raw if v_raw and not math.isnan(v_raw) else math.nan
    return {"theta": theta, "diff": w.diff, "diff_ci": _ci(w.ci), "p_value": w.p_value, "lift": lift.lift,
            "lift_ci": _ci(lift.ci), "variance_reduction": reduction}


def planned_sample_size(spec: ExperimentSpec) -> int:
    m = spec.mde
    if spec.primary_metric.name == "revenue_per_user":
        return stats.sample_size_means(m.baseline_sd, m.baseline * m.relative, m.alpha, m.power)
    return stats.sample_size_proportions(m.baseline, m.relative, m.alpha, m.power)


def guardrails(ex: pd.DataFrame, spec: ExperimentSpec) -> dict[str, Any]:
    g = spec.guardrails
    out = {}
    for v, e in ex.groupby("variant"):
        lat = e.latency_ms.dropna()
        p99 = float(np.percentile(lat, 99)) if len(lat) else math.nan
        empty = float((e.n_items == 0).mean()) if len(e) else math.nan
        degraded = float(e.degraded.mean()) if len(e) else math.nan
        out[v] = {"latency_p99_ms": p99, "empty_rate": empty, "degraded_rate": degraded,
                  "ok": bool((math.isnan(p99) or p99 <= g.latency_p99_ms) and empty <= g.max_empty_rate
                             and degraded <= g.max_degraded_rate)}
    return out


def analyse(units: pd.DataFrame, spec: ExperimentSpec, *, exposures: pd.DataFrame | None = None,
            now: dt.datetime | None = None, crossover: int = 0) -> dict[str, Any]:
    """Every figure of the readout from the unit table (see the module docstring)."""
    alpha = spec.mde.alpha
    metric = spec.primary_metric.name
    now = now or dt.datetime.now(dt.timezone.utc)
    names = [v.name for v in spec.variants]
    by = {v: units[units.variant == v] for v in names}
    per_variant = {v: variant_figures(by[v], 0.05) for v in names}
    control = spec.control
    comparisons = {}
    for v in names:
        if v == control:
            continue
        comparisons[v] = {m: compare(by[v], by[control], m, 0.05) for m in ("conversion", "ctr", "revenue_per_user")}
        comparisons[v]["cuped"] = cuped_comparison(units, v, control, metric, 0.05)
        prim = comparisons[v][metric]
        tau = spec.mde.relative * spec.mde.baseline
        se2 = ((prim["diff_ci"][1] - prim["diff_ci"][0]) / (2 * stats.z_value(0.05))) ** 2
        comparisons[v]["always_valid_p_value"] = stats.msprt_p_value(prim["diff"], se2, tau * tau)
    chi2, srm_p = stats.srm_test([len(by[v]) for v in names], [spec.variant(v).weight for v in names])
    planned = planned_sample_size(spec)
    warning = stats.horizon_warning([len(by[v]) for v in names], planned, ended=now >= spec.end)
    first = next(v for v in names if v != control)
    prim = comparisons[first][metric]
    result = {
        "experiment": spec.name, "primary_metric": metric, "control": control, "treatment": first,
        "variants": per_variant, "comparisons": comparisons,
        "lift": prim["lift"], "ci_low": prim["lift_ci"][0], "ci_high": prim["lift_ci"][1],
        "p_value": prim["p_value"], "srm_chi2": chi2, "srm_p_value": srm_p, "srm_flag": srm_p < stats.SRM_ALPHA,
        "planned_users_per_variant": planned, "horizon_warning": warning, "crossover_units": crossover,
        "read_at": now.isoformat(timespec="seconds"),
    }
    if exposures is not None:
        result["guardrails"] = guardrails(exposures, spec)
    return _clean(result)


@dataclass
class Readout:
    result: dict[str, Any]
    units: pd.DataFrame
    exposures: pd.DataFrame
    quarantine: Quarantine


def read_experiment(spec: ExperimentSpec, *, exposure_log: str | Path | None, event_log: str | Path | None,
                    attribution_log: str | Path | None = None, prices: Mapping[str, float] | None = None,
                    pre_values: Mapping[str, float] | None = None, now: dt.datetime | None = None) -> Readout:
    """Parse the logs (malformed lines quarantined) and analyse them."""
    q = Quarantine()
    ex = parse_exposures(exposure_log, spec, q)
    ev = parse_events(event_log, q)
    att = parse_attributions(attribution_log, q)
    units, crossover = unit_table(ex, ev, att, spec, prices, pre_values)
    result = analyse(units, spec, exposures=ex, now=now, crossover=crossover)
    result["quarantined"] = q.summary()
    result["n_lines"] = {"exposures": int(len(ex)), "events": int(len(ev)), "attributions": int(len(att))}
    return Readout(result, units, ex, q)
