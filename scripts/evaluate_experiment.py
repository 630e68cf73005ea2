"""Read an online experiment: ``python scripts/evaluate_experiment.py experiment=<name>``.

Joins the exposure log (``serve.experiments.log_dir``) with the event log (``serve.store.event_log``)
and prints the per-variant table; the last line is one JSON object (per-variant figures, ``lift``,
``ci_low``, ``ci_high``, ``p_value``, ``srm_p_value`` and the rest of the readout). Writes
``${paths.reports}/experiments/<name>/`` (report.html with plots, results.json, quarantine.jsonl,
manifest.json). Revenue of a purchase is the item's price in the bundle (``bundle=``, default LATEST).
Reading before the planned sample size is reached prints a warning (fixed horizon); the
always-valid p-value may be watched at any time. See serving/experiments/readout.py.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from features.artifacts import code_version
from serving.experiments.exposure import ATTRIBUTIONS_FILE, EXPOSURES_FILE
from serving.experiments.readout import read_experiment
from serving.experiments.report import table, write_report
from serving.experiments.spec import ExperimentConfigError, parse_spec

log = logging.getLogger("evaluate_experiment")


def item_prices(cfg: DictConfig) -> dict[str, float] | None:
    from serving.bundle import BundleError, ITEMS, resolve

    try:
        folder = Path(cfg.bundle) if cfg.bundle else resolve(cfg.paths.bundles)
        items = pd.read_parquet(folder / ITEMS, columns=["item_key", "price"])
    except (BundleError, OSError, KeyError, ValueError) as e:
        log.warning("no item prices (revenue counts 0): %s", e)
        return None
    return dict(zip(items.item_key.astype(str), items.price.astype(float)))


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    if cfg.get("experiment") is None:
        sys.exit("choose an experiment: experiment=<name> (a file in conf/experiment/)")
    try:
        spec = parse_spec(OmegaConf.to_container(cfg.experiment, resolve=True), f"experiment={spec_name(cfg)}")
    except ExperimentConfigError as e:
        sys.exit(str(e))
    logs = Path(cfg.serve.experiments.log_dir)
    readout = read_experiment(spec, exposure_log=logs / EXPOSURES_FILE, event_log=cfg.serve.store.event_log,
                              attribution_log=logs / ATTRIBUTIONS_FILE, prices=item_prices(cfg))
    out = write_report(readout, Path(cfg.paths.reports) / "experiments" / spec.name,
                       {"experiment": spec.model_dump(mode="json"), "code_version": code_version(),
                        "inputs": {"exposures": str(logs / EXPOSURES_FILE), "events": str(cfg.serve.store.event_log),
                                   "attributions": str(logs / ATTRIBUTIONS_FILE)},
                        "n_lines": readout.result["n_lines"], "quarantined": readout.result["quarantined"]})
    print(table(readout.result))
    print(f"report: {out / 'report.html'}")
    print(json.dumps(readout.result, separators=(",", ":")))


def spec_name(cfg: DictConfig) -> str:
    return str(cfg.experiment.get("name", "?"))


if __name__ == "__main__":
    main()
