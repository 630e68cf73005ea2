"""Funnel steps and ordered funnels over the prepared events (pure functions: frames in, frames out).

Every event gets exactly one *step*: the funnel step its type maps to (``view``, ``cart``,
``purchase``; by default ``click`` counts as a view), or ``other:<type>`` for types outside the
funnel (``fav``, ``return``, ...). Step counts therefore always add up to the number of events, and
every breakdown (by day, category, segment) carries its own event counts per step so that
``check_breakdown`` can prove each event was counted once in it.

An *ordered funnel* is counted over units (a user, a (user, item) pair, a (user, day) ...): a unit
reaches ``view`` when it has a view, ``cart`` when it has a cart at or after its first view, and
``purchase`` when it has a purchase at or after that cart. Units that buy without a cart are counted
separately (``purchased_after_view``), as are units with a cart or a purchase in any order.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

STEPS = ("view", "cart", "purchase")
OTHER = "other:"   # prefix of the step of an event type outside the funnel

FUNNEL_COLUMNS = ("units", "viewed", "carted_after_view", "purchased_after_cart", "purchased_after_view",
                  "with_cart", "with_purchase")


class ReconciliationError(RuntimeError):
    """Counts that do not add up to the events they were computed from."""


def step_map(steps: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """``{event type: step}`` from ``{step: [event types]}``; a type in two steps or an unknown step is an error."""
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"analytics.steps: unknown step {unknown[0]!r}; the funnel steps are {list(STEPS)}")
    out: dict[str, str] = {}
    for step, types in steps.items():
        for t in types:
            if t in out:
                raise ValueError(f"analytics.steps: event type {t!r} is in two steps ({out[t]!r} and {step!r})")
            out[str(t)] = step
    return out


def assign_steps(event: pd.Series, mapping: Mapping[str, str]) -> pd.Series:
    """The step of each event: its mapped step, else ``other:<type>``."""
    mapped = event.map(dict(mapping))
    return mapped.fillna(OTHER + event.astype(str)).astype(str)


def step_counts(step: pd.Series) -> dict[str, int]:
    """Events per step: the funnel steps first (0 when absent), then ``other:*`` sorted."""
    vc = step.value_counts()
    out = {s: int(vc.get(s, 0)) for s in STEPS}
    out.update({k: int(vc[k]) for k in sorted(vc.index) if k not in STEPS})
    return out


def reconcile(counts: Mapping[str, int], n_events: int, type_counts: Mapping[str, int],
              mapping: Mapping[str, str]) -> dict[str, int]:
    """Check the step counts against the events: their sum is ``n_events`` and each step holds exactly
    the events of its types in ``type_counts`` (the prepared manifest's ``event_counts``, counted
    independently at preparation). Returns the expected counts; raises ``ReconciliationError``."""
    total = sum(counts.values())
    if total != n_events:
        raise ReconciliationError(f"step counts add up to {total:,} but there are {n_events:,} events")
    expected: dict[str, int] = {s: 0 for s in STEPS}
    for t, n in type_counts.items():
        s = mapping.get(t, OTHER + t)
        expected[s] = expected.get(s, 0) + int(n)
    if sum(expected.values()) != n_events:
        raise ReconciliationError(f"the event counts per type add up to {sum(expected.values()):,}, "
                                  f"not to the {n_events:,} events")
    for s in [*STEPS, *sorted((set(expected) | set(counts)) - set(STEPS))]:
        if int(counts.get(s, 0)) != int(expected.get(s, 0)):
            raise ReconciliationError(f"step {s!r}: {counts.get(s, 0):,} events counted but the events hold "
                                      f"{expected.get(s, 0):,} of its types")
    return expected


def check_breakdown(name: str, table: pd.DataFrame, counts: Mapping[str, int]) -> None:
    """Every event in exactly one row of a breakdown: its ``events_<step>`` columns add up to ``counts``."""
    for s, n in counts.items():
        col = f"events_{s}"
        got = int(table[col].sum()) if col in table.columns else 0
        if got != int(n):
            raise ReconciliationError(f"breakdown by {name}: {got:,} {s} events in its rows, {n:,} in the data")


def _first(ev: pd.DataFrame, step: str, keys: list[str]) -> pd.Series:
    return ev.loc[ev["step"] == step].groupby(keys, sort=False, observed=True)["ts"].min()


def _first_after(ev: pd.DataFrame, step: str, keys: list[str], after: pd.Series) -> pd.Series:
    """Per unit of ``after``: the first ``step`` event at or after the unit's time in ``after``."""
    s = ev.loc[ev["step"] == step, [*keys, "ts"]]
    s = s.merge(after.rename("t0").reset_index(), on=keys, how="inner")
    s = s[s["ts"] >= s["t0"]]
    return s.groupby(keys, sort=False, observed=True)["ts"].min()


