"""Train a campaign's model and build its audience in one go: ``python scripts/build_audience.py campaign=<name> [--ray-address ADDR]``.

The same as ``python -m training.campaigns.train campaign=<name>`` followed by
``python -m serving.campaigns.build_audience campaign=<name>`` (see those modules). An uplift
campaign (``model.kind: uplift``) is not trained here: its model is a past campaign's run folder
(``python -m training.uplift``, named by ``campaign.job.model_dir``), which the audience reads.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from serving.campaigns import build_audience
from serving.campaigns.spec import from_hydra
from training.campaigns import train


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        if from_hydra(cfg.campaign).model.kind != "uplift":
            train.run(cfg)
        res = build_audience.run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"build_audience: error: {e}", file=sys.stderr)
        sys.exit(2)
    build_audience.report(res)


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *build_audience.rewrite_argv(sys.argv[1:])]
    main()
