"""Benchmark the candidate index against exact search at 100k and 1M items (CPU here, GPU where present).

No real catalogue is that large (Online Retail has ~4.6k items), so the embeddings are synthetic,
derived from the catalogue of the synthetic generator (``features.synthetic``: categories with
power-law sizes, popularity ranks, prices); see ``catalogue_embeddings`` for exactly how. User
queries are a category's style centre (sometimes mixed with a second category) plus noise.
Dimension 64.

Per size: build time, index memory (serialised bytes) and RSS growth, queries/s at batch 1 and 256 for
exact search (torch fp32 on CPU, fp16 on CUDA) and for the index config of that size, recall@100
against exact, and the filter strategies (over-fetch vs FAISS IDSelector) on an "exclude the user's
50 purchases + restrict to one department" query. Threads are pinned (``--threads``) for both the
index and the exact search so the ratio is fair. Medians over ``--repeats`` timing rounds.

    python scripts/bench_index.py                     # 100k with index=ivf, 1M with index=ivf_large
    python scripts/bench_index.py --sizes 100000 --index-100k hnsw
    python scripts/bench_index.py --sizes 1000000 --sweep-1m "nprobe=40,48,64;k_factor_rf=12,16"

Search parameters are tuned on VALIDATION queries only: ``--sweep-*`` measures recall@100 and
batch-1 queries/s for a grid of search parameters on queries drawn with seed ``seed + 1000``, which
the measured queries (seeds ``seed`` and ``seed + 7``) never use. The chosen setting is then written
into ``conf/index/*.yaml`` and the main table measures it on the held-out queries.

Last stdout line: one JSON object with, per size, ``recall_at_100`` and ``speedup_vs_exact`` (batch 1).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from serving.index import IndexSettings, TorchExactIndex, build_index


def catalogue_embeddings(n_items: int, dim: int, styles: int, seed: int, noise_decay: float = 1.0):
    """Item embeddings shaped by the synthetic generator's catalogue (``features.synthetic``).

    The generator gives each item a category (40 categories, power-law sizes), a popularity rank
    within its category and a price. Embedding = category centroid N(0, I) + one of ``styles``
    style offsets of that category (0.6 N(0, I)) + item noise + 0.3 x standardised
    log price along a shared "price" direction, scaled by ``1 + 0.15 * log1p(popularity share x
    items per category)`` so best sellers score higher under inner product, as trained embeddings do.
    Item noise has the total energy of 0.4 N(0, I) but a power-law spectrum (std of the j-th of
    ``dim`` directions proportional to (j+1)^-``noise_decay``, in a random rotation), like the fast-decaying
    singular values of trained embeddings; ``noise_decay`` 0 gives isotropic noise (far harder for ANN).
    """
    from features.synthetic import SyntheticSpec, _catalogue

    rng = np.random.default_rng(seed)
    spec = SyntheticSpec(n_events=1, n_items=n_items, seed=seed).resolved()
    cat_items = _catalogue(spec, rng)
    cat = cat_items["category_id"].to_numpy()
    n_cats = int(cat.max()) + 1
    centroids = rng.normal(size=(n_cats, dim)).astype(np.float32)
    style_off = 0.6 * rng.normal(size=(n_cats, styles, dim)).astype(np.float32)
    style = rng.integers(0, styles, n_items)
    rank = np.arange(n_items) - np.searchsorted(cat, cat)  # 0 = best seller of its category
    size = np.bincount(cat)[cat]
    share = (1.0 / (rank + 1) ** spec.item_zipf) * size / np.log(size + 1)
    log_price = np.log(cat_items["base_price"].to_numpy())
    price_dir = rng.normal(size=dim).astype(np.float32)
    price_dir /= np.linalg.norm(price_dir)
    spectrum = (np.arange(1, dim + 1) ** -noise_decay).astype(np.float32)
    spectrum *= 0.4 * np.sqrt(dim / (spectrum ** 2).sum())
    rotation = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
    noise = (rng.normal(size=(n_items, dim)).astype(np.float32) * spectrum) @ rotation
    emb = centroids[cat] + style_off[cat, style] + noise
    emb += (0.3 * (log_price - log_price.mean()) / log_price.std())[:, None].astype(np.float32) * price_dir
    emb *= (1.0 + 0.15 * np.log1p(share))[:, None].astype(np.float32)
    return emb.astype(np.float32), cat, (centroids, style_off)


def user_queries(n: int, centres, seed: int, p_off_category: float = 0.2) -> np.ndarray:
    """A user browsing one category (one of its styles), sometimes also another (weight 0.3), plus noise."""
    centroids, style_off = centres
    rng = np.random.default_rng(seed + 1)
    n_cats, styles, dim = style_off.shape
    c = rng.integers(0, n_cats, n)
    q = centroids[c] + style_off[c, rng.integers(0, styles, n)]
    off = rng.random(n) < p_off_category
    q[off] += 0.3 * centroids[rng.integers(0, n_cats, int(off.sum()))]
    return (q + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def qps(index, queries: np.ndarray, batch: int, k: int, repeats: int, **filters) -> float:
    """Median queries/s over ``repeats`` passes over ``queries`` in batches of ``batch``."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, len(queries), batch):
            sl = slice(s, s + batch)
            kw = {key: (v[sl] if key == "exclude" else v) for key, v in filters.items()}
            index.search(queries[sl], k, **kw)
        rates.append(len(queries) / (time.perf_counter() - t0))
    return statistics.median(rates)


