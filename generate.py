"""Text from a checkpoint: ``python generate.py ckpt=<path> prompt="..." max_new_tokens=N temperature=T top_k=K
seed=S`` (see docs/data-and-evaluation.md, "Text from a checkpoint")."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from peerlab.config import register_resolvers

register_resolvers()
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@hydra.main(version_base="1.3", config_path="configs", config_name="generate")
def main(cfg: DictConfig) -> None:
    from peerlab.errors import USER_ERRORS
    from peerlab.generate import run

    try:
        run(cfg)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from peerlab.entry import run_checked
    from peerlab.generate import check

    run_checked(main, sys.argv[1:], "generate.py", CONFIG_DIR, "generate", check=check, sweeps=False, closed=True)
