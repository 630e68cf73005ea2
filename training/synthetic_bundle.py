"""A synthetic but complete serving bundle, for demos, benchmarks and tests without a trained model:
``python -m training.synthetic_bundle [serve.synthetic.n_items=100000]``.

It is published like every bundle (``serving.bundle.new_version``) and follows ``serving/bundle_layout.md``: ``manifest.json`` (with file hashes), ``config.yaml``,
``item_embeddings.npy``, ``items.parquet``, ``users.parquet``, ``encoder.onnx`` (exported from a tiny
torch module: a recency-weighted mean of the history's item embeddings) and ``bought_together.parquet``.
Items form category clusters in embedding space, so "similar" answers are checkable: a user whose
history is in ``cat03`` gets ``cat03`` items first.

``SyntheticBundleSpec(user_features=True)`` adds ``user_features.parquet`` + ``.json``, an encoder that takes
``user_feat`` and a ranker that lists ``user_features`` (table, encoder and ranker in three different column
orders, so tests catch a loader that ignores the declared order).

Raw user ids are ``user-<n>``; ``users.parquet`` holds their pseudonymised keys
(``features.privacy.pseudonymise_one``, key from ``SHOPREC_PSEUDO_KEY``). Item keys are ``SKU000123``.

The content is a function of ``SyntheticBundleSpec`` (seeded): building a version that exists already with
the same spec reuses it; another spec under the same name is refused (versions are immutable).
"""
from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.artifacts import write_json
from features.privacy import pseudo_key, pseudonymise_one
from serving.bundle import (
    BOUGHT_TOGETHER, CONFIG, ENCODER, ITEM_EMBEDDINGS, ITEMS, USER_FEATURES_SPEC, USER_FEATURES_TABLE, USERS,
    BundleError, new_version, read_manifest, set_latest,
)


@dataclass(frozen=True)
class SyntheticBundleSpec:
    """What to generate. ``n_items`` 100_000 is the benchmark catalogue."""

    n_items: int = 500
    n_users: int = 200
    dim: int = 32
    n_categories: int = 10
    max_len: int = 20
    history_len: int = 8
    unavailable_frac: float = 0.02
    seed: int = 0
    name: str = "synthetic"
    with_ranker: bool = True  # an untrained DCN-v2 ranker (score follows retrieval) in ranker.onnx + ranker.json
    user_features: bool = False  # encoder.onnx takes user_feat, ranker.json lists user_features, + user_features.*


# The synthetic user features (``features.user_features.UserFeatureSpec`` layout). The parquet, the encoder input and
# the ranker list them in three different orders, so that a loader that ignores the declared order gets caught.
USER_FEATURE_TABLE_ORDER = ("attr_country", "activity", "top_category")
USER_FEATURE_ENCODER_ORDER = ("top_category", "attr_country", "activity")
USER_FEATURE_RANKER_ORDER = ("activity", "top_category", "attr_country")
COUNTRIES = ("UK", "DE", "FR")


def synthetic_user_feature_spec(n_categories: int) -> dict:
    """``user_features.json`` of the synthetic bundle."""
    from features.user_features import UserFeatureSpec

    spec = UserFeatureSpec(names=list(USER_FEATURE_TABLE_ORDER),
                           kinds={"attr_country": "categorical", "activity": "bucket", "top_category": "categorical"},
                           vocab={"attr_country": list(COUNTRIES),
                                  "top_category": [f"cat{k:02d}" for k in range(n_categories)]},
                           edges={"activity": [0.5, 1.0, 1.5]},
                           source={"attr_country": "attribute:country", "activity": "derived", "top_category": "derived"})
    return spec.to_json()


def synthetic_user_codes(n_users: int, n_categories: int) -> pd.DataFrame:
    """Codes per user (table order); every 10th user is absent from the table (the service must send zeros)."""
    u = np.arange(n_users, dtype=np.int64)
    codes = pd.DataFrame({"user_id": u, "attr_country": u % (len(COUNTRIES) + 1), "activity": 1 + u % 4,
                          "top_category": 1 + u % n_categories})
    return codes[u % 10 != 9].reset_index(drop=True)