def recall(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(r)) / len(r) for g, r in zip(got, ref)]))


VALIDATION_SEED_OFFSET = 1000  # validation queries: user_queries(..., seed + 1000); measured: seed, seed + 7


def sweep(idx, emb, centres, grid: str, args) -> list[dict]:
    """Recall@100 and batch-1 speed-up over exact for each search-parameter combination in ``grid``
    (``"nprobe=32,48;k_factor_rf=8,16"``), on validation queries only."""
    import itertools

    import faiss

    names, values = zip(*[(kv.split("=")[0], kv.split("=")[1].split(",")) for kv in grid.split(";")])
    parts = getattr(idx, "parts", [idx])  # a norm-ranged index: "s<i>.<param>" sets stratum i, "<param>" the rest

    def set_param(name: str, value) -> None:
        part = parts[-1]
        if name[:1] == "s" and "." in name and name.split(".")[0][1:].isdigit():
            part, name = parts[int(name.split(".")[0][1:])], name.split(".", 1)[1]
        faiss.ParameterSpace().set_index_parameter(part.index, name, value)

    qv = user_queries(args.recall_queries, centres, args.seed + VALIDATION_SEED_OFFSET)
    ref = TorchExactIndex(emb, device="cpu", dtype="float32")
    ref_ids = ref.search(qv, 100)[1]
    ex_qps = qps(ref, qv[:100], 1, 100, args.repeats)
    rows = []
    for combo in itertools.product(*values):
        params = {n: float(v) if "." in v else int(v) for n, v in zip(names, combo)}
        for n, v in params.items():
            set_param(n, v)
        rec = recall(idx.search(qv, 100)[1], ref_ids)
        rate = qps(idx, qv[:200], 1, 100, args.repeats)
        rows.append({"params": params, "recall_at_100": round(rec, 4), "speedup_vs_exact": round(rate / ex_qps, 1)})
        print(f"  validation {params}: recall@100 {rec:.4f}, batch-1 speed-up {rate / ex_qps:.1f}x", flush=True)
    for part in parts:  # back to the config's setting
        for n, v in part.search_params.items():
            faiss.ParameterSpace().set_index_parameter(part.index, n, v)
    return rows


def index_settings(name: str, overrides: list[str]) -> IndexSettings:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"index={name}", *[f"index.{o}" for o in overrides]])
    return IndexSettings.from_cfg(OmegaConf.to_container(cfg.index, resolve=True))


