"""Uplift benchmark on Hillstrom, and the Complete Journey coupon response model.

    python scripts/bench_uplift.py grid [--repeats 1] [--arms womens,mens,either] [--outcomes visit,conversion]
    flock /tmp/shoprec-bench.lock python scripts/bench_uplift.py [uplift.cv.repeats=1] [uplift.methods=[S-GBT,project]] [uplift.completejourney.skip=true]

Hillstrom 'Womens E-Mail' vs 'No E-Mail', outcome visit: repeated stratified 5-fold CV (3 repeats,
fixed seeds; strata = outcome x arm); every method sees the same folds. uplift@30 % is the treated
minus control visit rate among the top 30 % (scikit-uplift's ``uplift_at_k``, strategy 'overall';
here the product's own copy in ``models.uplift``, tested against scikit-uplift), Qini is
``qini_auc_score``.

The project's model ("project", ``conf/uplift/hillstrom.yaml``) is fixed in config before the outer
run (``uplift.model.fixed``, chosen by the screening mode below), or with ``fixed: null`` chosen
honestly per fold: "nested-select" (``models.uplift_learners.InnerCVSelect``) runs an inner CV on
each outer training fold's rows only, picks one of the configured candidates or blends by the
inner ``select.metric``, and refits it on the whole outer training fold; the outer test fold is
scored once. The table prints which model each outer fold chose.

``uplift.screen.run=true`` only screens candidates: an inner CV on the training rows of one outer
fold (never an outer test fold), every blend under z-score and rank scaling. The project is compared with the best baseline per metric by a one-sided paired t-test
over the outer folds, and by the same test with Nadeau & Bengio's corrected variance (folds of
repeated CV overlap, so the plain p-value is optimistic). 'Mens E-Mail' and the conversion
outcome are reported as they come out. Then the Complete Journey response model
(``training.campaigns.completejourney``): AUC and lift@10 %.

Prints tables, then as its last line one JSON object.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from training.campaigns.hillstrom import load_hillstrom
from training.campaigns.uplift_benchmark import BASELINES, make_methods, paired, run_cv, screen, table

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["+uplift=hillstrom", *argv])
    u = cfg.uplift
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(int(u.threads))
    threadpool_limits(int(u.threads))
    t_all = time.perf_counter()
    data = load_hillstrom(u.data, u.treatment_arm, u.outcome)
    if u.screen.run:
        return {**screen(data, u), "seconds": time.perf_counter() - t_all}
    methods = make_methods(u, data.feature_names)
    names = list(u.methods) if u.methods else list(methods)
    for n in names:
        if n not in methods:
            raise SystemExit(f"uplift.methods: unknown method {n!r} (known: {', '.join(methods)})")
    avg = data.y[data.t == 1].mean() - data.y[data.t == 0].mean()
    res = run_cv(data, methods, names, u.cv.folds, u.cv.repeats, u.cv.seed, u.k)
    print(table(res, f"Hillstrom {u.treatment_arm} vs No E-Mail, outcome {u.outcome}: {u.cv.repeats}x{u.cv.folds}-fold CV, "
                     f"n={len(data.y)}, average effect {avg:.4f}", avg))
    out = {"dataset": "hillstrom", "arm": u.treatment_arm, "outcome": u.outcome, "folds": u.cv.folds,
           "repeats": u.cv.repeats, "average_effect": float(avg), "selection": "nested (inner CV on each outer training fold)"}
    for n in ("project", "nested-select"):
        if n in names:
            ch = res[n]["chosen"]
            out[f"{n.replace('-', '_')}_chosen"] = {c: ch.count(c) for c in dict.fromkeys(ch)}
            print(f"{n}: model per outer fold: " + ", ".join(f"{c} x{k}" for c, k in out[f"{n.replace('-', '_')}_chosen"].items()))
    if "project" in names and all(b in names for b in BASELINES):
        bu, bu_mean, pu, pu_nb = paired(res, "uplift_at_k")
        bq, bq_mean, pq, pq_nb = paired(res, "qini")
        out.update({"uplift_at_30": float(np.mean(res["project"]["uplift_at_k"])),
                    "qini": float(np.mean(res["project"]["qini"])),
                    "best_baseline_uplift_at_30": bu_mean, "best_baseline_uplift_name": bu,
                    "best_baseline_qini": bq_mean, "best_baseline_qini_name": bq,
                    "paired_p_uplift_at_30": pu, "paired_p_qini": pq, "paired_p": max(pu, pq),
                    "paired_p_corrected_uplift_at_30": pu_nb, "paired_p_corrected_qini": pq_nb,
                    "wins_uplift_at_30": int(np.sum(np.array(res["project"]["uplift_at_k"]) > np.array(res[bu]["uplift_at_k"]))),
                    "wins_qini": int(np.sum(np.array(res["project"]["qini"]) > np.array(res[bq]["qini"])))})
        print(f"\nproject vs best baseline over the same {len(res['project']['qini'])} folds: "
              f"uplift@30 {out['uplift_at_30']:.4f} vs {bu} {bu_mean:.4f} (paired one-sided t p={pu:.3g}, "
              f"corrected p={pu_nb:.3g}, wins {out['wins_uplift_at_30']}); "
              f"qini {out['qini']:.4f} vs {bq} {bq_mean:.4f} (p={pq:.3g}, corrected p={pq_nb:.3g}, wins {out['wins_qini']})")
    out["methods"] = {n: {"uplift_at_30": float(np.mean(r["uplift_at_k"])), "uplift_at_30_sd": float(np.std(r["uplift_at_k"])),
                          "qini": float(np.mean(r["qini"])), "seconds": r["seconds"]}
                      for n, r in res.items() if not n.startswith("_")}
    also = {}
    for spec in u.also or []:
        arm, outcome = spec.split(":")
        d = load_hillstrom(u.data, arm, outcome)
        sub = [n for n in ("random", *BASELINES, "nested-select", "project") if n in names]
        r = run_cv(d, make_methods(u, d.feature_names), sub, u.cv.folds, u.also_repeats, u.cv.seed, u.k)
        eff = d.y[d.t == 1].mean() - d.y[d.t == 0].mean()
        print()
        print(table(r, f"Hillstrom {arm} vs No E-Mail, outcome {outcome}: {u.also_repeats}x{u.cv.folds}-fold CV, average effect {eff:.4f}", eff))
        also[spec] = {n: {"uplift_at_30": float(np.mean(x["uplift_at_k"])), "qini": float(np.mean(x["qini"]))}
                      for n, x in r.items() if not n.startswith("_")}
        for n in ("project", "nested-select"):
            if n in r:
                also[spec][f"{n.replace('-', '_')}_chosen"] = {c: r[n]["chosen"].count(c) for c in dict.fromkeys(r[n]["chosen"])}
        also[spec]["average_effect"] = float(eff)
    out["also"] = also
    if not u.completejourney.get("skip", False):
        from training.campaigns.completejourney import complete_journey_benchmark
        cj = complete_journey_benchmark(u.completejourney.dir, u.completejourney.test_fraction, u.completejourney.seed)
        print()
        print(cj["table"])
        out["completejourney"] = {k: v for k, v in cj.items() if k != "table"}
    out["seconds"] = time.perf_counter() - t_all
    return out


def grid(argv: list[str]) -> dict:
    """``python scripts/bench_uplift.py grid [--repeats N] [--arms womens,mens,either] [--outcomes visit,conversion]
    [--no-semisynth]``: the grid of ``training.campaigns.uplift_grid`` with the shipped ``conf/uplift/table.yaml``."""
    import argparse

    from omegaconf import OmegaConf

    from training.campaigns.uplift_grid import grid_tables, run_grid

    ap = argparse.ArgumentParser(prog="bench_uplift.py grid")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--arms", default="womens,mens,either")
    ap.add_argument("--outcomes", default="visit,conversion")
    ap.add_argument("--no-semisynth", action="store_true")
    a = ap.parse_args(argv)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        ucfg = OmegaConf.to_container(compose("uplift/table", overrides=["data.path=unused"]), resolve=True)
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(ucfg["threads"]))
    root = Path(ucfg["paths"]["data_root"])
    out = run_grid(ucfg, str(root / "hillstrom" / "hillstrom.csv"),
                   None if a.no_semisynth else str(root / "uplift-semisynth-public"),
                   a.folds, a.repeats, a.outcomes.split(","), a.arms.split(","))
    print(grid_tables(out))
    return out


if __name__ == "__main__":
    try:
        result = grid(sys.argv[2:]) if sys.argv[1:2] == ["grid"] else main(sys.argv[1:])
    except ValueError as e:
        raise SystemExit(f"bench_uplift: error: {e}") from None
    print(json.dumps(result, sort_keys=True, default=float))
