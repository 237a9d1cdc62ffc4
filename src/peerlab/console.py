"""A console that states each fact once: Lightning's duplicate handler removed and known third-party noise
filtered by its exact message and origin. Nothing is silenced by category, and our own warnings always show.

Four sources of noise on a fresh start, each matched precisely:

- Lightning attaches its own console handler to the ``lightning`` logger, which also propagates to the root logger
  that Hydra configures, so every Lightning INFO line printed twice. Under a configured root logger we drop
  Lightning's handler and let Hydra's (console and ``train.log``) print it once.
- Lightning's INFO lines that describe no choice of ours: the litlogger advertisement, "GPU/TPU/HPU available"
  (the start-up line ``device: ...`` says what the run uses), "`Trainer.fit` stopped: `max_steps=N` reached"
  (the final summary says it).
- A ``FutureWarning`` raised by torch's ``LeafSpec`` inside Lightning's ``_pytree`` helper, and W&B's
  "anonymous setting has no effect" warning, caused by Lightning passing ``anonymous=None`` to ``wandb.init``
  (removed where the logger is built, see :mod:`peerlab.loggers`).
- Lightning's "The `srun` command is available on your system but is not used" warning, raised on every machine
  with SLURM's clients installed (a login node, a workstation): its hint to prepend ``srun`` is not how peerlab
  reaches SLURM (``hydra/launcher=slurm``, whose jobs do run under ``srun``).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

# (logger name, message pattern) of the Lightning INFO records that are dropped.
LIGHTNING_NOISE = (
    ("lightning.pytorch.utilities.rank_zero", re.compile(r"💡 Tip: .*litlogger")),
    ("lightning.pytorch.utilities.rank_zero", re.compile(r"^(GPU|TPU|HPU) available: ")),
    ("lightning.pytorch.utilities.rank_zero", re.compile(r"^`Trainer\.fit` stopped: `max_steps=\d+` reached")),
)
# (message pattern, category, module of the warning's location) of third-party warnings that are ignored.
WARNING_NOISE = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    (r"The `srun` command is available on your system but is not used", UserWarning,
     r"lightning\.fabric\.plugins\.environments\.slurm"),
)
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


class _DropMessages(logging.Filter):
    def __init__(self, patterns: list[re.Pattern]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def quiet_third_party() -> None:
    """Install the filters above; idempotent, safe to call from every run."""
    for message, category, module in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    by_logger: dict[str, list[re.Pattern]] = {}
    for name, pattern in LIGHTNING_NOISE:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(patterns))
    if logging.getLogger().handlers:  # a configured root (Hydra's job logging) prints Lightning's records once
        for name in LIGHTNING_LOGGERS:
            logger = logging.getLogger(name)
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True


def one_log_per_rank(rank: int) -> None:
    """Hydra gives every process of a job the same ``train.log``; a rank above 0 writes ``train.rank<r>.log``
    beside it instead, so that ranks never interleave lines in one file."""
    if rank == 0:
        return
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h) is logging.FileHandler]:
        path = Path(handler.baseFilename)
        if path.stem.endswith(f".rank{rank}"):
            continue
        own = logging.FileHandler(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"), mode="a")
        own.setFormatter(handler.formatter)
        own.setLevel(handler.level)
        root.removeHandler(handler)
        handler.close()
        root.addHandler(own)
