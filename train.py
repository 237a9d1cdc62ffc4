"""Train one model for a FLOP budget: ``python train.py layer=peer model=d4 budget=3e13`` (see docs/training.md)."""

import logging
import sys
from pathlib import Path

from peerlab.allocator import reexec_with_tunables

if __name__ == "__main__":
    reexec_with_tunables()  # before any tensor exists: freed blocks stay in the process (src/peerlab/allocator.py)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from peerlab.config import register_schema  # noqa: E402
from peerlab.errors import USER_ERRORS  # noqa: E402

register_schema()
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_SIGTERM, EXIT_SIGINT = 2, 3, 143, 130


def _fail(message: str, code: int) -> None:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        # One bad or diverging grid point must not stop the sweep; its results.json records what happened.
        logging.getLogger("peerlab").error("error: %s", message)
        return
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from peerlab.preemption import Preempted
    from peerlab.train import output_dir, run

    try:
        results = run(cfg)
    except USER_ERRORS as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except FloatingPointError as exc:
        return _fail(f"training diverged: {exc}; the last good checkpoint is kept in {output_dir(cfg)}/checkpoints "
                     "and results.json has status 'diverged'", EXIT_DIVERGED)
    except Preempted as exc:
        from peerlab.parallel.distributed import global_rank

        if global_rank() == 0:  # every rank stops at the same step; one of them says so
            print(f"interrupted: {exc} in {output_dir(cfg)}/checkpoints; {exc.next_action()}", file=sys.stderr, flush=True)
        exc.hand_over()  # submitit's handler requeues and exits here
        sys.exit(exc.exit_code)
    except SIGTERMException:  # Lightning's, before training started: no step had been taken since last.ckpt
        print(f"interrupted by SIGTERM before training started; {output_dir(cfg)}/checkpoints is unchanged; "
              "rerun the same command to resume", file=sys.stderr)
        sys.exit(EXIT_SIGTERM)
    except KeyboardInterrupt:  # Ctrl-C before training started or during the final evaluation: nothing lost
        print(f"interrupted (Ctrl-C) outside training; {output_dir(cfg)}/checkpoints is unchanged; "
              "rerun the same command to resume", file=sys.stderr)
        sys.exit(EXIT_SIGINT)
    return results.get("final_val_loss")


def check(cfg: DictConfig) -> None:
    """What every point must pass before anything runs: the config's checks and the mixer's sizes."""
    from peerlab.config import validate
    from peerlab.train import check_mixer

    validate(cfg)
    check_mixer(cfg)


if __name__ == "__main__":
    from peerlab.entry import run_checked

    run_checked(main, sys.argv[1:], "train.py", CONFIG_DIR, "train", check=check)
