"""Show retrieval + re-ranking for a few users of a bundle (demo): ``python scripts/rank_users.py [--bundle DIR] [--users 3]``.

For each user (pseudonymised key only): the user embedding from ``encoder.onnx`` over the stored
history, the top ``--candidates`` items from the bundle's index, the ranker's scores (the bundle as
``serving.bundle.load_bundle`` loads it for the service) and the top ``--top`` items before and after re-ranking,
plus "often bought with" items of the user's last item from ``bought_together.parquet``.
Last stdout line: a JSON object with the timings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from serving.bundle import BundleError, load_bundle, resolve_bundle_dir
from serving.ranking import RankRequest

BUNDLES = Path(__file__).resolve().parent.parent / "artifacts" / "bundles"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle folder or version name (default: artifacts/bundles/LATEST)")
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    try:
        b = load_bundle(resolve_bundle_dir(a.bundle, BUNDLES))
    except BundleError as e:
        sys.exit(f"rank_users: error: {e}")
    label = b.items.keys
    keys = [k for k, st in b.users.items() if len(st.history)]
    rng = np.random.default_rng(a.seed)
    pick = [keys[i] for i in rng.choice(len(keys), size=min(a.users, len(keys)), replace=False)]
    timings = {"retrieval_ms": [], "rank_ms": []}
    print(f"bundle {b.name}: index backend={b.index.backend} ({b.index.device}), ranker={'yes' if b.ranker else 'none'}")
    for key in pick:
        hist = b.users[key].history[-b.max_len:]
        user_emb = b.encode([hist], None if b.encoder_user_codes is None else b.encoder_codes(key)[None, :])[0]
        t0 = time.perf_counter()
        scores, cands = b.index.search(user_emb[None, :], a.candidates)
        timings["retrieval_ms"].append(1e3 * (time.perf_counter() - t0))
        keep = cands[0] >= 0
        cands, scores = cands[0][keep], scores[0][keep]
        print(f"\nuser {key} (history {len(b.users[key].history)} items; last: {label[int(hist[-1])]})")
        print("  retrieval order:", " | ".join(str(label[int(i)]) for i in cands[: a.top]))
        if b.ranker is not None:
            t0 = time.perf_counter()
            (r,) = b.ranker.score([RankRequest(user_emb=user_emb, history=hist, candidates=cands, retrieval_scores=scores,
                                               user_feat=b.ranker_codes(key))])
            timings["rank_ms"].append(1e3 * (time.perf_counter() - t0))
            order = cands[np.argsort(-r, kind="stable")]
            print("  re-ranked      :", " | ".join(str(label[int(i)]) for i in order[: a.top]))
        others, conf = b.bought_together.get(int(hist[-1]), (np.zeros(0, np.int64), np.zeros(0)))
        if len(others):
            print("  bought with last item:", " | ".join(f"{label[int(o)]} (conf {c:.2f})"
                                                      for o, c in zip(others[: a.top], conf[: a.top])))
    print(json.dumps({"users": len(pick), "median_retrieval_ms": float(np.median(timings["retrieval_ms"])) if timings["retrieval_ms"] else None,
                      "median_rank_ms": float(np.median(timings["rank_ms"])) if timings["rank_ms"] else None,
                      "ranker_provider": b.ranker.provider if b.ranker else None}))


if __name__ == "__main__":
    main()
