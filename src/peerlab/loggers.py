"""Experiment loggers: W&B (primary, charts against cumulative FLOPs) and CSV (always, for analysis offline)."""

from __future__ import annotations

import csv
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)


def wandb_has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def wandb_mode(requested: str) -> str:
    """``auto`` -> ``online`` when an API key is configured, else ``offline``; ``WANDB_MODE`` wins if set."""
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled", "dryrun"):
        return "offline" if env == "dryrun" else env
    if requested != "auto":
        return requested
    return "online" if wandb_has_api_key() else "offline"


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; on resume, keep the rows logged before the
    checkpoint's step instead (rows logged after it, before the kill, are dropped: they are logged again)."""

    def __init__(self, log_dir: str, resume_step: int) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") not in (None, "") and int(float(r["step"])) < self.resume_step]
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)
        self.metrics_keys = sorted(keys)


class ResumableCSVLogger(CSVLogger):
    def __init__(self, save_dir: str, resume_step: int) -> None:
        # Flushed at every logging step, so a killed run loses at most the row being written.
        super().__init__(save_dir=save_dir, name="csv", version="", flush_logs_every_n_steps=1)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment  # as Lightning's own: other ranks get a stand-in, and never rewrite metrics.csv
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _ResumableWriter(self.log_dir, self.resume_step)
        return self._experiment


def build_loggers(cfg: Any, run_dir: Path, run_name: str, config: dict, resume_step: int = 0,
                  rank: int = 0) -> list[Logger]:
    """CSV on every rank (Lightning writes it from rank 0 only) and W&B on rank 0 only: another rank would race
    rank 0 for ``wandb_id.txt`` and could leave the id of a run that never existed for the next resume."""
    loggers: list[Logger] = [ResumableCSVLogger(save_dir=str(run_dir), resume_step=resume_step)]
    w = cfg.logger.wandb
    mode = wandb_mode(w.mode) if w.enabled else "disabled"
    if mode == "disabled" or rank > 0:
        return loggers
    # A stable id per run directory makes a resumed run append to the same W&B run instead of starting anew.
    id_file = run_dir / "wandb_id.txt"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
    wandb_logger = WandbLogger(
        project=w.project, entity=w.entity, group=w.group, tags=list(w.tags), name=run_name, id=run_id,
        save_dir=str(run_dir), offline=(mode == "offline"), resume="allow", config=config,
        settings=_wandb_settings(mode),
    )
    # Lightning passes anonymous=None to wandb.init, which makes W&B warn that the setting has no effect.
    if wandb_logger._wandb_init.get("anonymous") is None:
        wandb_logger._wandb_init.pop("anonymous", None)
    experiment = _start_wandb(wandb_logger)
    if experiment is None:
        return loggers
    # Loss against FLOPs is the chart that matters for isoFLOP work: make cumulative FLOPs every chart's x-axis.
    experiment.define_metric("flops")
    experiment.define_metric("*", step_metric="flops")
    if mode == "offline":
        log.info("W&B: offline (no API key); upload later with: wandb sync %s", Path(experiment.dir).parent)
    else:
        log.info("W&B: online, %s", getattr(experiment, "url", None) or w.project)
    loggers.append(wandb_logger)
    return loggers


def _start_wandb(wandb_logger: WandbLogger, patience_s: float = 30.0):
    """Start the W&B run. After a SIGKILL, the killed process's W&B service can hold the run id for a few seconds
    ("run ID ... is in use"): wait for it to exit. If W&B still cannot start, train anyway (CSV keeps every row)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return wandb_logger.experiment
        except Exception as exc:  # wandb raises its own, version-specific classes
            if "in use" in str(exc) and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            log.warning("W&B could not start (%s); continuing with the CSV logger only", str(exc).splitlines()[0])
            return None


def _wandb_settings(mode: str):
    import wandb

    # Fail within seconds rather than minutes when online but the servers cannot be reached.
    return wandb.Settings(init_timeout=30, silent=True) if mode == "online" else wandb.Settings(silent=True)


def finish_loggers(loggers: list[Logger], status: str) -> None:
    """Flush every logger; W&B's background process writes its last rows only when the run is finished."""
    for lg in loggers:
        lg.finalize(status)
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.finish(exit_code=0 if status == "success" else 1)
