"""Show retrieval + re-ranking for a few users of a bundle (demo): ``python scripts/rank_users.py [--bundle DIR] [--users 3]``.

For each user (pseudonymised key only): the user embedding from ``encoder.onnx`` over the stored
history, the top ``--candidates`` items from the bundle's index (``serving.index.load_index``), the
ranker's scores (``serving.ranking.Ranker``) and the top ``--top`` items before and after re-ranking,
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
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serving.index import load_index  # noqa: E402
from serving.ranking import RankRequest, Ranker, make_session  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle folder (default: artifacts/bundles/LATEST)")
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.bundle:
        bundle = Path(a.bundle)
    else:
        latest = REPO / "artifacts" / "bundles" / "LATEST"
        if not latest.exists():
            sys.exit(f"rank_users: error: {latest} missing; export a bundle first or pass --bundle")
        bundle = latest.parent / latest.read_text().strip()
    manifest = json.loads((bundle / "manifest.json").read_text())
    items = pd.read_parquet(bundle / "items.parquet").set_index("item_id")
    label = items["title"] if "title" in items else items["item_key"]
    users = pd.read_parquet(bundle / "users.parquet")
    users = users[users["history"].map(len) > 0]
    pick = users.sample(n=min(a.users, len(users)), random_state=a.seed)
    index = load_index(bundle)
    ranker = Ranker.load(bundle)
    enc, provider = make_session(bundle / "encoder.onnx")
    L = int(manifest.get("max_len") or 50)
    rules = pd.read_parquet(bundle / "bought_together.parquet") if (bundle / "bought_together.parquet").exists() else None
    timings = {"retrieval_ms": [], "rank_ms": []}
    print(f"bundle {bundle.name}: index backend={index.backend} ({index.device}), ranker={'yes' if ranker else 'none'}")
    for row in pick.itertuples():
        hist = np.asarray(row.history, np.int64)[-L:]
        seq = np.zeros((1, L), np.int64)
        seq[0, L - len(hist):] = hist + 1
        user_emb = enc.run(["user_emb"], {"item_seq": seq})[0][0]
        t0 = time.perf_counter()
        scores, cands = index.search(user_emb[None, :], a.candidates)
        timings["retrieval_ms"].append(1e3 * (time.perf_counter() - t0))
        keep = cands[0] >= 0
        cands, scores = cands[0][keep], scores[0][keep]
        print(f"\nuser {row.user_key} (history {len(row.history)} items; last: {label.get(int(hist[-1]), '?')})")
        print("  retrieval order:", " | ".join(str(label.get(int(i), i)) for i in cands[: a.top]))
        if ranker is not None:
            t0 = time.perf_counter()
            (r,) = ranker.score([RankRequest(user_emb=user_emb, history=hist, candidates=cands, retrieval_scores=scores)])
            timings["rank_ms"].append(1e3 * (time.perf_counter() - t0))
            order = cands[np.argsort(-r, kind="stable")]
            print("  re-ranked      :", " | ".join(str(label.get(int(i), i)) for i in order[: a.top]))
        if rules is not None:
            bt = rules[rules["item_id"] == int(hist[-1])].head(a.top)
            if len(bt):
                print("  bought with last item:", " | ".join(f"{label.get(int(o), o)} (conf {c:.2f})" for o, c in zip(bt["other_item_id"], bt["confidence"])))
    print(json.dumps({"users": len(pick), "median_retrieval_ms": float(np.median(timings["retrieval_ms"])) if timings["retrieval_ms"] else None,
                      "median_rank_ms": float(np.median(timings["rank_ms"])) if timings["rank_ms"] else None,
                      "ranker_provider": ranker.provider if ranker else None}))


if __name__ == "__main__":
    main()
