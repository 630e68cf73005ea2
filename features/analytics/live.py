"""The live funnel of recommendations: exposure → click → purchase, from the service's own logs.

Reads three files by their documented formats (the data layer does not import the service):

- the event log (``serve.store.event_log``, CSV with the header
  ``user_key,item_key,event,ts,received_at,event_id``; see ``serving/store.py``);
- ``<log_dir>/exposures.jsonl``: one JSON object per recommendation response of an experiment
  (``request_id``, ``user_key``, ``unit``, ``experiment``, ``variant``, ``bundle``, ``items``, ``ts``, ...;
  see ``serving/experiments/exposure.py``);
- ``<log_dir>/attributions.jsonl``: ``event_id``, ``request_id``, ``position`` for events that named
  the response they answer.

Counts: responses (exposures), impressions (items shown), and the responses, impressions
(request, position) and users with an attributed click, with an attributed purchase, and with a
purchase at or after a click of the same response. Every event-log line lands in exactly one bucket
(attributed click / purchase / other type, attributed to a response not in the exposure log,
unattributed, malformed) and the buckets add up to the log's lines (``ReconciliationError`` otherwise).
A malformed JSON line is counted and skipped, never swallowing the lines after it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from features.analytics.funnels import ReconciliationError

EVENT_LOG_COLUMNS = ("user_key", "item_key", "event", "ts", "received_at", "event_id")
EXPOSURES_FILE = "exposures.jsonl"
ATTRIBUTIONS_FILE = "attributions.jsonl"


@dataclass
class LiveFunnel:
    summary: dict[str, Any]
    by_variant: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _count_lines(path: Path) -> int:
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def read_event_log(path: Path) -> tuple[pd.DataFrame, int]:
    """(valid events, malformed lines) of the service's event log; the header is checked."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split(",")
    if tuple(header) != EVENT_LOG_COLUMNS:
        raise ValueError(f"{path}: header {','.join(header)!r} is not the event log's "
                         f"{','.join(EVENT_LOG_COLUMNS)!r}")
    n_rows = _count_lines(path) - 1
    df = pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="skip", engine="c").fillna("")
    valid = (df["event_id"] != "") & (df["event"] != "")
    ts = pd.to_datetime(df["ts"], utc=True, errors="coerce", format="ISO8601")
    valid &= ts.notna()
    df = df.assign(ts=ts)[valid].reset_index(drop=True)
    return df, n_rows - len(df)


def _read_jsonl(path: Path, fields: Sequence[str]) -> tuple[list[dict], int]:
    rows, bad = [], 0
    if not path.exists():
        return rows, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if not isinstance(obj, dict) or any(k not in obj for k in fields):
                bad += 1
                continue
            rows.append(obj)
    return rows, bad


