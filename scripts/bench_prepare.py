"""Benchmark of the data layer: ``python -m features.prepare`` as users run it (whole command).

- Online Retail I+II (1.07M rows), the whole command in a subprocess (interpreter start, Hydra,
  hashing, cleaning, pseudonymisation, splits, writing), against a naive pandas pass over the same
  rows measured in the same run the same way (read, unify, de-duplicate, quarantine nulls, dense
  ids, sort, leave-one-out, write; no pseudonymisation, reasons, manifest or hashes).
- The synthetic generator + preparation at 1M, 3M and 10M events: wall time and peak memory.

Wall = median over ``--repeats``; peak memory = the largest peak RSS of the measured process tree
(``ru_maxrss`` of the child). The machine is shared: the 1-minute load average is printed with each
figure. Prints a table, then one JSON object as the last line.

    python scripts/bench_prepare.py [--repeats 3] [--sizes 1000000,3000000,10000000] [--skip-synthetic]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGETS = {"online_retail_wall_s": 6.0, "online_retail_peak_mb": 1536.0, "synthetic_10m_wall_s": 60.0,
         "synthetic_10m_peak_mb": 4096.0}

# Runs CMD as a child and prints its wall time and peak RSS (ru_maxrss of that child only).
_MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "peak_mb": peak, "rc": rc.returncode, "stderr": rc.stderr[-2000:]}))
"""


def naive_pass(data_root: Path, out: Path) -> None:
    """The baseline: what a quick pandas script does with the same two files."""
    import pandas as pd

    a = pd.read_parquet(data_root / "online-retail/online_retail_II_2009_2010.parquet")
    b = pd.read_parquet(data_root / "online-retail/online_retail_2010_2011.parquet")
    a = a.rename(columns={"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"})
    a["InvoiceDate"] = pd.to_datetime(a["InvoiceDate"])
    df = pd.concat([a, b], ignore_index=True).drop_duplicates()
    bad = df["CustomerID"].isna() | df["Description"].isna()
    out.mkdir(parents=True, exist_ok=True)
    df[bad].to_parquet(out / "quarantine.parquet")
    df = df[~bad].copy()
    df["user_id"] = pd.factorize(df["CustomerID"])[0]
    df["item_id"] = pd.factorize(df["StockCode"])[0]
    df = df.sort_values(["user_id", "InvoiceDate"], kind="stable")
    df["rank"] = df.groupby("user_id").cumcount(ascending=False)
    df.to_parquet(out / "events.parquet")
    df[df["rank"] == 0].to_parquet(out / "test.parquet")
    df[df["rank"] == 1].to_parquet(out / "valid.parquet")
    df[df["rank"] > 1].to_parquet(out / "train.parquet")


def measure(cmd: list[str]) -> dict:
    env = {**os.environ, "SHOPREC_PSEUDO_KEY": os.environ.get("SHOPREC_PSEUDO_KEY", "bench-key")}
    r = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=REPO, capture_output=True, text=True, env=env)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"benchmark command failed ({' '.join(cmd)}): {res['stderr'][-500:]}")
    res["load_1m"] = os.getloadavg()[0]
    return res


def prepare_cmd(artifacts: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "features.prepare", f"paths.artifacts={artifacts}", "force=true", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="1000000,3000000,10000000")
    ap.add_argument("--synthetic-repeats", type=int, default=1)
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--data-root", default=os.environ.get("SHOPREC_DATA_ROOT", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--naive", metavar="OUT", help=argparse.SUPPRESS)  # internal: run the baseline pass
    args = ap.parse_args()
    if args.naive:
        naive_pass(Path(args.data_root), Path(args.naive))
        return

    results: dict = {"repeats": args.repeats}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        tmp = Path(tmp)
        ours, naive = [], []
        for i in range(args.repeats):  # interleaved, so both see the same machine load
            ours.append(measure(prepare_cmd(tmp / "ours", f"paths.data_root={args.data_root}", "data=online_retail")))
            naive.append(measure([sys.executable, str(Path(__file__).resolve()), "--data-root", args.data_root,
                                  "--naive", str(tmp / f"naive{i}")]))
        o_wall = statistics.median(r["wall_s"] for r in ours)
        n_wall = statistics.median(r["wall_s"] for r in naive)
        o_peak = max(r["peak_mb"] for r in ours)
        n_peak = max(r["peak_mb"] for r in naive)
        load = statistics.median(r["load_1m"] for r in ours)
        results["online_retail"] = {
            "rows": 1_067_370, "wall_s": round(o_wall, 3), "peak_mb": round(o_peak, 1),
            "naive_wall_s": round(n_wall, 3), "naive_peak_mb": round(n_peak, 1),
            "wall_ratio_vs_naive": round(o_wall / n_wall, 3), "peak_ratio_vs_naive": round(o_peak / n_peak, 3),
            "walls_s": [round(r["wall_s"], 3) for r in ours], "naive_walls_s": [round(r["wall_s"], 3) for r in naive],
            "load_1m": round(load, 2),
        }
        rows.append(("online_retail (prepare, whole command)", 1_067_370, o_wall, o_peak, load))
        rows.append(("online_retail (naive pandas pass)", 1_067_370, n_wall, n_peak, load))
        if not args.skip_synthetic:
            results["synthetic"] = {}
            for n in [int(float(x)) for x in args.sizes.split(",") if x]:
                runs = [measure(prepare_cmd(tmp / "syn", "data=synthetic", f"data.synthetic.n_events={n}",
                                            f"data.name=synthetic_{n}")) for _ in range(args.synthetic_repeats)]
                wall = statistics.median(r["wall_s"] for r in runs)
                peak = max(r["peak_mb"] for r in runs)
                load = statistics.median(r["load_1m"] for r in runs)
                results["synthetic"][str(n)] = {"wall_s": round(wall, 3), "peak_mb": round(peak, 1),
                                                "events_per_s": round(n / wall), "load_1m": round(load, 2)}
                rows.append(("synthetic (generate + prepare)", n, wall, peak, load))
                import shutil

                shutil.rmtree(tmp / "syn", ignore_errors=True)

    o = results["online_retail"]
    budgets = {"online_retail_wall_le_6s": o["wall_s"] <= BUDGETS["online_retail_wall_s"],
               "online_retail_peak_le_1_5gb": o["peak_mb"] <= BUDGETS["online_retail_peak_mb"]}
    ten = results.get("synthetic", {}).get("10000000")
    if ten:
        budgets["synthetic_10m_wall_le_60s"] = ten["wall_s"] <= BUDGETS["synthetic_10m_wall_s"]
        budgets["synthetic_10m_peak_le_4gb"] = ten["peak_mb"] <= BUDGETS["synthetic_10m_peak_mb"]
    results["within_budget"] = budgets
    results["cpu_count"] = os.cpu_count()

    print(f"{'job':42s} {'rows':>11s} {'wall s':>8s} {'peak MB':>8s} {'load':>5s}")
    for name, n, wall, peak, load in rows:
        print(f"{name:42s} {n:>11,d} {wall:>8.2f} {peak:>8.0f} {load:>5.1f}")
    print(f"ours / naive: wall x{o['wall_ratio_vs_naive']:.2f}, peak memory x{o['peak_ratio_vs_naive']:.2f}; "
          f"within budget: {', '.join(f'{k}={v}' for k, v in budgets.items())}")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
