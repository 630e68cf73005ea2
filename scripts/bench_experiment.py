"""Online experiments measured on a replay of real users: ``python scripts/bench_experiment.py``.

The replay: the users of Online Retail's temporal test period (customers with purchases after the
validation period), in the order of their first purchase there, ask the service for ``k``
recommendations as a storefront would (HTTP requests to the in-process FastAPI app over
``serving.service.Service``: the same routes, assignment and exposure logging as the Ray-served app,
without Ray's proxy). The service first receives the validation period's purchases as events (what the
shop logged since the bundle was trained). A user *converts* on a shown item when it is among their
real purchases of the test period: the storefront then posts a ``click`` and a ``purchase`` event for
it, with the response's ``request_id`` and the item's position. Revenue is the item's price.

1. A/B: the trained bundle against popularity-only answers (``conf/experiment/homepage_ab.yaml``'s
   variants, a fresh salt), read by ``serving.experiments.readout`` from the service's own logs.
   Before each request both variants' answers are also computed directly, so the replay knows every
   user's outcome under both: the *true lift* is the ratio of the two conversion rates over all
   replayed users, and the readout's 95 % interval should hold it.
2. A/A: both variants serve the same pipeline. The replay is served once; then every re-salt assigns
   the same units anew (``assignment.variant_of``) and the readout is computed again, giving many A/A
   experiments over the same replay. The false-positive rate at alpha = 0.05 should be about 0.05.
3. Cost: during the A/A replay each request is sent twice, in random order, with the experiments on
   (assignment + exposure line) and off, before the visit's events are posted; recommendation p50 on
   / off (client-side time of the HTTP call). Also with ``fsync=request`` (300 users).

Table, then one JSON object on the last line. Needs a trained bundle and the processed data in the
artifacts folder (``--artifacts``; scripts/demo.sh steps 1 and 3 build them).

Taobao: ``--data taobao`` replays Taobao's test-period users the same way (its own artifacts folder);
``--data online_retail,taobao --taobao-artifacts DIR`` runs both, Online Retail's figures as the
top-level keys of the last line and Taobao's under ``"taobao"`` (the same keys). Taobao's test period
(one day) has few buyers, so a Taobao user converts on a shown item when it is among their real next
``cart`` or ``purchase`` events (``--taobao-convert-events``); Online Retail's is purchases only.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default=os.environ.get("SHOPREC_ARTIFACTS", "artifacts"))
    p.add_argument("--data", default="online_retail",
                   help="dataset, or a comma list (online_retail,taobao): the first one's figures are the top-level "
                        "keys of the last line, each further one's sit under its name")
    p.add_argument("--taobao-artifacts", default=None, help="artifacts folder of the Taobao run (default --artifacts)")
    p.add_argument("--taobao-bundle", default=None, help="Taobao bundle folder name (default LATEST)")
    p.add_argument("--taobao-convert-events", default="cart,purchase",
                   help="Taobao events of the test period that count as a conversion on a shown item")
    p.add_argument("--data-root", default=os.environ.get("SHOPREC_DATA_ROOT", "../shared/data"))
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-users", type=int, default=0, help="0 = every test-period user")
    p.add_argument("--aa-readouts", type=int, default=1000)
    p.add_argument("--timing-users", type=int, default=0, help="users of the A/A replay timed on and off (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bundle", default=None, help="bundle folder name under <artifacts>/bundles (default LATEST)")
    p.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=False,
                   help="A/B arms drop items of the user's history (the service default); off by default: a "
                        "wholesaler's customers re-order, so both arms may show them")
    return p.parse_args()


def raw_ids(data_root: str, data: str = "online_retail") -> list[str]:
    """Every raw customer id of the dataset as the adapter keys it (Online Retail: ``str(int(CustomerID))``)."""
    if data == "taobao":
        col = pd.read_csv(Path(data_root, "taobao-userbehavior", "UserBehavior_head.csv"), header=None, usecols=[0],
                          dtype=str, on_bad_lines="skip")[0]
        return sorted(set(col.dropna()))
    if data != "online_retail":
        raise SystemExit(f"--data {data}: the replay knows online_retail and taobao")
    out = set()
    for f in sorted(Path(data_root, "online-retail").glob("*.parquet")):
        cols = pd.read_parquet(f).columns
        col = "Customer ID" if "Customer ID" in cols else "CustomerID"
        out.update(str(int(x)) for x in pd.read_parquet(f, columns=[col])[col].dropna().unique())
    return sorted(out)


def spec_files(folder: Path, salt_ab: str, salt_aa: str, exclude_seen: bool) -> None:
    base = yaml.safe_load(Path("conf/experiment/homepage_ab.yaml").read_text())
    base.update(name="bench_ab", salt=salt_ab, start="2020-01-01T00:00:00Z", end="2100-01-01T00:00:00Z")
    base["mde"] = mde = {"relative": 0.3, "baseline": 0.3}  # planned: a 30 % lift on a 30 % conversion rate
    for v in base["variants"]:  # the same rules in both arms: items bought before may be shown again
        v.setdefault("overrides", {}).setdefault("rules", {})["exclude_seen"] = exclude_seen
    (folder / "bench_ab.yaml").write_text(yaml.safe_dump(base))
    aa = yaml.safe_load(Path("conf/experiment/homepage_aa.yaml").read_text())
    aa.update(name="bench_aa", salt=salt_aa, start="2020-01-01T00:00:00Z", end="2100-01-01T00:00:00Z", mde=mde)
    (folder / "bench_aa.yaml").write_text(yaml.safe_dump(aa))


def make_service(art: str, bundle: str | None, exp_dir: Path, active: str, log_dir: Path, events: Path,
                 fsync: str = "interval"):
    from fastapi.testclient import TestClient

    from serving.api import create_app
    from serving.app import compose_config
    from serving.service import Service

    cfg = compose_config([f"paths.artifacts={art}", f"bundle={bundle}" if bundle else "bundle=null",
                          "serve.watch_interval_s=0", f"serve.store.event_log={events}",
                          "serve.budget_ms.retrieve=5000", "serve.budget_ms.rank=5000", "serve.budget_ms.rules=5000",
                          f"serve.experiments.dir={exp_dir}", f"serve.experiments.active=[{active}]",
                          f"serve.experiments.log_dir={log_dir}", f"serve.experiments.fsync={fsync}",
                          "serve.experiments.watch_interval_s=0"])
    svc = Service(cfg.serve, load=True, background=False)
    return svc, TestClient(create_app(svc), headers={"X-API-Key": "bench-key"})


def _f(x, spec: str) -> str:
    """``format(x, spec)``, or ``n/a`` for a missing figure (no conversion in an arm)."""
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _json_safe(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


LABELS = {"online_retail": "Online Retail", "taobao": "Taobao"}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("SHOPREC_PSEUDO_KEY", "bench-experiment-key")
    os.environ["SHOPREC_API_KEYS"] = "bench-key"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_start = time.time()
    out: dict = {}
    for n, data in enumerate(d.strip() for d in args.data.split(",")):
        art, bundle, convert = args.artifacts, args.bundle, ("purchase",)
        if data == "taobao":
            convert = tuple(e.strip() for e in args.taobao_convert_events.split(","))
            if n or args.taobao_artifacts:
                art, bundle = args.taobao_artifacts or args.artifacts, args.taobao_bundle
        rows, res = replay_dataset(args, data, art, bundle, convert)
        if n:
            print(f"\n{LABELS.get(data, data)}")
        w = max(len(r[0]) for r in rows)
        print("\n".join(f"{a:<{w}}  {b}" for a, b in rows))
        if n:
            out[data] = res
        else:
            out.update(res)
    out["seconds"] = round(time.time() - t_start, 1)
    print(json.dumps(_json_safe(out), separators=(",", ":")))


def replay_dataset(args: argparse.Namespace, data: str, art: str, bundle: str | None,
                   convert: tuple[str, ...]) -> tuple[list, dict]:
    """One dataset's replay: A/B, A/A and cost; the table rows and the figures of the last line."""
    from features.privacy import pseudo_key, pseudonymise_one
    from serving import stats
    from serving.experiments.assignment import Assignment, variant_of
    from serving.experiments.exposure import ATTRIBUTIONS_FILE, EXPOSURES_FILE
    from serving.experiments.readout import Quarantine, analyse, parse_attributions, parse_events, \
        parse_exposures, read_experiment, unit_table
    from serving.experiments.report import table as readout_table
    from serving.experiments.spec import read_spec
    from serving.recommender import RecQuery

    rng = random.Random(args.seed)
    proc = Path(art) / "processed" / data
    split = proc / "splits" / "temporal"
    valid = pd.read_parquet(split / "valid.parquet", columns=["user_id", "item_id", "event", "ts"])
    test = pd.read_parquet(split / "test.parquet", columns=["user_id", "item_id", "event", "ts"])
    train = pd.read_parquet(split / "train.parquet", columns=["user_id", "ts", "event"])
    users = pd.read_parquet(proc / "users.parquet", columns=["user_id", "user_key"])
    items = pd.read_parquet(proc / "items.parquet", columns=["item_id", "item_key"])
    key_of_user = dict(zip(users.user_id, users.user_key))
    key_of_item = dict(zip(items.item_id, items.item_key.astype(str)))
    pkey = pseudo_key()[0]
    raw_of_key = {pseudonymise_one(r, pkey): r for r in raw_ids(args.data_root, data)}
    test = test[test.event.isin(convert)]
    first = test.groupby("user_id").ts.min().sort_values()
    replay = [u for u in first.index if key_of_user.get(u) in raw_of_key]
    if args.max_users:
        replay = replay[: args.max_users]
    next_purchases = test.groupby("user_id").item_id.apply(lambda s: {key_of_item[i] for i in s}).to_dict()
    # CUPED covariate: the user's conversion events in the 90 days before the test period (train + valid)
    cut = first.min()
    past = pd.concat([train[train.event.isin(convert)][["user_id", "ts"]], valid[valid.event.isin(convert)][["user_id", "ts"]]])
    pre = past[past.ts >= cut - pd.Timedelta(days=90)].groupby("user_id").size()
    pre_values = {key_of_user[u]: float(n) for u, n in pre.items()}
    print(f"replay: {len(replay)} {data} users of the test period ({first.min().date()} .. {test.ts.max().date()}), "
          f"k={args.k}", file=sys.stderr)

    bundle_dir = str(Path(art) / "bundles" / bundle) if bundle else None
    work = Path(tempfile.mkdtemp(prefix="bench_experiment.", dir=art))
    exp_dir = work / "conf"
    exp_dir.mkdir()
    spec_files(exp_dir, f"bench-ab-{args.seed}-{rng.getrandbits(32):08x}", f"bench-aa-{args.seed}-{rng.getrandbits(32):08x}",
               args.exclude_seen)
    events_log = work / "events.csv"
    valid_events = [{"user_id": raw_of_key[key_of_user[u]], "item_id": key_of_item[i], "event": e,
                     "ts": t.isoformat()} for u, i, e, t in valid.itertuples(index=False)
                    if key_of_user.get(u) in raw_of_key]

    def post_valid(client) -> None:
        for s in range(0, len(valid_events), 1000):
            r = client.post("/v1/events", json=valid_events[s: s + 1000])
            assert r.status_code == 202, r.text

    def storefront(client, u: str, extra: dict | None = None) -> tuple[dict, float, int]:
        """One visit: recommendations, then click + purchase of shown items among the real next purchases."""
        raw = raw_of_key[key_of_user[u]]
        t0 = time.perf_counter()
        r = client.post("/v1/recommendations", json={"user_id": raw, "k": args.k, **(extra or {})})
        dt_ms = (time.perf_counter() - t0) * 1000
        assert r.status_code == 200, r.text
        body = r.json()
        return body, dt_ms, visit_events(client, u, body)

    def visit_events(client, u: str, body: dict) -> int:
        """click + purchase of the shown items that are among the user's real next purchases."""
        raw = raw_of_key[key_of_user[u]]
        bought = next_purchases[u]
        evs = []
        for pos, it in enumerate(body["items"]):
            if it["item_id"] in bought:
                for ev in ("click", "purchase"):
                    e = {"user_id": raw, "item_id": it["item_id"], "event": ev, "position": pos}
                    if "request_id" in body:
                        e["request_id"] = body["request_id"]
                    evs.append(e)
        if evs:
            assert client.post("/v1/events", json=evs).status_code == 202
        return int(bool(evs))

    # ---------------------------------------------------------------------------------------- A/B
    svc, client = make_service(art, bundle_dir, exp_dir, "bench_ab", work / "logs_ab", events_log)
    post_valid(client)
    ab = svc.experiments.specs[0]
    rec = svc.recommender
    pipes = {v.name: svc.experiments.pipeline(Assignment(ab.name, v.name, ab, "-"), rec) for v in ab.variants}
    truth = {v.name: [] for v in ab.variants}
    for u in replay:
        q = RecQuery(user_key=key_of_user[u], k=args.k)
        for name, p in pipes.items():
            shown = {i.item_key for i in p.recommend(q).items}
            truth[name].append(int(bool(shown & next_purchases[u])))
        storefront(client, u)
    prices = {str(k): float(p) for k, p in zip(rec.bundle.items.keys, rec.bundle.items.price)}
    svc.stop()
    ab_read = read_experiment(ab, exposure_log=work / "logs_ab" / EXPOSURES_FILE, event_log=events_log,
                              attribution_log=work / "logs_ab" / ATTRIBUTIONS_FILE, prices=prices,
                              pre_values=pre_values)
    res = ab_read.result
    treat, ctrl = res["treatment"], res["control"]
    true_rates = {k: float(np.mean(v)) for k, v in truth.items()}
    true_lift = true_rates[treat] / true_rates[ctrl] - 1 if true_rates[ctrl] else float("nan")
    in_ci = res["ci_low"] is not None and res["ci_low"] <= true_lift <= res["ci_high"]
    print(readout_table(res), file=sys.stderr)

    # ---------------------------------------------------------------------------------------- A/A + cost
    events_aa = work / "events_aa.csv"
    svc, client = make_service(art, bundle_dir, exp_dir, "bench_aa", work / "logs_aa", events_aa)
    post_valid(client)
    exps = svc.experiments
    on, off = [], []
    timed = set(replay[: args.timing_users]) if args.timing_users else set(replay)
    for u in replay:
        if u in timed:  # the same request with experiments on and off (no exposure line), in random order,
            raw = raw_of_key[key_of_user[u]]  # both before the visit's events are posted
            on_body = None
            for is_on in ([True, False] if rng.random() < 0.5 else [False, True]):
                svc.experiments = exps if is_on else None
                t0 = time.perf_counter()
                r = client.post("/v1/recommendations", json={"user_id": raw, "k": args.k})
                (on if is_on else off).append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
                if is_on:
                    on_body = r.json()
            svc.experiments = exps
            visit_events(client, u, on_body)
        else:
            storefront(client, u)
    svc.stop()
    aa_spec = read_spec(exp_dir / "bench_aa.yaml")
    q = Quarantine()
    ex = parse_exposures(work / "logs_aa" / EXPOSURES_FILE, aa_spec, q)
    units, _ = unit_table(ex, parse_events(events_aa, q), parse_attributions(work / "logs_aa" / ATTRIBUTIONS_FILE, q),
                          aa_spec, prices, pre_values)
    aa_p, aa_srm = [], []
    t_aa = time.perf_counter()
    for i in range(args.aa_readouts):
        s = aa_spec.model_copy(update={"salt": f"aa-resalt-{args.seed}-{i}"})
        u2 = units.assign(variant=[variant_of(s, unit).name for unit in units.unit])
        r = analyse(u2, s, crossover=0)
        aa_p.append(r["p_value"] if r["p_value"] is not None else 1.0)
        aa_srm.append(r["srm_p_value"])
    aa_seconds = time.perf_counter() - t_aa
    fpr = float(np.mean(np.asarray(aa_p) < 0.05))
    fpr_ci = stats.wilson_interval(int(np.sum(np.asarray(aa_p) < 0.05)), len(aa_p))
    srm_fpr = float(np.mean(np.asarray(aa_srm) < 0.05))

    # cost with an fsync per exposure (the event log's own guarantee), same replay users, same run
    events_fs = work / "events_fsync.csv"
    svc, client = make_service(art, bundle_dir, exp_dir, "bench_aa", work / "logs_fsync", events_fs, fsync="request")
    exps = svc.experiments
    on_fs, off_fs = [], []
    for u in replay[:300]:
        raw = raw_of_key[key_of_user[u]]
        for is_on in ([True, False] if rng.random() < 0.5 else [False, True]):
            svc.experiments = exps if is_on else None
            t0 = time.perf_counter()
            assert client.post("/v1/recommendations", json={"user_id": raw, "k": args.k}).status_code == 200
            (on_fs if is_on else off_fs).append((time.perf_counter() - t0) * 1000)
    svc.experiments = exps
    svc.stop()

    p50 = lambda xs: float(np.percentile(xs, 50))  # noqa: E731
    ratio = p50(on) / p50(off)
    ratio_fs = p50(on_fs) / p50(off_fs)
    cuped = res["comparisons"][treat].get("cuped") or {}
    needed = None  # users per variant to detect the replay's true lift at power 0.8 (alpha 0.05)
    if 0 < true_rates[ctrl] < 1 and np.isfinite(true_lift) and true_lift != 0 and 0 < true_rates[ctrl] * (1 + true_lift) < 1:
        needed = int(stats.sample_size_proportions(true_rates[ctrl], true_lift))
    rows = [
        (f"replayed users ({LABELS.get(data, data)} temporal test period)", len(replay)),
        ("A/B readout users per variant", ", ".join(f"{v}: {f['users']}" for v, f in res["variants"].items())),
        ("A/B conversion rate per variant (readout)", ", ".join(f"{v}: {f['conversion_rate']:.4f}" for v, f in res["variants"].items())),
        ("true conversion rate, all users (replay)", ", ".join(f"{v}: {r:.4f}" for v, r in true_rates.items())),
        (f"A/B lift {treat} vs {ctrl} [95% CI]", f"{_f(res['lift'], '.3f')} [{_f(res['ci_low'], '.3f')}, {_f(res['ci_high'], '.3f')}]"),
        ("A/B p-value (two-proportion z)", _f(res["p_value"], ".3g")),
        ("A/B true lift (replay) / inside the CI", f"{_f(true_lift, '.3f')} / {in_ci}"),
        ("A/B CUPED lift [95% CI], variance reduction",
         f"{_f(cuped.get('lift'), '.3f')} [{_f((cuped.get('lift_ci') or [None])[0], '.3f')}, "
         f"{_f((cuped.get('lift_ci') or [None, None])[1], '.3f')}], {_f(cuped.get('variance_reduction'), '.3f')}"),
        ("A/B SRM p-value", _f(res["srm_p_value"], ".3g")),
        *([("planned users per variant (spec MDE) / needed for the true lift",
            f"{res.get('planned_users_per_variant')} / {needed if needed is not None else 'n/a (no conversion in an arm)'}")]
          if data != "online_retail" else []),
        ("A/A readouts (re-salted)", f"{len(aa_p)} in {aa_seconds:.1f} s"),
        ("A/A false-positive rate at 0.05 [95% CI]", f"{fpr:.3f} [{fpr_ci[0]:.3f}, {fpr_ci[1]:.3f}]"),
        ("A/A SRM p < 0.05 rate", f"{srm_fpr:.3f}"),
        ("recommendation p50 on / off, fsync=interval (ms)", f"{p50(on):.2f} / {p50(off):.2f} = {ratio:.3f}"),
        ("recommendation p50 on / off, fsync=request (ms)", f"{p50(on_fs):.2f} / {p50(off_fs):.2f} = {ratio_fs:.3f}"),
    ]
    out = {
        "data": data, "users": len(replay), "k": args.k,
        "aa_false_positive_rate": fpr, "aa_readouts": len(aa_p), "aa_fpr_ci": list(fpr_ci),
        "ab_p_value": res["p_value"], "ab_lift": res["lift"], "ab_ci_low": res["ci_low"], "ab_ci_high": res["ci_high"],
        "ab_true_lift": true_lift, "ab_true_lift_in_ci": bool(in_ci), "ab_srm_p_value": res["srm_p_value"],
        "ab_variants": res["variants"], "ab_cuped": res["comparisons"][treat]["cuped"],
        "overhead_p50_ratio": ratio, "overhead_p50_ratio_fsync_per_request": ratio_fs,
        "p50_on_ms": p50(on), "p50_off_ms": p50(off), "timed_pairs": len(on),
        "service": "in-process FastAPI app (TestClient) over serving.service.Service, no Ray",
    }
    if convert != ("purchase",):
        out["convert_events"] = list(convert)
    if data != "online_retail":
        out["ab_planned_users_per_variant"] = res.get("planned_users_per_variant")
        out["ab_users_needed_for_true_lift"] = needed
    return rows, out


if __name__ == "__main__":
    main()
