"""Do the SASRec defaults transfer? The defaults against plain SASRec on datasets they were not chosen on.

    python scripts/bench_transfer.py [--datasets movielens_100k,online_retail] [--variants defaults,plain] \
        [--trainer cpu] [--variant "name=override ..."] [-- extra overrides for every run]

The defaults (``conf/model/sasrec.yaml``) were chosen on Amazon Toys and Sports validation. This bench asks
whether what they add over a plain SASRec holds on other data, through the path a client with a file of its
own takes: each source below is written as an S3-Rec file (``user item item ...`` lines in chronological
order, 5-core, ids renumbered from 1 in order of first appearance, plus an ``item2attributes.json`` where
the source has item attributes) under ``artifacts/transfer/``, prepared by ``features.prepare data=seq_txt``
and trained by ``training.train model=sasrec data=seq_txt`` to early stopping, nothing tuned:

- ``movielens_100k``: the ratings of ``u.data`` in time order (ties by file order), genres as attributes.
- ``online_retail``: UCI Online Retail 2010-2011, each customer's first purchase of each stock code, in
  invoice order (returns, guests and non-positive quantities left out), no attributes (the file has none).

Variants: ``defaults`` (the shipped config, refit included) and ``plain`` (``bench_train.PLAIN``: 64-d,
1 head, dropout 0.2, Adam, no attributes, no label smoothing, no weight average, no refit). The table gives
valid NDCG@10 (the early-stopped model) and test NDCG@10 / HR@10 (after the refit where there is one) and
the defaults' gain over plain; ``--variant`` adds configurations of one's own (an ablation of the defaults:
``--variant "no_attr=model.use_attributes=false" model.refit_epochs=0``). The last stdout line is one JSON
object with every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import PLAIN  # noqa: E402

VARIANTS = {"defaults": "", "plain": f"{PLAIN} model.refit_epochs=0"}


def five_core(pairs: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Drop users and items with fewer than ``k`` interactions until none is left (the S3-Rec filter)."""
    while True:
        u = pairs.groupby("user")["item"].transform("size")
        i = pairs.groupby("item")["user"].transform("size")
        keep = (u >= k) & (i >= k)
        if keep.all():
            return pairs
        pairs = pairs[keep]


