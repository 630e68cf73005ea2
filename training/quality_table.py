"""The quality table of finished runs (``scripts/bench_quality.py``): model x dataset x metric, per protocol.

A run's figures mean something only under its protocol, so runs are keyed by it and never compared or
picked across it. The key (``protocol_key``) is read from the run's ``metrics.json`` ``protocol``:

- ``split``: ``loo``, ``temporal`` or ``shop`` (``features.splits``);
- ``history``: ``discovery`` (history removed from the ranking, target-blind) or ``repeat-aware``;
- ``users``: ``all`` or ``max_users=N`` (smoke runs);
- ``ties``: ``expected`` (``training.metrics``); runs written before it (optimistic ties, a history mask
  that kept the target) are keyed ``legacy`` and never mixed with the others.

Per (protocol, dataset, model) the run with the best ``valid/ndcg@10`` is reported (``best_valid``:
selection on validation only) or the newest (``latest``); test figures never choose.

Beside accuracy, each row shows the beyond-accuracy figures of the test top-10 lists (``training.metrics``):
``ild@10`` (intra-list diversity by category), ``novelty@10`` (mean self-information, bits), ``coverage@10``
(catalogue coverage), ``tail_share@10`` (impressions to items outside the top 20 % by training count) and
``gini@10`` (Gini index of item exposure). A run written before they existed shows ``-``. For the ranker
(protocol split ``... (re-rank of N candidates)``) they are of its re-ranked top-10; the JSON also carries the
same figures of the retrieval order of the same candidates (``test/retrieval_ild@10``, ...), so the effect of
re-ranking on diversity, novelty and exposure can be read beside ``test/retrieval_ndcg@10``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BEYOND = ["test/ild@10", "test/novelty@10", "test/coverage@10", "test/tail_share@10", "test/gini@10"]
RETRIEVAL_BEYOND = [c.replace("test/", "test/retrieval_") for c in [*BEYOND, "test/category_known@10"]]  # the ranker
COLUMNS = ["test/ndcg@10", "test/hr@10", "test/recall@10", "test/ndcg@20", "test/recall@20", "test/hr@50",
           "test/hr@100", "test/mrr", "test/coverage@10", "test/pop@10", "test/repeat_share", "valid/ndcg@10",
           "test/retrieval_ndcg@10", "test/ild@10", "test/novelty@10", "test/tail_share@10", "test/gini@10",
           "test/category_known@10", *RETRIEVAL_BEYOND]
SHOWN = ["test/ndcg@10", "test/hr@10", "test/recall@10", "test/ndcg@20", "test/mrr", "valid/ndcg@10",
         "test/retrieval_ndcg@10", *BEYOND]


class MixedProtocolsError(ValueError):
    """Runs of different protocols were asked to be compared in one table."""


@dataclass(frozen=True, order=True)
class ProtocolKey:
    split: str
    history: str
    users: str
    ties: str

    def __str__(self) -> str:
        return f"split={self.split} history={self.history} users={self.users} ties={self.ties}"


def protocol_key(metrics: dict) -> ProtocolKey:
    """The protocol a run's figures were computed under (see the module docstring)."""
    p = metrics.get("protocol") or {}
    ex = p.get("exclude_history")
    history = "discovery" if ex is True else "repeat-aware" if ex is False else "unknown"
    users = "all" if p.get("max_users") in (None, "null") else f"max_users={p['max_users']}"
    ties = "expected" if str(p.get("ties", "")).startswith("expected") else "legacy"
    split = str(p.get("split", "unknown"))
    if p.get("holdout_shift"):   # every split moved back: its "test" targets are the real validation targets
        split += f" (shifted {int(p['holdout_shift'])})"
    if p.get("candidates"):   # the ranker: a re-ranking of the retriever's top candidates, not a full ranking
        split += f" (re-rank of {int(p['candidates'])} candidates)"
    return ProtocolKey(split, history, users, ties)


