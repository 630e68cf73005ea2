"""Forget one user in the demo's artifacts and prove it: seconds, rows removed per artifact, a scan of every
artifact file (Parquet contents included) for the pseudonymised key, and a re-run of features.prepare.

    python scripts/bench_forget.py [--user 12347] [--artifacts artifacts] [--work /tmp/shoprec_forget_bench]
                                   [--in-place]

By default the artifacts are copied to ``--work`` first (large binary files as hard links: every forget write
replaces a file, never edits one in place), so the demo's own artifacts are untouched; ``--in-place`` forgets
in ``--artifacts`` itself (the demo's last step). Missing Online Retail prepared data or profiles are made
first (``features.prepare`` / ``features.profile data=online_retail``). The only files allowed to hold the key
afterwards are the tombstones (``privacy/tombstones/``), which exist to keep it out.
Prints a table, then one JSON object as the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LINK_SUFFIXES = {".parquet", ".npy", ".onnx", ".pt", ".ckpt", ".index", ".bin", ".faiss"}


def copy_artifacts(src: Path, dst: Path) -> None:
    def link_or_copy(s: str, d: str) -> None:
        if Path(s).suffix in LINK_SUFFIXES:
            try:
                os.link(s, d)
                return
            except OSError:
                pass
        shutil.copy2(s, d)

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=link_or_copy, symlinks=True,
                    ignore=shutil.ignore_patterns("hydra", "mlruns", "redis", "*.lock"))


def _strings(col: pa.ChunkedArray) -> list[str]:
    t = col.type
    while pa.types.is_list(t) or pa.types.is_large_list(t):
        col = pa.chunked_array([c.flatten() for c in col.chunks], t.value_type)
        t = t.value_type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return [v for v in col.to_pylist() if v is not None]
    return []


def scan(root: Path, key: str) -> dict[str, int]:
    """Files (relative) that hold the key, with the number of hits: raw bytes, and every text value of Parquet."""
    hits: dict[str, int] = {}
    needle = key.encode()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        rel = str(p.relative_to(root))
        if rel.startswith("privacy/tombstones/"):
            continue
        n = p.read_bytes().count(needle)
        if p.suffix == ".parquet":
            try:
                t = pq.read_table(p)
                n += sum(sum(v.count(key) for v in _strings(t[c])) for c in t.column_names)
            except Exception as e:  # noqa: BLE001 - an unreadable Parquet file is a finding of its own
                hits[rel + " (unreadable: " + str(e)[:60] + ")"] = 1
        if n:
            hits[rel] = n
    return hits


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--user", default="12347", help="raw Online Retail customer id to forget")
    ap.add_argument("--artifacts", default=os.environ.get("SHOPREC_ARTIFACTS") or "artifacts")
    ap.add_argument("--work", default="/tmp/shoprec_forget_bench")
    ap.add_argument("--in-place", action="store_true")
    args = ap.parse_args()

    src = Path(args.artifacts).resolve()
    art = src if args.in_place else Path(args.work).resolve() / "artifacts"
    if not args.in_place:
        copy_artifacts(src, art)
    env = {**os.environ, "SHOPREC_ARTIFACTS": str(art), "SHOPREC_AUDIT_LOG": str(art / "audit" / "audit.jsonl"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    py = sys.executable
    setup = []
    if not (art / "processed" / "online_retail" / "manifest.json").exists():
        setup.append([py, "-m", "features.prepare", "data=online_retail", f"paths.artifacts={art}"])
    if not (art / "profiles" / "online_retail" / "profiles.parquet").exists():
        setup.append([py, "-m", "features.profile", "data=online_retail", f"paths.artifacts={art}"])
    for cmd in setup:
        r = run(cmd, env)
        if r.returncode:
            print(f"bench_forget: error: {' '.join(cmd[1:])} failed: {r.stderr.strip()[-400:]}", file=sys.stderr)
            return 2

    t0 = time.perf_counter()
    r = run([py, "-m", "features.forget", f"user={args.user}", f"paths.artifacts={art}"], env)
    seconds = time.perf_counter() - t0
    try:
        report = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"bench_forget: error: features.forget gave no report (exit {r.returncode}): {r.stderr[-400:]}",
              file=sys.stderr)
        return 2
    key = report["user_key"]
    hits_after_forget = scan(art, key)

    t1 = time.perf_counter()
    rp = run([py, "-m", "features.prepare", "data=online_retail", f"paths.artifacts={art}"], env)
    prepare_s = time.perf_counter() - t1
    manifest = json.loads((art / "processed" / "online_retail" / "manifest.json").read_text())
    try:
        prepare_skipped = bool(json.loads(rp.stdout.strip().splitlines()[-1])["skipped"])
    except (IndexError, ValueError, KeyError):
        prepare_skipped = None
    users = pq.read_table(art / "processed" / "online_retail" / "users.parquet", columns=["user_key"])
    in_users = key in set(users["user_key"].to_pylist())
    hits_after_prepare = scan(art, key)

    print(f"forget user (raw id given on the command line) -> user_key {key}: {report['status']}, "
          f"{sum(report['removed'].values())} rows in {len(report['removed'])} artifact files, {seconds:.1f} s "
          f"(command, incl. start-up; {report['seconds']:.1f} s inside)")
    print(f"{'artifact':<78} {'rows removed':>12}")
    for k, v in sorted(report["removed"].items()):
        print(f"{k:<78} {v:>12}")
    for k, v in sorted(report["bundles"].items()):
        print(f"bundle {k}: {v}")
    print(f"models to retrain: {len(report['retrain'])} ({', '.join(report['retrain'][:6])}"
          f"{' ...' if len(report['retrain']) > 6 else ''})")
    for e in report.get("errors", []):
        print(f"NOT CHECKED (another pseudonymisation key): {e[:160]}")
    print(f"scan after forget: {len(hits_after_forget)} files hold the key {dict(list(hits_after_forget.items())[:5])}")
    print(f"features.prepare data=online_retail again: exit {rp.returncode}, skipped={prepare_skipped}, {prepare_s:.1f} s, "
          f"n_dropped.forgotten={manifest.get('n_dropped', {}).get('forgotten')}, key in users.parquet: {in_users}; "
          f"scan: {len(hits_after_prepare)} files hold the key")
    out = {
        "user_key": key, "status": report["status"], "forget_seconds": round(seconds, 2),
        "forget_seconds_inside": report["seconds"], "rows_removed": sum(report["removed"].values()),
        "removed": report["removed"], "bundles": report["bundles"], "retrain": report["retrain"],
        "not_checked": len(report.get("errors", [])), "forget_exit": r.returncode,
        "files_holding_key_after_forget": len(hits_after_forget),
        "files_holding_key_after_prepare": len(hits_after_prepare),
        "prepare_exit": rp.returncode, "prepare_skipped": prepare_skipped, "prepare_seconds": round(prepare_s, 1),
        "prepare_dropped_forgotten": manifest.get("n_dropped", {}).get("forgotten"),
        "key_in_prepared_users": in_users, "artifacts": str(art), "in_place": bool(args.in_place),
    }
    print(json.dumps(out, sort_keys=True))
    ok = not hits_after_forget and not hits_after_prepare and not in_users and rp.returncode == 0 and not prepare_skipped
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
