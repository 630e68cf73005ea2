"""``python -m features.summary data=<name>``: a readable summary of a prepared dataset's manifest.

Prints input rows, events, users, items, orders, time range, what each cleaning rule dropped, the
quarantine reasons, the split sizes, the reconciliation check and the pseudonymisation key's fingerprint.
"""
from __future__ import annotations

import sys
from typing import Any

from features.processed import ProcessedDataError, load_manifest, processed_dir


def summarise(manifest: dict) -> str:
    """The manifest as a short table (text)."""
    m = manifest
    lines = [f"dataset {m['name']} ({m.get('adapter')}, time: {m.get('time_kind', '-')})"]
    for f, st in (m.get("input_stats") or {}).items():
        lines.append(f"  input {f}: " + ", ".join(f"{k} {v:,}" for k, v in st.items()))
    lines.append(f"  input rows      {m['n_input_rows']:>12,}")
    lines.append(f"  events          {m.get('n_events', 0):>12,}   {m.get('event_counts', {})}")
    lines.append(f"  quarantined     {m['n_quarantined']:>12,}   {m.get('quarantine_by_reason', {})}")
    for rule, n in sorted((m.get("n_dropped") or {}).items()):
        lines.append(f"  dropped: {rule:<22s}{n:>9,}")
    total = m.get("n_events", 0) + m["n_quarantined"] + sum((m.get("n_dropped") or {}).values())
    rows = m.get("n_rows")  # tables-only datasets
    ok = (total == m["n_input_rows"]) if rows is None else (rows + m["n_quarantined"] == m["n_input_rows"])
    lines.append(f"  reconciliation  {'OK' if ok else 'FAILED'}: input = events + quarantined + dropped")
    if m.get("n_users") is not None:
        lines.append(f"  users {m['n_users']:,}, items {m['n_items']:,}, orders {m.get('n_orders') or '-'}")
    if m.get("time_range"):
        lines.append(f"  time {m['time_range'][0]} → {m['time_range'][1]}")
    for kind, c in (m.get("splits") or {}).items():
        lines.append(f"  split {kind:<8s} " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
    for name, n in (m.get("tables") or {}).items():
        lines.append(f"  table {name}: {n:,} rows")
    if m.get("pseudo_key_fingerprint"):
        lines.append(f"  pseudonymisation key fingerprint {m['pseudo_key_fingerprint']} ({m.get('pseudonymisation_key')})")
    return "\n".join(lines)


def run(cfg: Any) -> str:
    return summarise(load_manifest(processed_dir(cfg)))


def main() -> None:
    from pathlib import Path

    import hydra

    from features.prepare import check_data_name

    check_data_name(sys.argv[1:], Path(__file__).resolve().parent.parent / "conf")

    @hydra.main(config_path="../conf", config_name="config", version_base=None)
    def _main(cfg: Any) -> None:
        try:
            print(run(cfg))
        except ProcessedDataError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    _main()


if __name__ == "__main__":
    main()