def _per_group(s: pd.Series | pd.Index, by: list[str]) -> pd.Series | int:
    idx = s.index if isinstance(s, pd.Series) else s
    if not by:
        return len(idx)
    return idx.to_frame(index=False).groupby(by, sort=False, observed=True).size()


def ordered_funnel(ev: pd.DataFrame, unit: Sequence[str], by: Sequence[str] = ()) -> pd.DataFrame:
    """Funnel counts per group of ``by`` (one row when empty), counted over the units ``by + unit``.

    ``ev`` needs the columns ``step``, ``ts``, and those of ``unit`` and ``by``. Columns: ``by``, then
    ``FUNNEL_COLUMNS``, then ``events_<step>`` (events per step in the group: the reconciliation)
    and the rates ``view_to_cart``, ``cart_to_purchase``, ``view_to_purchase``.
    """
    by, keys = list(by), [*by, *unit]
    in_funnel = ev[ev["step"].isin(STEPS)]
    units = in_funnel[keys].drop_duplicates()
    fv = _first(in_funnel, "view", keys)
    fc = _first_after(in_funnel, "cart", keys, fv)
    fp = _first_after(in_funnel, "purchase", keys, fc)
    fpv = _first_after(in_funnel, "purchase", keys, fv)
    parts = {"units": pd.MultiIndex.from_frame(units) if len(keys) > 1 else pd.Index(units[keys[0]], name=keys[0]),
             "viewed": fv, "carted_after_view": fc, "purchased_after_cart": fp, "purchased_after_view": fpv,
             "with_cart": _first(in_funnel, "cart", keys), "with_purchase": _first(in_funnel, "purchase", keys)}
    if by:
        events = ev.groupby([*by, "step"], sort=False, observed=True).size().unstack("step", fill_value=0)
        table = pd.DataFrame({k: _per_group(v, by) for k, v in parts.items()})
        table = table.join(events.add_prefix("events_"), how="outer").fillna(0)
        table = table.astype("int64").reset_index()
    else:
        row = {k: _per_group(v, by) for k, v in parts.items()}
        row.update({f"events_{k}": int(v) for k, v in ev["step"].value_counts().items()})
        table = pd.DataFrame([row])
    for s in STEPS:
        if f"events_{s}" not in table.columns:
            table[f"events_{s}"] = 0
    table["view_to_cart"] = _rate(table["carted_after_view"], table["viewed"])
    table["cart_to_purchase"] = _rate(table["purchased_after_cart"], table["carted_after_view"])
    table["view_to_purchase"] = _rate(table["purchased_after_view"], table["viewed"])
    return table


def _rate(num: pd.Series, den: pd.Series) -> pd.Series:
    return (num.astype("float64") / den.astype("float64").where(den > 0)).round(6)


def cart_abandonment(ev: pd.DataFrame) -> dict[str, float | int | None]:
    """Carted (user, item) pairs with no purchase of that item at or after the first cart, and users
    with a cart and no purchase of anything at or after their first cart. Carts near the end of the
    data have had less time to convert (the rate is an upper bound there)."""
    out: dict[str, float | int | None] = {}
    for name, keys in (("pairs", ["user_id", "item_id"]), ("users", ["user_id"])):
        fc = _first(ev, "cart", keys)
        bought = _first_after(ev, "purchase", keys, fc)
        n, k = len(fc), len(fc) - len(bought)
        out[f"carted_{name}"] = int(n)
        out[f"abandoned_{name}"] = int(k)
        out[f"abandonment_rate_{name}"] = round(k / n, 6) if n else None
    return out


QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def describe_hours(hours: pd.Series) -> dict[str, float | int | None]:
    """n, mean and quantiles (hours) of a duration distribution."""
    hours = hours.dropna()
    out: dict[str, float | int | None] = {"n": int(len(hours)), "mean_h": round(float(hours.mean()), 4) if len(hours) else None}
    for q in QUANTILES:
        out[f"p{int(q * 100)}_h"] = round(float(hours.quantile(q)), 4) if len(hours) else None
    return out


def view_to_purchase_hours(ev: pd.DataFrame) -> pd.Series:
    """Per (user, item) pair bought after a view: hours from the first view to the first purchase after it."""
    keys = ["user_id", "item_id"]
    fv = _first(ev, "view", keys)
    fp = _first_after(ev, "purchase", keys, fv)
    return ((fp - fv.reindex(fp.index)) / pd.Timedelta(hours=1)).rename("hours")


