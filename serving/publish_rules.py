"""Publish bought-together rules into the serving bundle: ``python -m serving.publish_rules data=<data> [bundle=<name>]``.

``python -m features.baskets data=<data>`` mines the rules into ``${paths.artifacts}/assoc/<data>/``
(``features`` knows nothing of bundles). This command adds that ``bought_together.parquet`` to a bundle
version (``bundle=<folder or version name>``, else the one ``LATEST`` names) by publishing a NEW version
(``serving.bundle.publish_derived``): the parent's files plus the rules, a ``bought_together`` entry in the
manifest (data, source split, counts, the rules' manifest hash) and ``parent``; ``LATEST`` moves to it.
The table's item ids must be the bundle's (the same prepared data): a rule naming an item id outside the
catalogue is refused.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from features.artifacts import file_sha256, read_json
from serving.bundle import BOUGHT_TOGETHER, BundleError, publish_derived, read_manifest, resolve_bundle_dir

log = logging.getLogger(__name__)


def publish_rules(rules_dir: str | Path, bundle_dir: str | Path) -> Path:
    """A new version of ``bundle_dir`` with ``<rules_dir>/bought_together.parquet``; returns its folder."""
    rules_dir, bundle_dir = Path(rules_dir), Path(bundle_dir)
    table, man_path = rules_dir / BOUGHT_TOGETHER, rules_dir / "manifest.json"
    if not table.is_file() or not man_path.is_file():
        raise BundleError(f"{table}: missing (mine the rules first: python -m features.baskets data=<data>)")
    rules_m = read_json(man_path)
    n_items = int(read_manifest(bundle_dir)["n_items"])
    ids = pd.read_parquet(table, columns=["item_id", "other_item_id"])
    bad = ids[(ids < 0).any(axis=1) | (ids >= n_items).any(axis=1)]
    if len(bad):
        raise BundleError(f"{table}: item id {int(bad.to_numpy().max())} outside the bundle's catalogue "
                          f"(n_items={n_items} in {bundle_dir / 'manifest.json'}): rules from other data")
    entry = {"data": rules_m.get("data"), "source": rules_m.get("source"), "n_rules": rules_m.get("n_rules"),
             "n_baskets": rules_m.get("n_baskets"), "rules_manifest_sha256": file_sha256(man_path)}
    return publish_derived(bundle_dir, add_files={BOUGHT_TOGETHER: table}, manifest_updates={"bought_together": entry})


def run(cfg: DictConfig) -> Path:
    rules_dir = Path(str(cfg.paths.artifacts)) / "assoc" / str(cfg.data.name)
    bundle = resolve_bundle_dir(cfg.get("bundle"), Path(str(cfg.paths.bundles)))
    new = publish_rules(rules_dir, bundle)
    log.info("bought-together rules of %s published as %s (parent %s)", rules_dir, new, bundle.name)
    return new


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        new = run(cfg)
    except ValueError as e:  # BundleError is a ValueError
        print(f"publish_rules: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"bundle": new.name, "parent": read_manifest(new)["parent"]}))


if __name__ == "__main__":
    main()
