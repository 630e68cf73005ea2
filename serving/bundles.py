"""Bundle versions from the command line: ``python -m serving.bundles list|promote|rollback``.

    python -m serving.bundles list [--verify] [--json]
    python -m serving.bundles promote VERSION
    python -m serving.bundles rollback [--to VERSION]
    python -m serving.bundles history

``--bundles DIR`` (default ``$SHOPREC_ARTIFACTS/bundles``, else ``artifacts/bundles``) is the folder of
versions the service reads. A running service follows ``LATEST`` within ``serve.watch_interval_s``, loading
the new version completely before swapping it in, so no request fails. ``list`` prints one row per version
(``*`` = serving) with its headline offline figure; ``--json`` prints the full dicts of
``serving.bundle.versions.list_versions``. Every command prints ONE JSON object as its last line. A
version that is unknown or fails its checksums is refused with one line naming it (exit code 2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from features.cli import run_or_exit
from serving.bundle import versions


def default_bundles_dir() -> Path:
    return Path(os.environ.get("SHOPREC_ARTIFACTS", "artifacts")) / "bundles"


def _headline(figs: dict[str, Any]) -> str:
    parts = []
    if "retriever" in figs:
        r = figs["retriever"]
        split = (r.get("protocol") or {}).get("split")
        if "ndcg@10" in r:
            parts.append(f"ndcg@10={r['ndcg@10']:.4f} ({split})")
    if "ranker" in figs and "ndcg@10" in figs["ranker"]:
        parts.append(f"ranker ndcg@10={figs['ranker']['ndcg@10']:.4f} (re-rank)")
    if "index" in figs:
        parts.append(f"index recall={figs['index']['recall']:.3f}")
    return ", ".join(parts) or "-"


def render(rows: list[dict[str, Any]]) -> list[str]:
    """The ``list`` table."""
    w = max([len("version"), *(len(r["version"]) for r in rows)])
    pw = max([len("parent"), *(len(str(r["parent"] or "-")) for r in rows)])
    lines = [f"  {'version':<{w}}  {'created':<25}  {'parent':<{pw}}  figures"]
    for r in rows:
        mark = "*" if r["serving"] else " "
        intact = "" if "intact" not in r else ("  [intact]" if r["intact"] else f"  [CORRUPT: {r['problem']}]")
        lines.append(f"{mark} {r['version']:<{w}}  {str(r['created'] or '-'):<25}  {str(r['parent'] or '-'):<{pw}}  "
                     f"{_headline(r['figures'])}{intact}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving.bundles", description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, default=None, help="folder of bundle versions (default: artifacts/bundles)")
    ap.add_argument("--actor", default=os.environ.get("USER", "cli"), help="who acts (recorded; no personal data)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="every version; * = serving")
    ls.add_argument("--verify", action="store_true", help="check every file's sha256 against its manifest")
    ls.add_argument("--json", action="store_true", help="print the full version dicts")
    pr = sub.add_parser("promote", help="serve VERSION (moves LATEST)")
    pr.add_argument("version")
    rb = sub.add_parser("rollback", help="serve the previous promoted version, or --to VERSION")
    rb.add_argument("--to", default=None)
    sub.add_parser("history", help="the promotions and rollbacks, oldest first")
    args = ap.parse_args(argv)
    root = args.bundles or default_bundles_dir()
    name = "serving.bundles"

    if args.cmd == "list":
        rows = run_or_exit(name, lambda: versions.list_versions(root, verify=args.verify))
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
        else:
            print("\n".join(render(rows)))
        serving = next((r["version"] for r in rows if r["serving"]), None)
        summary = {"bundles": str(root), "versions": len(rows), "serving": serving}
        if args.verify:
            summary["corrupt"] = [r["version"] for r in rows if not r["intact"]]
        print(json.dumps(summary))
        return 1 if args.verify and summary["corrupt"] else 0
    if args.cmd == "promote":
        rec = run_or_exit(name, lambda: versions.promote(root, args.version, actor=args.actor))
    elif args.cmd == "rollback":
        rec = run_or_exit(name, lambda: versions.rollback(root, args.to, actor=args.actor))
    else:
        for r in versions.history(root):
            print(f"{r.get('at')}  {r.get('action'):<8}  {r.get('from')} -> {r.get('version')}  ({r.get('actor')})")
        print(json.dumps({"bundles": str(root), "records": len(versions.history(root))}))
        return 0
    print(f"{rec['action']}: LATEST {rec['from']} -> {rec['version']} (running services follow within "
          "serve.watch_interval_s)")
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
