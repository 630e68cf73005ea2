"""Cold items: how items never seen in training rank once embedded from their content (``training.cold_protocol``).

    nice -n 10 python scripts/bench_cold_items.py [--data amazon_toys] [--epochs 15] [--max-seconds 480]
                                                  [--cold-share 0.1] [--seed 0] [--threads 2] [overrides...]

Holds out a seeded random 10 % of the items with all their interactions, trains a small SASRec on the rest
(bounded by ``--epochs`` and ``--max-seconds``), fits the content tower (``models.item_content``) to the warm
items' embeddings, and ranks the held-out items (a) for the users who interacted with them (recall@50,
NDCG@10 among all items, history masked) and (b) as similar items of a new item, against popularity, a
random embedding and the sequence model's own untrained rows. Reads the prepared data
(``python -m features.prepare data=amazon_toys``). Prints a table; the last stdout line is one JSON object
(also written to ``artifacts/bench/cold_items/<data>.json``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONF = Path(__file__).resolve().parent.parent / "conf"
SHOWN = ("recall@50", "ndcg@10", "hr@10", "coverage@10", "novelty@10", "tail_share@10", "ild@10")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="amazon_toys")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--max-seconds", type=float, default=480.0)
    ap.add_argument("--cold-share", type=float, default=0.1)
    ap.add_argument("--tower-epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-users", type=int, default=None, help="keep the first N users (smoke runs)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.artifacts=/some/artifacts")
    args = ap.parse_intermixed_args(argv)
    import torch
    from hydra import compose, initialize_config_dir

    from features.processed import load_events, load_items
    from training.cold_protocol import ProtocolSettings, run_protocol

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[f"data={args.data}", *args.overrides])
    torch.set_num_threads(args.threads)
    pdir = Path(str(cfg.paths.processed)) / str(cfg.data.name)
    events = load_events(pdir, columns=["user_id", "item_id", "ts", "src_row"])
    if args.max_users is not None:
        events = events[events["user_id"] < args.max_users]
    settings = ProtocolSettings(cold_share=args.cold_share, seed=args.seed, epochs=args.epochs,
                                max_seconds=args.max_seconds, tower_epochs=args.tower_epochs)
    t0 = time.perf_counter()
    res = run_protocol(events, load_items(pdir), settings)
    res["seconds"] = time.perf_counter() - t0
    sm, ct = res["sequence_model"], res["content_tower"]
    print(f"data {args.data}: {res['items']} items, {res['cold_items']} held out with all their interactions; "
          f"{res['users']} users")
    print(f"sequence model: SASRec {settings.hidden}-d, {sm['epochs']} epochs in {sm['train_s']:.0f} s; content tower: "
          f"{ct['vocabulary']} tokens, valid cosine {ct.get('valid_cosine', float('nan')):.3f} "
          f"(mean embedding {ct.get('valid_cosine_mean_baseline', float('nan')):.3f})")
    for part, title in (("recommend", f"recommendation: {res['recommendation_rows']} users, the held-out item they "
                                      "interacted with, ranked among all items"),
                        ("similar", f"similar items: {res['similar_rows']} held-out items as queries, relevant = warm "
                                    "items next to them in a sequence")):
        print(title)
        print(f"  {'cold embedding':<18}" + "".join(f"{c:>15}" for c in SHOWN))
        for name, m in res[part].items():
            print(f"  {name:<18}" + "".join(f"{m[c]:>15.4f}" if c in m else f"{'-':>15}" for c in SHOWN))
    out = {"bench": "cold_items", "data": args.data, "machine": "cpu", **res}
    dest = Path(str(cfg.paths.artifacts)) / "bench" / "cold_items" / f"{args.data}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(dest)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
