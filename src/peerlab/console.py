"""A console that states each fact once: Lightning's duplicate handler removed and known third-party noise
filtered by its exact message and origin. Nothing is silenced by category, and our own warnings always show.

The sources of noise, each matched precisely:

- Lightning attaches its own console handler to the ``lightning`` logger, which also propagates to the root logger
  that Hydra configures, so every Lightning INFO line printed twice. Under a configured root logger we drop
  Lightning's handler and let Hydra's (console and ``train.log``) print it once.
- Lightning's INFO lines that describe no choice of ours: the litlogger advertisement, "GPU/TPU/HPU available"
  (the start-up line ``device: ...`` says what the run uses), "`Trainer.fit` stopped: `max_steps=N` reached"
  (the final summary says it).
- A ``FutureWarning`` raised by torch's ``LeafSpec`` inside Lightning's ``_pytree`` helper, and W&B's
  "anonymous setting has no effect" warning, caused by Lightning passing ``anonymous=None`` to ``wandb.init``
  (removed where the logger is built, see :mod:`peerlab.loggers`).
- Under DDP and FSDP: FSDP2's warning that a unit returned a view (a mixer's reshaped output, added to the
  residual stream out of place), and Lightning's advice to ``sync_dist`` the validation metrics, which peerlab
  sums over ranks itself.
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
    ("lightning.pytorch.utilities.rank_zero", re.compile(r"💡 Tip: .*litmodels")),
    ("lightning.pytorch.utilities.rank_zero", re.compile(r"^(GPU|TPU|HPU) available: ")),
    ("lightning.pytorch.utilities.rank_zero", re.compile(r"^`Trainer\.fit` stopped: `max_steps=\d+` reached")),
)
# (message pattern, category, module of the warning's location) of third-party warnings that are ignored.
WARNING_NOISE = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    (r"The `srun` command is available on your system but is not used", UserWarning,
     r"lightning\.fabric\.plugins\.environments\.slurm"),
    # FSDP2 warns when a unit returns a view; a mixer's output (b, t, d) is a view of its (tokens, d) result, and
    # the block adds it to the residual stream out of place, which keeps FSDP's backward hook (peerlab.parallel.fsdp).
    (r"FSDP2-wrapped module \(FSDP\w+\) returned a view tensor", UserWarning,
     r"torch\.distributed\.fsdp\._fully_shard\._fsdp_state"),
    # The validation loss and usage that peerlab logs on epoch level are already summed over ranks by peerlab.
    (r"It is recommended to use `self\.log\('(val/[\w/]+|flops|tokens)', \.\.\., sync_dist=True\)`", UserWarning,
     r"lightning\.pytorch\.trainer\.connectors\.logger_connector\.result"),
    # best.ckpt's folder holds the run's own last.ckpt whenever a run resumes: the run folder's rules
    # (peerlab.run_folder) already decided that what is there is this run's
    (r"Checkpoint directory .*checkpoints exists and is not empty", UserWarning, r""),
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
    """Hydra gives every process of a job the same ``train.log`` (or, under Lightning's own launcher, its own
    ``train_ddp_process_<r>.log``); a rank above 0 writes ``train.rank<r>.log`` beside it instead, so that ranks never
    interleave lines in one file and every rank's log has the same name in every launcher. On the console a rank
    above 0 shows warnings and errors only: the start-up facts are rank 0's to say."""
    if rank == 0:
        return
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        handler.setLevel(max(handler.level, logging.WARNING))  # rank 0 states the run's facts on the console, once
    for handler in [h for h in root.handlers if type(h) is logging.FileHandler]:
        path = Path(handler.baseFilename)
        if path.stem.endswith(f".rank{rank}"):
            continue
        # Lightning's own launcher starts rank r as the Hydra job "<name>_ddp_process_<r>": the same "<name>".
        stem = re.sub(r"_ddp_process_\d+$", "", path.stem)
        own = logging.FileHandler(path.with_name(f"{stem}.rank{rank}{path.suffix}"), mode="a")
        own.setFormatter(handler.formatter)
        own.setLevel(handler.level)
        root.removeHandler(handler)
        handler.close()
        if stem != path.stem and path.is_file() and path.stat().st_size == 0:
            path.unlink()  # the empty file Hydra opened under the launcher's job name
        root.addHandler(own)