def bench_size(n: int, index_name: str, overrides: list[str], args) -> dict:
    import faiss

    proc = psutil.Process()
    emb, cat_of, centres = catalogue_embeddings(n, args.dim, args.styles, args.seed, args.noise_decay)
    q1 = user_queries(args.queries_b1, centres, args.seed)
    qb = user_queries(args.queries_b256, centres, args.seed + 7)
    k = 100
    exact = TorchExactIndex(emb)  # fp32 on CPU, fp16 on CUDA
    ref = TorchExactIndex(emb, device="cpu", dtype="float32")
    settings = index_settings(index_name, overrides)
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    faiss.omp_set_num_threads(args.build_threads)  # building may use every core; searching is pinned below
    idx = build_index(emb, settings, seed=args.seed)
    faiss.omp_set_num_threads(args.threads)
    build_s = time.perf_counter() - t0
    rss_mb = (proc.memory_info().rss - rss0) / 2**20
    index_mb = None
    if hasattr(idx, "cpu_index") or hasattr(idx, "parts"):
        index_mb = sum(len(faiss.serialize_index(p.cpu_index())) for p in getattr(idx, "parts", [idx])) / 2**20
    sweep_rows = None
    grid = args.sweep_100k if n < 500_000 else args.sweep_1m
    if grid:
        sweep_rows = sweep(idx, emb, centres, grid, args)
    rq = np.concatenate([q1, qb])[: args.recall_queries]
    rec = recall(idx.search(rq, k)[1], ref.search(rq, k)[1])
    ex_b1 = qps(exact, q1, 1, k, args.repeats)
    ix_b1 = qps(idx, q1, 1, k, args.repeats)
    ex_b256 = qps(exact, qb, 256, k, args.repeats)
    ix_b256 = qps(idx, qb, 256, k, args.repeats)
    # filters: exclude 60 "purchased" items (50 near the query), allow 5 of the 40 categories
    rng = np.random.default_rng(args.seed + 3)
    allowed = np.isin(cat_of, np.unique(cat_of)[:5])  # "restrict to 5 categories"
    fq = q1[: args.filter_queries]
    near = ref.search(fq, 50)[1]
    exclude = np.array([set(near[j].tolist()) | set(rng.integers(0, n, 10).tolist()) for j in range(len(fq))], dtype=object)
    ref_f = ref.search(fq, k, exclude=list(exclude), allowed=allowed)[1]
    filt = {}
    for strategy in ("overfetch", "selector"):
        idx.filter = strategy
        got = idx.search(fq, k, exclude=list(exclude), allowed=allowed)[1]
        filt[strategy] = {"qps_b1": qps(idx, fq, 1, k, args.repeats, exclude=exclude, allowed=allowed),
                          "recall_at_100": recall(got, ref_f)}
    idx.filter = settings.filter
    filt["exact"] = {"qps_b1": qps(exact, fq, 1, k, args.repeats, exclude=exclude, allowed=allowed)}
    filt["allowed_fraction"] = float(allowed.mean())
    return {
        "items": n, "dim": args.dim, "index": index_name, "factory": settings.factory,
        "search_params": settings.search_params, "norm_strata": settings.norm_strata, "device": idx.device, "exact_device": exact.device,
        "build_s": round(build_s, 2), "build_threads": args.build_threads, "index_mb": None if index_mb is None else round(index_mb, 1),
        "rss_growth_mb": round(rss_mb, 1), "validation_sweep": sweep_rows, "recall_at_100": round(rec, 4),
        "exact_qps_b1": round(ex_b1, 1), "index_qps_b1": round(ix_b1, 1),
        "exact_qps_b256": round(ex_b256, 1), "index_qps_b256": round(ix_b256, 1),
        "speedup_vs_exact": round(ix_b1 / ex_b1, 2), "speedup_vs_exact_b256": round(ix_b256 / ex_b256, 2),
        "filters": {k2: ({kk: round(vv, 4) for kk, vv in v.items()} if isinstance(v, dict) else round(v, 4))
                    for k2, v in filt.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--index-100k", default="ivf", help="conf/index/<name> used for sizes < 500k")
    p.add_argument("--index-1m", default="ivf_large", help="conf/index/<name> used for sizes >= 500k")
    p.add_argument("--set-100k", nargs="*", default=[], help="index overrides, e.g. search_params.nprobe=48")
    p.add_argument("--set-1m", nargs="*", default=[], help="index overrides for the 1M size")
    p.add_argument("--sweep-100k", default="", help='validation-only grid, e.g. "nprobe=16,32"')
    p.add_argument("--sweep-1m", default="", help='validation-only grid, e.g. "nprobe=40,48;k_factor_rf=12,16"')
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--styles", type=int, default=25, help="style sub-clusters per category")
    p.add_argument("--noise-decay", type=float, default=1.0, help="item-noise spectrum exponent (0 = isotropic)")
    p.add_argument("--queries-b1", type=int, default=200)
    p.add_argument("--queries-b256", type=int, default=1024)
    p.add_argument("--recall-queries", type=int, default=500)
    p.add_argument("--filter-queries", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="FAISS OpenMP and torch threads (same for both)")
    p.add_argument("--build-threads", type=int, default=2, help="FAISS OpenMP threads while building the index")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    results = {}
    for n in [int(s) for s in args.sizes.split(",")]:
        name, over = (args.index_100k, args.set_100k) if n < 500_000 else (args.index_1m, args.set_1m)
        t0 = time.perf_counter()
        results[str(n)] = r = bench_size(n, name, over, args)
        r["bench_s"] = round(time.perf_counter() - t0, 1)
        print(f"[{n} items done in {r['bench_s']} s] {json.dumps(r)}", file=sys.stderr, flush=True)

    cols = ["items", "index", "norm_strata", "factory", "search_params", "build_s", "build_threads", "index_mb", "rss_growth_mb", "recall_at_100", "exact_qps_b1", "index_qps_b1",
            "speedup_vs_exact", "exact_qps_b256", "index_qps_b256", "speedup_vs_exact_b256"]
    print(f"threads={args.threads}, dim={args.dim}, k=100, medians of {args.repeats} rounds; device={os.uname().nodename}")
    print(f"search params: from conf/index, tuned on validation queries (seed {args.seed + VALIDATION_SEED_OFFSET}); "
          f"measured here on held-out queries (seeds {args.seed}, {args.seed + 7})")
    print(" | ".join(cols))
    for r in results.values():
        strata = "; ".join(f"top {st['share']:.0%} norms: {st['factory']} {st['search_params']}" for st in r["norm_strata"])
        print(" | ".join(str(r[c]) if c != "norm_strata" else (strata or "-") for c in cols))
    print("\nfilters (exclude 60 items + allow 5 categories), queries/s at batch 1 and recall@100 vs filtered exact:")
    for n, r in results.items():
        f = r["filters"]
        print(f"{n}: allowed {f['allowed_fraction']:.3f} | overfetch {f['overfetch']} | selector {f['selector']} | exact {f['exact']}")
    print(json.dumps({"bench": "index", "threads": args.threads,
                      "tuned_on": f"validation queries, seed {args.seed + VALIDATION_SEED_OFFSET}",
                      "sizes": {n: {"recall_at_100": r["recall_at_100"], "speedup_vs_exact": r["speedup_vs_exact"],
                                    **{k: r[k] for k in ("index", "factory", "search_params", "norm_strata", "build_s", "build_threads", "index_mb",
                                                         "exact_qps_b1", "index_qps_b1", "exact_qps_b256",
                                                         "index_qps_b256", "speedup_vs_exact_b256", "device", "filters")}}
                                for n, r in results.items()}}))


if __name__ == "__main__":
    main()
