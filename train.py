"""Train one model for a FLOP budget: ``python train.py layer=peer model=d4 budget=3e13`` (see README)."""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from peerlab.config import register_schema
from peerlab.errors import USER_ERRORS

register_schema()
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from peerlab.train import run

    try:
        results = run(cfg)
    except USER_ERRORS as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One bad grid point (say, a budget too small for the largest model) must not stop the sweep.
            logging.getLogger("peerlab").error("error: %s", exc)
            return None
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    return results.get("final_val_loss")


if __name__ == "__main__":
    from peerlab.overrides import check_group_overrides

    problem = check_group_overrides(sys.argv[1:], CONFIG_DIR)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
