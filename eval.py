"""Perplexity of checkpoints on evaluation sets: ``python eval.py ckpt=<path> eval_sets=[embedded,c4]`` (see docs/data-and-evaluation.md)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from peerlab.config import register_resolvers

register_resolvers()
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from peerlab.errors import USER_ERRORS
    from peerlab.evaluate import run_eval

    try:
        run_eval(cfg)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from peerlab.entry import run_checked
    from peerlab.evaluate import validate_eval

    run_checked(main, sys.argv[1:], "eval.py", CONFIG_DIR, "eval", check=validate_eval, sweeps=False, closed=True)
