"""New items from their content: fit the item content tower, embed items without interactions, serve them.

``python -m training.cold_items bundle=<version|folder> +items=<new items file> [data=<name>]`` publishes a
derived bundle version (``serving.bundle.publish_derived``) in which every new item has an embedding, so the
recommendation and ``/v1/items/{id}/similar`` endpoints can return it, without retraining the sequence model:

1. the tokens of every item (``item_tokens``): ``attr:<id>`` per attribute id, ``cat:<category>``,
   ``price:<band>`` (quintile of the price among the items the tower is fitted on) and ``word:<w>`` per word of a
   ``title`` column, where the data has them;
2. the content tower (``models.item_content.ItemContentTower``) is fitted to regress the bundle's item
   embeddings of the items with interactions (``popularity > 0``): mean squared error on the embeddings
   standardised per dimension, AdamW, a seeded 10 %
   of those items held out to report how well it generalises (``fit`` figures in the manifest);
3. the new items get the tower's embedding and the next item ids; ``items.parquet`` and
   ``item_embeddings.npy`` grow by those rows; the encoder's item table (the ONNX initializer of shape
   ``[n_items + 1, dim]``, SASRec's) grows by the same rows, so a user whose history holds a new item is
   encoded too; a saved ANN index is left out (search is exact until ``serving.build_index`` runs again).

The new items file (csv, json lines or parquet): ``item_key`` (required, not in the bundle yet),
``category``, ``price``, ``attributes`` (a list of ids or a space-separated string), ``title``; missing
columns are simply absent tokens. The existing items' tokens come from the prepared data the bundle was
trained on (``manifest.trained_on.data``, else ``data=``).

The cold-item benchmark (``scripts/bench_cold_items.py``, ``training.cold_protocol``) uses the same tower.
"""
from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.item_content import ItemContentTower

log = logging.getLogger(__name__)

PRICE_BANDS = 5
MAX_TOKENS = 32
_WORD = re.compile(r"[a-z0-9]+")


def _attr_list(value) -> list:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [v for v in re.split(r"[\s,;|]+", value.strip()) if v]
    return list(value)


def _price(items: pd.DataFrame) -> np.ndarray:
    for col in ("price", "price_median"):
        if col in items:
            return pd.to_numeric(items[col], errors="coerce").to_numpy(np.float64)
    return np.full(len(items), np.nan)


def price_edges(items: pd.DataFrame, bands: int = PRICE_BANDS) -> np.ndarray:
    """Quantile edges of the known prices (empty when the data has none)."""
    p = _price(items)
    p = p[np.isfinite(p)]
    return np.unique(np.quantile(p, np.linspace(0, 1, bands + 1)[1:-1])) if len(p) else np.zeros(0)


def item_tokens(items: pd.DataFrame, edges: np.ndarray) -> list[list[str]]:
    """The token bag of each row of ``items`` (module docstring)."""
    price = _price(items)
    cats = items["category"] if "category" in items else pd.Series([None] * len(items))
    attrs = items["attributes"] if "attributes" in items else pd.Series([None] * len(items))
    titles = items["title"] if "title" in items else pd.Series([None] * len(items))
    out = []
    for c, a, t, p in zip(cats.tolist(), attrs.tolist(), titles.tolist(), price):
        bag = [f"attr:{v}" for v in _attr_list(a)]
        if c is not None and not (isinstance(c, float) and np.isnan(c)) and str(c):
            bag.append(f"cat:{c}")
        if np.isfinite(p) and len(edges):
            bag.append(f"price:{int(np.searchsorted(edges, p, side='right'))}")
        if isinstance(t, str):
            bag.extend(f"word:{w}" for w in _WORD.findall(t.lower()))
        out.append(list(dict.fromkeys(bag))[:MAX_TOKENS])
    return out


def token_matrix(bags: list[list[str]], vocab: dict[str, int]) -> torch.Tensor:
    """``[len(bags), T]`` token ids (0 = padding; tokens outside ``vocab`` dropped)."""
    ids = [[vocab[t] for t in bag if t in vocab] for bag in bags]
    width = max(1, max((len(r) for r in ids), default=0))
    out = np.zeros((len(ids), width), np.int64)
    for i, r in enumerate(ids):
        out[i, : len(r)] = r
    return torch.from_numpy(out)


@dataclass
class ContentModel:
    """A fitted tower with what it needs to embed an items table."""

    tower: ItemContentTower
    vocab: dict[str, int]
    edges: np.ndarray
    mean: np.ndarray                 # the tower predicts standardised embeddings: out * scale + mean
    scale: np.ndarray
    figures: dict = field(default_factory=dict)

    def embed(self, items: pd.DataFrame) -> np.ndarray:
        """``[len(items), dim]`` float32 embeddings of the rows of ``items``."""
        self.tower.eval()
        with torch.no_grad():
            z = self.tower(token_matrix(item_tokens(items, self.edges), self.vocab)).numpy()
        return (z * self.scale + self.mean).astype(np.float32)


