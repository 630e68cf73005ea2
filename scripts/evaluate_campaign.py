"""Campaign readout: ``python scripts/evaluate_campaign.py campaign=<name> [outcomes=events|simulate|<file>]``.

The same as ``python -m serving.campaigns.evaluate`` (see that module).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from serving.campaigns import evaluate


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        res = evaluate.run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"evaluate_campaign: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(evaluate.summary(res))


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *evaluate.rewrite_argv(sys.argv[1:])]
    main()