def collect(runs: Path) -> list[dict]:
    """Every finished run under ``runs/<data>/<model>/<run>/metrics.json`` with its protocol key."""
    rows = []
    for f in sorted(runs.glob("*/*/*/metrics.json")):
        if any(part.startswith(".") for part in f.relative_to(runs).parts):
            continue
        try:
            m = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "test/ndcg@10" not in m:
            continue
        data, model, run = f.parent.parent.parent.name, f.parent.parent.name, f.parent.name
        rows.append({"data": m.get("data", data), "model": m.get("model", model), "run": run, "path": str(f.parent),
                     "protocol": protocol_key(m), **{c: m.get(c) for c in COLUMNS}})
    return rows


def select(rows: list[dict], how: str = "best_valid", only: ProtocolKey | None = None) -> list[dict]:
    """One run per (protocol, dataset, model); ``only``: keep that protocol's runs only."""
    if how not in ("best_valid", "latest"):
        raise ValueError(f"select must be 'best_valid' or 'latest', got {how!r}")
    best: dict[tuple, dict] = {}
    counts: dict[tuple, int] = {}
    for r in rows:
        if only is not None and r["protocol"] != only:
            continue
        key = (r["protocol"], r["data"], r["model"])
        counts[key] = counts.get(key, 0) + 1
        cur = best.get(key)
        if how == "latest":
            better = cur is None or r["run"] > cur["run"]
        else:
            better = cur is None or (r["valid/ndcg@10"] or -1) > (cur["valid/ndcg@10"] or -1)
        if better:
            best[key] = r
    return [{**best[k], "n_runs": counts[k]} for k in sorted(best)]


def compare(rows: list[dict]) -> None:
    """Refuse a comparison of runs computed under different protocols (raises ``MixedProtocolsError``)."""
    keys = sorted({r["protocol"] for r in rows})
    if len(keys) > 1:
        raise MixedProtocolsError("runs of different protocols cannot be compared: " + "; ".join(map(str, keys)))


def render(table: list[dict]) -> list[str]:
    """Text lines: one block per protocol, a row per dataset/model."""
    lines = []
    for key in sorted({r["protocol"] for r in table}):
        block = [r for r in table if r["protocol"] == key]
        compare(block)
        lines.append(f"protocol: {key}")
        names = [c.replace("test/", "") for c in SHOWN]
        widths = [max(10, len(n) + 2) for n in names]
        lines.append(f"  {'data':<16}{'model':<12}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths)) + f"{'runs':>6}")
        for r in block:
            cells = "".join(f"{r[c]:>{w}.4f}" if isinstance(r[c], (int, float)) else f"{'-':>{w}}"
                            for c, w in zip(SHOWN, widths))
            lines.append(f"  {r['data']:<16}{r['model']:<12}{cells}{r['n_runs']:>6}")
    return lines


def results(table: list[dict]) -> dict:
    """``{protocol: {"data/model": {metric: value, "run": path}}}`` for the JSON line."""
    out: dict[str, dict] = {}
    for r in table:
        out.setdefault(str(r["protocol"]), {})[f"{r['data']}/{r['model']}"] = (
            {c: r[c] for c in COLUMNS if r[c] is not None} | {"run": r["path"], "n_runs": r["n_runs"]})
    return out


def parse_key(text: str) -> ProtocolKey:
    """``split=shop,history=discovery[,users=all][,ties=expected]`` -> ``ProtocolKey``."""
    parts = dict(p.split("=", 1) for p in text.replace(" ", ",").split(",") if p)
    unknown = set(parts) - {"split", "history", "users", "ties"}
    if unknown or "split" not in parts or "history" not in parts:
        raise ValueError(f"--protocol {text!r}: expected split=...,history=discovery|repeat-aware[,users=...][,ties=...]")
    if parts["history"] not in ("discovery", "repeat-aware"):
        raise ValueError(f"--protocol history={parts['history']!r}: must be discovery or repeat-aware")
    return ProtocolKey(parts["split"], parts["history"], parts.get("users", "all"), parts.get("ties", "expected"))