@dataclass(frozen=True)
class FitSettings:
    hidden: int = 128
    dropout: float = 0.1
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    valid_share: float = 0.1
    seed: int = 0


def fit_content_tower(items: pd.DataFrame, targets: np.ndarray, settings: FitSettings = FitSettings()) -> ContentModel:
    """Fit the tower on the rows of ``items`` to regress ``targets`` ``[len(items), dim]`` (MSE on the targets
    standardised per dimension); the vocabulary holds every token of a training row. A seeded ``valid_share`` of the rows is held out: ``figures`` reports
    their mean cosine with the target and the MSE, against the "mean embedding" baseline."""
    s = settings
    if len(items) != len(targets):
        raise ValueError(f"fit_content_tower: {len(items)} items but {len(targets)} target embeddings")
    if len(items) < 2:
        raise ValueError("fit_content_tower: at least 2 items with interactions are needed")
    g = np.random.default_rng(s.seed)
    perm = g.permutation(len(items))
    n_valid = int(round(s.valid_share * len(items))) if len(items) >= 20 else 0
    valid, train = perm[:n_valid], perm[n_valid:]
    edges = price_edges(items.iloc[train])
    bags = item_tokens(items, edges)
    vocab: dict[str, int] = {}
    for i in train:
        for t in bags[i]:
            vocab.setdefault(t, len(vocab) + 1)
    x = token_matrix(bags, vocab)
    raw = torch.as_tensor(np.asarray(targets, np.float32))
    mu, sd = raw[train].mean(0), raw[train].std(0).clamp(min=1e-6) if len(train) > 1 else torch.ones(raw.shape[1])
    y = (raw - mu) / sd
    torch.manual_seed(s.seed)
    tower = ItemContentTower(max(1, len(vocab)), y.shape[1], s.hidden, s.dropout)
    opt = torch.optim.AdamW(tower.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    tr = torch.from_numpy(train)
    gen = torch.Generator().manual_seed(s.seed)
    for _ in range(s.epochs):
        tower.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        for a in range(0, len(order), s.batch_size):
            b = order[a:a + s.batch_size]
            loss = torch.nn.functional.mse_loss(tower(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model = ContentModel(tower.eval(), vocab, edges, mu.numpy(), sd.numpy())
    figures = {"items": int(len(items)), "train_items": int(len(train)), "valid_items": int(n_valid),
               "vocabulary": len(vocab), "epochs": s.epochs, "loss": "mse"}
    if n_valid:
        with torch.no_grad():
            pred = tower(x[valid]) * sd + mu
        yv = raw[valid]
        mean = mu.unsqueeze(0).expand_as(yv)
        cos = torch.nn.functional.cosine_similarity
        figures.update({"valid_cosine": float(cos(pred, yv).mean()), "valid_mse": float(((pred - yv) ** 2).mean()),
                        "valid_cosine_mean_baseline": float(cos(mean, yv).mean()),
                        "valid_mse_mean_baseline": float(((mean - yv) ** 2).mean())})
    model.figures = figures
    return model


# --------------------------------------------------------------------------- adding items to a bundle
def read_new_items(path: str | Path) -> pd.DataFrame:
    """The new items file (csv, .jsonl/.json lines or parquet) with at least ``item_key``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"items={p}: file not found")
    if p.suffix == ".parquet":
        df = pd.read_parquet(p)
    elif p.suffix in (".jsonl", ".json"):
        df = pd.read_json(p, lines=True)
    else:
        df = pd.read_csv(p, dtype={"item_key": str, "category": str})
    if "item_key" not in df:
        raise ValueError(f"items={p}: no 'item_key' column (columns: {list(df.columns)})")
    df["item_key"] = df["item_key"].astype(str)
    if df["item_key"].duplicated().any():
        raise ValueError(f"items={p}: item_key {df['item_key'][df['item_key'].duplicated()].iloc[0]!r} repeats")
    return df.reset_index(drop=True)


def extend_encoder(src: Path, dst: Path, n_items: int, new_rows: np.ndarray) -> bool:
    """Write ``src`` (ONNX) to ``dst`` with the one initializer of shape ``[n_items + 1, dim]`` (the item table)
    grown by ``new_rows``. False (``dst`` not written) when the encoder has no such single initializer."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    dim = new_rows.shape[1]
    hits = [t for t in model.graph.initializer if list(t.dims) == [n_items + 1, dim]]
    if len(hits) != 1:
        return False
    t = hits[0]
    table = numpy_helper.to_array(t)
    grown = np.concatenate([table, new_rows.astype(table.dtype)], axis=0)
    t.CopyFrom(numpy_helper.from_array(grown, t.name))
    onnx.save(model, str(dst))
    return True


def add_items(bundle_dir: Path, new_items: pd.DataFrame, known_items: pd.DataFrame,
              settings: FitSettings = FitSettings(), latest: bool = True) -> Path:
    """Publish a derived version of ``bundle_dir`` holding ``new_items`` (module docstring). ``known_items``: the
    bundle's items with their content columns (``item_id`` aligned with the bundle; ``attributes``, ``title``...)."""
    from serving.bundle import (ENCODER, INDEX_DIR, ITEM_EMBEDDINGS, ITEMS, publish_derived, read_embeddings,
                                read_manifest)

    m = read_manifest(bundle_dir)
    emb = read_embeddings(bundle_dir, m)
    items = pd.read_parquet(bundle_dir / ITEMS).sort_values("item_id").reset_index(drop=True)
    n = int(m["n_items"])
    clash = new_items["item_key"][new_items["item_key"].isin(items["item_key"].astype(str))]
    if len(clash):
        raise ValueError(f"items: item_key {clash.iloc[0]!r} is in the bundle already ({len(clash)} such keys)")
    content = items[["item_id", "item_key"]].merge(
        known_items.drop(columns=[c for c in ("item_key",) if c in known_items]), on="item_id", how="left")
    for col in ("category", "price"):
        if col in items:
            content[col] = items[col]
    warm = items["popularity"].to_numpy() > 0 if "popularity" in items else np.ones(n, bool)
    model = fit_content_tower(content[warm].reset_index(drop=True), emb[warm], settings)
    new_emb = model.embed(new_items)
    ids = np.arange(n, n + len(new_items), dtype=np.int64)
    rows = pd.DataFrame({"item_id": ids, "item_key": new_items["item_key"].to_numpy(),
                         "category": new_items["category"].astype(object).where(new_items["category"].notna(), None)
                         if "category" in new_items else None,
                         "price": pd.to_numeric(new_items["price"], errors="coerce").astype("float64")
                         if "price" in new_items else np.nan,
                         "popularity": np.zeros(len(ids), np.int64), "available": True})
    table = pd.concat([items, rows[items.columns]], ignore_index=True)
    all_emb = np.concatenate([emb, new_emb]).astype(np.float32)
    encoder_grown = [False]

    def write(folder: Path) -> None:
        table.to_parquet(folder / ITEMS, index=False)
        np.save(folder / ITEM_EMBEDDINGS, all_emb)
        encoder_grown[0] = extend_encoder(bundle_dir / ENCODER, folder / ENCODER, n, new_emb)

    new_keys = new_items["item_key"].tolist()
    note = {"method": "content tower (models.item_content) regressing the item embeddings of items with "
                      "interactions (MSE)", "new_items": len(new_keys), "new_item_keys": new_keys[:50],
            "fit": model.figures}
    out = publish_derived(bundle_dir, write=write, remove=(INDEX_DIR,) if (bundle_dir / INDEX_DIR).exists() else (),
                          manifest_updates={"n_items": int(len(table)), "content_items": note,
                                            "counts": {**(m.get("counts") or {}), "items": int(len(table))}},
                          latest=latest)
    if not encoder_grown[0]:
        log.warning("%s: encoder.onnx has no single [n_items + 1, dim] item table; a history holding a new item "
                    "cannot be encoded", out)
    log.info("bundle %s: %d new items embedded from their content (valid cosine %s)", out, len(new_keys),
             model.figures.get("valid_cosine"))
    return out


def _known_items(pdir: Path) -> pd.DataFrame:
    """``item_id`` and the content columns (attributes, title) of the prepared items; none when ``pdir`` has no
    prepared items (a bundle without prepared data: its category and price are the only tokens)."""
    from features.processed import load_items

    if not (pdir / "items.parquet").exists():
        log.warning("%s: no prepared items; the tokens are the bundle's category and price only", pdir)
        return pd.DataFrame({"item_id": pd.Series([], dtype="int64")})
    it = load_items(pdir)
    keep = [c for c in ("item_id", "attributes", "title") if c in it]
    return it[keep]


def run(cfg) -> Path:
    """Resolve the bundle (``bundle=``, else ``LATEST``) and its prepared data, then ``add_items``."""
    from serving.bundle import read_manifest, resolve_bundle_dir

    if not cfg.get("items"):
        raise ValueError("+items=<file of new items> is required (csv, jsonl or parquet with an item_key column)")
    bundle_dir = resolve_bundle_dir(cfg.get("bundle"), str(cfg.paths.bundles))
    m = read_manifest(bundle_dir)
    data = (m.get("trained_on") or {}).get("data") or str(cfg.data.name)   # the data the bundle was trained on
    return add_items(bundle_dir, read_new_items(cfg.get("items")), _known_items(Path(str(cfg.paths.processed)) / data))


def main() -> None:
    import hydra

    from serving.bundle import BundleError

    @hydra.main(config_path="../conf", config_name="config", version_base=None)
    def _main(cfg) -> None:
        try:
            out = run(cfg)
        except (ValueError, FileNotFoundError, BundleError) as err:
            print(f"training.cold_items: error: {err}", file=sys.stderr)
            sys.exit(2)
        print(f"bundle: {out}")

    _main()


if __name__ == "__main__":
    main()