def item_key(i: int) -> str:
    return f"SKU{i:06d}"


def raw_user_id(u: int) -> str:
    return f"user-{u}"


def build_synthetic_bundle(out_dir: str | Path, spec: SyntheticBundleSpec = SyntheticBundleSpec(),
                           write_latest: bool = True) -> Path:
    """Publish version ``out_dir`` (``<bundles root>/<name>``); with ``write_latest`` point ``LATEST`` at it.
    An existing version built from the same spec is reused."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        have = read_manifest(out_dir, validate=False).get("synthetic_spec") if (out_dir / "manifest.json").exists() else None
        if have != repr(spec):
            raise BundleError(f"{out_dir}: a bundle version of this name exists already and was not built from "
                              f"{spec!r} (versions are immutable: choose another folder)")
        if write_latest:
            set_latest(out_dir.parent, out_dir.name)
        return out_dir
    rng = np.random.default_rng(spec.seed)
    n, d, c = spec.n_items, spec.dim, spec.n_categories
    if n < c or n < 2:
        raise ValueError(f"n_items={n}: need at least n_categories={c} items")
    cat = rng.integers(0, c, n)
    cat[:c] = np.arange(c)  # every category has at least one item
    centres = rng.normal(size=(c, d)).astype(np.float32)
    emb = centres[cat] + 0.45 * rng.normal(size=(n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb = emb.astype(np.float32)
    popularity = np.floor(1000.0 / (1.0 + rng.permutation(n)) ** 0.8).astype(np.int64) + 1
    price = np.round(rng.lognormal(2.5, 0.7, n), 2)
    price[rng.random(n) < 0.05] = np.nan  # some items have no price
    available = rng.random(n) >= spec.unavailable_frac
    items = pd.DataFrame({
        "item_id": np.arange(n, dtype=np.int64),
        "item_key": [item_key(i) for i in range(n)],
        "category": [f"cat{k:02d}" for k in cat],
        "price": price,
        "popularity": popularity,
        "available": available,
    })
    key, _ = pseudo_key()
    by_cat = [np.flatnonzero(cat == k) for k in range(c)]
    now = dt.datetime.now(dt.timezone.utc)
    hist, purch, purch_ts = [], [], []
    for u in range(spec.n_users):
        pool = by_cat[u % c]
        h = rng.choice(pool, size=min(spec.history_len, len(pool)), replace=len(pool) < spec.history_len)
        hist.append(h.astype(np.int64).tolist())
        p = h[-2:].astype(np.int64).tolist()  # the last two history items were bought, 1 and 60 days ago
        purch.append(p)
        purch_ts.append([now - dt.timedelta(days=60), now - dt.timedelta(days=1)][: len(p)])
    users = pd.DataFrame({
        "user_id": np.arange(spec.n_users, dtype=np.int64),
        "user_key": [pseudonymise_one(raw_user_id(u), key) for u in range(spec.n_users)],
        "history": hist,
        "purchases": purch,
        "purchase_ts": purch_ts,
    })
    rows = []
    for i in range(min(n, 2000)):  # bought-together pairs inside a category
        others = rng.choice(by_cat[cat[i]], size=min(3, len(by_cat[cat[i]])), replace=False)
        for o in others:
            if o != i:
                rows.append((i, int(o), float(rng.uniform(0.001, 0.05)), float(rng.uniform(0.05, 0.9)),
                             float(rng.uniform(1.0, 20.0))))
    bought = pd.DataFrame(rows, columns=["item_id", "other_item_id", "support", "confidence", "lift"]).astype(
        {"item_id": "int64", "other_item_id": "int64"})

    encoder_inputs: list = ["item_seq"]
    uf_spec = synthetic_user_feature_spec(c) if spec.user_features else None
    card = dict(zip(uf_spec["names"], uf_spec["cardinalities"])) if uf_spec else {}
    manifest = {"data": spec.name, "model": "synthetic_mean_encoder", "dim": d, "n_items": n, "max_len": spec.max_len,
                "device": "cpu", "metrics": {}, "synthetic_spec": repr(spec)}
    with new_version(out_dir.parent, out_dir.name, latest=write_latest, manifest=manifest) as draft:
        tmp = draft.path
        np.save(tmp / ITEM_EMBEDDINGS, emb)
        items.to_parquet(tmp / ITEMS, index=False)
        users.to_parquet(tmp / USERS, index=False)
        bought.to_parquet(tmp / BOUGHT_TOGETHER, index=False)
        if uf_spec is not None:
            codes = synthetic_user_codes(spec.n_users, c)
            codes.insert(1, "user_key", users.set_index("user_id")["user_key"].reindex(codes["user_id"]).to_numpy())
            codes.to_parquet(tmp / USER_FEATURES_TABLE, index=False)
            write_json(tmp / USER_FEATURES_SPEC, uf_spec)
            encoder_inputs = [{"name": "item_seq", "dtype": "int64", "shape": ["batch", spec.max_len]},
                              {"name": "user_feat", "dtype": "int64", "shape": ["batch", len(USER_FEATURE_ENCODER_ORDER)],
                               "columns": list(USER_FEATURE_ENCODER_ORDER), "table": USER_FEATURES_TABLE,
                               "spec": USER_FEATURES_SPEC}]
        export_mean_encoder(emb, spec.max_len, tmp / ENCODER,
                            [card[n] for n in USER_FEATURE_ENCODER_ORDER] if uf_spec else None, seed=spec.seed)
        if spec.with_ranker:
            export_random_ranker(items, d, tmp, seed=spec.seed,
                                 user_features=USER_FEATURE_RANKER_ORDER if uf_spec else (),
                                 user_cardinalities=[card[n] for n in USER_FEATURE_RANKER_ORDER] if uf_spec else ())
        (tmp / CONFIG).write_text(f"# synthetic bundle\nspec: {spec!r}\n")
        draft.manifest["encoder_inputs"] = encoder_inputs
    return out_dir


def export_mean_encoder(item_embeddings: np.ndarray, max_len: int, path: Path,
                        user_cardinalities: list[int] | None = None, seed: int = 0) -> None:
    """Export ``item_seq`` int64 [B, L] (item id + 1, 0 = padding) -> ``user_emb`` float32 [B, dim] to ONNX.

    With ``user_cardinalities`` the encoder takes a second input ``user_feat`` int64 [B, F] and adds one
    random embedding per column (code 0 = unknown adds nothing; each column its own table, so feeding
    the columns in another order changes the output)."""
    import torch

    class MeanEncoder(torch.nn.Module):
        def __init__(self, w: torch.Tensor, length: int):
            super().__init__()
            table = torch.cat([torch.zeros(1, w.shape[1]), w])
            self.emb = torch.nn.Embedding.from_pretrained(table, freeze=True, padding_idx=0)
            self.register_buffer("pos", torch.linspace(0.5, 1.0, length))  # recent items weigh more

        def forward(self, item_seq: torch.Tensor) -> torch.Tensor:
            e = self.emb(item_seq)
            m = (item_seq > 0).float() * self.pos
            u = (e * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1e-6)
            return torch.nn.functional.normalize(u, dim=-1)

    class MeanUserEncoder(MeanEncoder):
        def __init__(self, w: torch.Tensor, length: int, cards: list[int]):
            super().__init__(w, length)
            g = torch.Generator().manual_seed(seed)
            tables = [torch.cat([torch.zeros(1, w.shape[1]), 0.5 * torch.randn(c - 1, w.shape[1], generator=g)])
                      for c in cards]
            self.user = torch.nn.ModuleList(torch.nn.Embedding.from_pretrained(t, freeze=True) for t in tables)

        def forward(self, item_seq: torch.Tensor, user_feat: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            e = self.emb(item_seq)
            m = (item_seq > 0).float() * self.pos
            u = (e * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1e-6)
            for j, t in enumerate(self.user):
                u = u + t(user_feat[:, j])
            return torch.nn.functional.normalize(u, dim=-1)

    w = torch.from_numpy(np.asarray(item_embeddings, np.float32))
    names = ["item_seq"]
    example: tuple = (torch.zeros(1, max_len, dtype=torch.long),)
    if user_cardinalities:
        model = MeanUserEncoder(w, max_len, list(user_cardinalities)).eval()
        names.append("user_feat")
        example = (*example, torch.zeros(1, len(user_cardinalities), dtype=torch.long))
    else:
        model = MeanEncoder(w, max_len).eval()
    kwargs = dict(input_names=names, output_names=["user_emb"],
                  dynamic_axes={**{n: {0: "batch"} for n in names}, "user_emb": {0: "batch"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: 0.5 s instead of ~10 s for the dynamo one
            torch.onnx.export(model, example, str(path), dynamo=False, **kwargs)
        except Exception:  # noqa: BLE001 - torch versions without it
            torch.onnx.export(model, example, str(path), **kwargs)


def export_random_ranker(items: pd.DataFrame, dim: int, out_dir: Path, seed: int = 0,
                         user_features: tuple[str, ...] | list[str] = (),
                         user_cardinalities: tuple[int, ...] | list[int] = ()) -> None:
    """``ranker.onnx`` + ``ranker.json`` of an untrained ``models.ranker.DCNv2Ranker`` whose score is a
    monotone function of the retrieval score: the serving cost of a real ranker, and answers that tests
    can predict."""
    import torch

    from models.ranker import DCNv2Ranker, FeatureSpec

    torch.manual_seed(seed)
    spec = FeatureSpec.fit(items, dim, n_price_buckets=8, channels=["web", "app", "email"], heads=["purchase"],
                           score_weights={"purchase": 1.0}, recent_window=5, user_features=list(user_features),
                           user_cardinalities=list(user_cardinalities))
    net = DCNv2Ranker(len(spec.dense_features), spec.cat_cardinalities, dim, len(spec.heads)).eval()
    with torch.no_grad():  # the same graph and cost as a trained one; its score follows the retrieval score
        for layer in net.cross:
            layer.linear.weight.zero_()
            layer.linear.bias.zero_()
        net.heads.weight.zero_()
        net.heads.bias.zero_()
        net.heads.weight[:, 0] = 5.0  # cross output x = x0, whose first column is the retrieval score
    n = 4
    args = (torch.zeros(n, len(spec.dense_features)), torch.zeros(n, len(spec.cat_features), dtype=torch.long),
            torch.zeros(n, dim), torch.zeros(n, dim))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, str(out_dir / "ranker.onnx"), input_names=list(spec.onnx_inputs),
                          output_names=[spec.onnx_output],
                          dynamic_axes={**{k: {0: "n"} for k in spec.onnx_inputs}, spec.onnx_output: {0: "n"}},
                          dynamo=False, opset_version=17)
    write_json(out_dir / "ranker.json", spec.to_json())


def run(cfg) -> Path:
    """Build the synthetic bundle that ``cfg.serve.synthetic`` describes under ``${paths.bundles}``."""
    syn = dict(cfg.serve.synthetic)
    out = Path(cfg.paths.bundles) / str(syn.pop("folder"))
    write_latest = bool(syn.pop("write_latest"))
    try:
        return build_synthetic_bundle(out, SyntheticBundleSpec(**syn), write_latest=write_latest)
    except BundleError as e:
        raise BundleError(f"{e}; e.g. serve.synthetic.folder=synthetic-{syn['n_items']}") from e


def _main() -> None:
    import hydra

    @hydra.main(config_path="../conf", config_name="config", version_base=None)
    def main(cfg) -> None:
        try:
            print(run(cfg))
        except ValueError as e:
            raise SystemExit(f"training.synthetic_bundle: {e}") from None

    main()


if __name__ == "__main__":  # python -m training.synthetic_bundle serve.synthetic.n_items=100000
    _main()