def live_funnel(event_log: Path, log_dir: Path, click_events: Sequence[str] = ("click",),
                purchase_events: Sequence[str] = ("purchase",)) -> LiveFunnel:
    """The exposure → click → purchase funnel of the responses in ``log_dir``'s exposure log."""
    notes: list[str] = []
    if not event_log.exists():
        raise FileNotFoundError(f"analytics.live.event_log: {event_log} not found (the service writes it: "
                                f"serve.store.event_log)")
    events, n_malformed = read_event_log(event_log)
    exp_rows, bad_exp = _read_jsonl(log_dir / EXPOSURES_FILE, ("request_id", "user_key", "experiment", "variant", "items"))
    att_rows, bad_att = _read_jsonl(log_dir / ATTRIBUTIONS_FILE, ("event_id", "request_id"))
    if not (log_dir / EXPOSURES_FILE).exists():
        notes.append(f"no exposure log at {log_dir / EXPOSURES_FILE}: the service logs exposures only for "
                     f"active experiments (serve.experiments.active); the live funnel is empty")
    exp = pd.DataFrame(exp_rows, columns=["request_id", "user_key", "experiment", "variant", "items"])
    exp = exp.drop_duplicates("request_id")
    exp["n_items"] = exp["items"].map(lambda v: len(v) if isinstance(v, list) else 0).astype("int64")
    att = pd.DataFrame(att_rows, columns=["event_id", "request_id", "position"]).drop_duplicates("event_id")

    ev = events.merge(att, on="event_id", how="left")
    known = ev["request_id"].isin(exp["request_id"])
    is_click, is_buy = ev["event"].isin(list(click_events)), ev["event"].isin(list(purchase_events))
    buckets = {
        "attributed_click": int((known & is_click).sum()),
        "attributed_purchase": int((known & is_buy).sum()),
        "attributed_other": int((known & ~is_click & ~is_buy).sum()),
        "attributed_unknown_response": int((ev["request_id"].notna() & ~known).sum()),
        "unattributed": int(ev["request_id"].isna().sum()),
        "malformed": int(n_malformed),
    }
    n_lines = len(events) + n_malformed
    if sum(buckets.values()) != n_lines:
        raise ReconciliationError(f"live funnel: the event buckets add up to {sum(buckets.values()):,} but the "
                                  f"event log has {n_lines:,} lines")

    a = ev[known].merge(exp[["request_id", "experiment", "variant"]], on="request_id")
    clicks, buys = a[a["event"].isin(list(click_events))], a[a["event"].isin(list(purchase_events))]
    first_click = clicks.groupby("request_id")["ts"].min()
    after = buys.merge(first_click.rename("t0").reset_index(), on="request_id")
    buys_after_click = after[after["ts"] >= after["t0"]]

    def per_variant(df: pd.DataFrame, name: str, col: str = "request_id") -> pd.Series:
        return df.groupby(["experiment", "variant"])[col].nunique().rename(name)

    def impressions(df: pd.DataFrame) -> pd.DataFrame:
        return df.dropna(subset=["position"]).drop_duplicates(["request_id", "position"])

    table = pd.concat([
        exp.groupby(["experiment", "variant"]).agg(responses=("request_id", "size"), impressions=("n_items", "sum"),
                                                     users=("user_key", "nunique")),
        per_variant(clicks, "clicked_responses"), impressions(clicks).groupby(["experiment", "variant"]).size().rename("clicked_impressions"),
        per_variant(clicks, "clicked_users", "user_key"),
        per_variant(buys, "purchased_responses"), per_variant(buys, "purchased_users", "user_key"),
        per_variant(buys_after_click, "purchased_after_click_responses"),
    ], axis=1).fillna(0).astype("int64").reset_index()
    if table.empty:
        table = pd.DataFrame(columns=["experiment", "variant", "responses", "impressions", "users", "clicked_responses",
                                      "clicked_impressions", "clicked_users", "purchased_responses", "purchased_users",
                                      "purchased_after_click_responses"])
    table["ctr"] = _rate(table["clicked_impressions"], table["impressions"])
    table["response_click_rate"] = _rate(table["clicked_responses"], table["responses"])
    table["click_to_purchase"] = _rate(table["purchased_after_click_responses"], table["clicked_responses"])

    totals = {
        "responses": int(len(exp)), "impressions": int(exp["n_items"].sum()), "users": int(exp["user_key"].nunique()),
        "clicked_responses": int(clicks["request_id"].nunique()),
        "clicked_impressions": int(len(impressions(clicks))),
        "clicked_users": int(clicks["user_key"].nunique()),
        "purchased_responses": int(buys["request_id"].nunique()),
        "purchased_users": int(buys["user_key"].nunique()),
        "purchased_after_click_responses": int(buys_after_click["request_id"].nunique()),
    }
    totals["ctr"] = _ratio(totals["clicked_impressions"], totals["impressions"])
    totals["response_click_rate"] = _ratio(totals["clicked_responses"], totals["responses"])
    totals["click_to_purchase"] = _ratio(totals["purchased_after_click_responses"], totals["clicked_responses"])
    totals["exposure_to_purchase"] = _ratio(totals["purchased_responses"], totals["responses"])
    summary = {"funnel": totals, "event_log_lines": int(n_lines), "events_by_bucket": buckets,
               "malformed_exposure_lines": int(bad_exp), "malformed_attribution_lines": int(bad_att),
               "attributions": int(len(att)),
               "files": {"event_log": str(event_log), "exposures": str(log_dir / EXPOSURES_FILE),
                         "attributions": str(log_dir / ATTRIBUTIONS_FILE)}}
    return LiveFunnel(summary, table, notes)


def _rate(num: pd.Series, den: pd.Series) -> pd.Series:
    return (num.astype("float64") / den.astype("float64").where(den > 0)).round(6)


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 6) if den else None