def write_s3rec(pairs: pd.DataFrame, attributes: dict | None, out: Path) -> tuple[Path, Path | None, dict]:
    """``pairs`` (user, item, order) in any order → ``<out>.txt`` and, with attributes, ``<out>_item2attributes.json``."""
    pairs = five_core(pairs.sort_values(["user", "order"], kind="stable"))
    item_ids = {it: n for n, it in enumerate(pd.unique(pairs["item"]), start=1)}
    user_ids = {us: n for n, us in enumerate(pd.unique(pairs["user"]), start=1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    txt = out.with_suffix(".txt")
    with txt.open("w") as f:
        for user, items in pairs.groupby("user", sort=False)["item"]:
            f.write(f"{user_ids[user]} " + " ".join(str(item_ids[i]) for i in items) + "\n")
    attr_path = None
    if attributes is not None:
        attr_path = out.parent / f"{out.name}_item2attributes.json"
        attr_path.write_text(json.dumps({str(n): attributes.get(it, []) for it, n in item_ids.items()}))
    stats = {"users": len(user_ids), "items": len(item_ids), "actions": int(len(pairs)),
             "mean_length": round(len(pairs) / max(len(user_ids), 1), 1)}
    return txt, attr_path, stats


def movielens_100k(data_root: Path, out: Path):
    raw = data_root / "movielens-100k"
    r = pd.read_csv(raw / "u.data", sep="\t", header=None, names=["user", "item", "rating", "ts"])
    r["order"] = np.arange(len(r))
    r = r.sort_values(["user", "ts", "order"], kind="stable")
    r["order"] = np.arange(len(r))
    items = pd.read_csv(raw / "u.item", sep="|", header=None, encoding="latin-1")
    genres = items.iloc[:, 5:24].to_numpy()
    attributes = {int(it): [int(g) + 1 for g in np.flatnonzero(row)] for it, row in zip(items[0], genres)}
    return write_s3rec(r[["user", "item", "order"]], attributes, out)


def online_retail(data_root: Path, out: Path):
    r = pd.read_parquet(data_root / "online-retail" / "online_retail_2010_2011.parquet")
    r["order"] = np.arange(len(r))
    r = r[r["CustomerID"].notna() & (r["Quantity"] > 0) & ~r["InvoiceNo"].astype(str).str.startswith("C")]
    r = r.sort_values(["CustomerID", "InvoiceDate", "order"], kind="stable")
    r = r.drop_duplicates(["CustomerID", "StockCode"], keep="first")
    r["order"] = np.arange(len(r))
    pairs = pd.DataFrame({"user": r["CustomerID"].astype("int64").to_numpy(),
                          "item": r["StockCode"].astype(str).to_numpy(), "order": r["order"].to_numpy()})
    return write_s3rec(pairs, None, out)


SOURCES = {"movielens_100k": movielens_100k, "online_retail": online_retail}


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose(config_name="config", overrides=overrides)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default=",".join(SOURCES), help=f"comma-separated, of {list(SOURCES)}")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--variant", action="append", default=[],
                    help='"name=override override ..." on top of the defaults (repeatable, after --variants)')
    ap.add_argument("--trainer", default="cpu")
    ap.add_argument("--data-root", default=None, help="the shared data folder (default: paths.data_root)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every training run")
    args = ap.parse_intermixed_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name, known in ((datasets, SOURCES), (variants, VARIANTS)):
        unknown = [n for n in name if n not in known]
        if unknown:
            ap.error(f"unknown {unknown}; known: {list(known)}")
    specs = {v: VARIANTS[v] for v in variants}
    for spec in args.variant:
        name, sep, ov = spec.partition("=")
        if not sep or not name or name in specs:
            ap.error(f"--variant {spec!r}: expected a new name, '=', then overrides")
        specs[name] = ov

    from features.prepare import run as prepare
    from training.train import run as train

    paths = [o for o in args.overrides if o.startswith("paths.")]    # where to write, for preparation as well
    base = _compose(paths)
    data_root = Path(args.data_root or base.paths.data_root)
    out_root = Path(base.paths.artifacts) / "transfer"
    results: dict[str, dict] = {}
    for ds in datasets:
        txt, attrs, stats = SOURCES[ds](data_root, out_root / ds)
        data_ov = ["data=seq_txt", f"data.path={txt}", f"data.name=transfer_{ds}"]
        if attrs is not None:
            data_ov.append(f"data.attributes={attrs}")
        prepare(_compose([*paths, *data_ov]))
        print(f"[bench_transfer] {ds}: {stats} -> {txt}", flush=True)
        results[ds] = {"file": stats, "attributes": attrs is not None, "variants": {}}
        for v, ov in specs.items():
            overrides = ["model=sasrec", f"trainer={args.trainer}", *data_ov, *ov.split(), *args.overrides]
            print(f"[bench_transfer] {ds} / {v}: {' '.join(overrides)}", flush=True)
            t0 = time.perf_counter()
            m = train(_compose(overrides)).metrics
            results[ds]["variants"][v] = {
                "valid_ndcg@10": m.get("valid/ndcg@10"), "test_ndcg@10": m.get("test/ndcg@10"),
                "test_hr@10": m.get("test/hr@10"), "best_epoch": m.get("best_epoch"), "epochs": m.get("epochs"),
                "wall_s": round(time.perf_counter() - t0, 1), "run_dir": m.get("run_dir"), "overrides": ov}

    cols = ["valid_ndcg@10", "test_ndcg@10", "test_hr@10", "best_epoch", "epochs", "wall_s"]
    w = max([10, *(len(v) + 1 for v in specs)])
    print(f"\n{'dataset':<16}{'variant':<{w}}" + "".join(f"{c:>15}" for c in cols))
    for ds, r in results.items():
        for v, f in r["variants"].items():
            cells = "".join(f"{f[c]:>15.4f}" if isinstance(f[c], float) and c != "wall_s" else f"{str(f[c]):>15}"
                            for c in cols)
            print(f"{ds:<16}{v:<{w}}{cells}")
        d, p = r["variants"].get("defaults"), r["variants"].get("plain")
        if d and p and p["test_ndcg@10"] and p["valid_ndcg@10"]:
            r["defaults_vs_plain"] = {"valid": d["valid_ndcg@10"] / p["valid_ndcg@10"] - 1,
                                      "test": d["test_ndcg@10"] / p["test_ndcg@10"] - 1}
            print(f"{ds:<16}{'gain':<{w}}{r['defaults_vs_plain']['valid']:>+15.1%}{r['defaults_vs_plain']['test']:>+15.1%}")
    print("(valid = the early-stopped model; test = the exported model, after the defaults' refit)")
    out = {"bench": "transfer", "trainer": args.trainer, "datasets": results}
    print(json.dumps(out, default=str))
    return out


if __name__ == "__main__":
    main()