def purchase_occasions(ev: pd.DataFrame) -> pd.DataFrame:
    """One row per purchase occasion: (user, order_id), or (user, UTC day) for purchases without an
    order id (the profiles' rule for frequency), with its first time and the items bought."""
    p = ev.loc[ev["step"] == "purchase", ["user_id", "item_id", "ts", "order_id"]]
    order = p["order_id"].astype("string")
    day = p["ts"].dt.floor("D").dt.strftime("day:%Y-%m-%d").astype("string")
    p = p.assign(occasion=order.where(order.notna() & (order != ""), day))
    return p


def repeat_purchases(ev: pd.DataFrame) -> tuple[dict[str, float | int | None], pd.Series, pd.Series]:
    """Repeat-purchase figures, occasions per buyer (counts of 1, 2, ... buyers) and the hours from a
    buyer's first to second occasion."""
    p = purchase_occasions(ev)
    occ = p.groupby(["user_id", "occasion"], sort=False, observed=True)["ts"].min().reset_index()
    per_user = occ.groupby("user_id", sort=False)["ts"].agg(["size", "min"])
    buyers = len(per_user)
    repeat = int((per_user["size"] >= 2).sum())
    occ = occ.sort_values(["user_id", "ts"])
    second = occ[occ.groupby("user_id", sort=False).cumcount() == 1].set_index("user_id")["ts"]
    gap_h = ((second - per_user["min"].reindex(second.index)) / pd.Timedelta(hours=1)).rename("hours")
    pair_occ = p.drop_duplicates(["user_id", "item_id", "occasion"]).groupby(["user_id", "item_id"], sort=False).size()
    figures = {
        "buyers": int(buyers),
        "repeat_buyers": repeat,
        "repeat_purchase_rate": round(repeat / buyers, 6) if buyers else None,
        "occasions": int(len(occ)),
        "occasions_per_buyer": round(len(occ) / buyers, 4) if buyers else None,
        "bought_pairs": int(len(pair_occ)),
        "item_repeat_rate": round(float((pair_occ >= 2).mean()), 6) if len(pair_occ) else None,
    }
    dist = per_user["size"].clip(upper=10).value_counts().sort_index()
    return figures, dist, gap_h


def purchase_paths(ev: pd.DataFrame, gap_min: float, length: int) -> pd.DataFrame:
    """The most frequent event-type paths before a purchase.

    Sessions: a user's events with less than ``gap_min`` minutes between consecutive ones. Repeats of
    one type in a row collapse into one step (``view > view > cart`` is ``view > cart``). A checkout is
    a purchase step (one or more purchase events in a row); its path is the last ``length`` steps of
    the session before it (``start`` when the session has fewer, ``…`` when it had more). Columns:
    ``path``, ``checkouts``, ``share``.
    """
    e = ev[["user_id", "ts", "event"]]
    new_user = e["user_id"].ne(e["user_id"].shift())
    gap = e["ts"].diff() > pd.Timedelta(minutes=float(gap_min))
    session = (new_user | gap).cumsum()
    typ = e["event"].astype(str)
    run_start = new_user | gap | typ.ne(typ.shift())
    runs = pd.DataFrame({"session": session[run_start].to_numpy(), "typ": typ[run_start].to_numpy()})
    cols = []
    for k in range(1, length + 2):   # one more than shown: tells whether the path was cut
        same = runs["session"].shift(k).eq(runs["session"])
        runs[f"t{k}"] = runs["typ"].shift(k).where(same, "")
        cols.append(f"t{k}")
    checkouts = runs[runs["typ"] == "purchase"]
    if checkouts.empty:
        return pd.DataFrame({"path": pd.Series(dtype=str), "checkouts": pd.Series(dtype="int64"),
                             "share": pd.Series(dtype="float64")})
    counts = checkouts.groupby(cols, sort=False).size().reset_index(name="checkouts")

    def label(row: pd.Series) -> str:
        steps = [row[f"t{k}"] for k in range(length, 0, -1) if row[f"t{k}"]]
        head = "…" if row[f"t{length + 1}"] else "start"
        return " > ".join([head, *steps, "purchase"])

    counts["path"] = counts.apply(label, axis=1)
    out = counts.groupby("path", sort=False)["checkouts"].sum().sort_values(ascending=False, kind="stable")
    out = out.reset_index()
    out["share"] = (out["checkouts"] / out["checkouts"].sum()).round(6)
    return out
