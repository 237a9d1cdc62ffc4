"""Experiment loggers: W&B (primary, charts against cumulative FLOPs) and CSV (always, for analysis offline)."""

from __future__ import annotations

import csv
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.logger import _add_prefix
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


def wandb_host() -> str:
    """The W&B server runs go to: ``WANDB_BASE_URL``, else wandb's own default (not api.wandb.ai since 0.31)."""
    import wandb

    return os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


def wandb_has_api_key() -> bool:
    """Whether wandb will find credentials for its server: asked of wandb itself (its environment variables, its
    netrc reader for the host it logs to), not by grepping ``.netrc`` for a host name, which changed in wandb 0.31."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth

        return read_netrc_auth(host=wandb_host()) is not None
    except Exception:  # noqa: BLE001 - a malformed entry or an unknown wandb layout: no usable key
        return False


def run_folders(run_dir: Path, run_id: str) -> list[Path]:
    """Every local W&B folder of the run ``run_id`` under ``run_dir/wandb`` (one per start: a resumed run, eval.py),
    oldest first: ``wandb sync`` needs them all. Two starts within one second get one name, and W&B adds ``-1``,
    ``-2``... to the later folder's."""
    pattern = re.compile(rf"^(?:offline-)?run-(\d{{8}}_\d{{6}})-{re.escape(run_id)}(?:-(\d+))?$")
    found = []
    for path in (Path(run_dir) / "wandb").glob("*run-*"):
        match = pattern.match(path.name)
        if match and path.is_dir():
            found.append(((match[1], int(match[2] or 0)), path))
    return [path for _, path in sorted(found)]


def last_logged_step(folders: list[Path]) -> int:
    """The highest trainer step any of ``folders`` logged (-1 for none): a resumed run does not log those again."""
    from peerlab.wandb_offline import history

    last = -1
    for folder in folders:
        try:
            rows = history(folder)
        except (OSError, ValueError):
            continue
        steps = [int(r["trainer/global_step"]) for r in rows if isinstance(r.get("trainer/global_step"), int | float)]
        last = max([last, *steps])
    return last


class ResumedWandbLogger(WandbLogger):
    """Lightning's W&B logger, for runs that resume. W&B's row index (``_step``) is the trainer's step, not a count
    of this process's rows: a resumed process, which W&B offline cannot tell where the run stood, continues the
    run's ``_step`` instead of restarting it at 0, so the folders of every start sync into one ordered history. And
    the steps an earlier start already logged are skipped: the resumed run trains again from its checkpoint's step
    (bit-identically), and W&B would hold those rows twice."""

    def __init__(self, *args, skip_through: int = -1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip_through = skip_through

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if step is None:
            super().log_metrics(metrics, step)
            return
        if step <= self.skip_through:
            return
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        self.experiment.log({**metrics, "trainer/global_step": step}, step=step)


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
                  rank: int = 0, group: str | None = None, tags: tuple[str, ...] = (),
                  extra_config: dict | None = None) -> list[Logger]:
    """CSV on every rank (Lightning writes it from rank 0 only) and W&B on rank 0 only: another rank would race
    rank 0 for ``wandb_id.txt`` and could leave the id of a run that never existed for the next resume. ``group``
    (a sweep's), ``tags`` and ``extra_config`` (sizes, for W&B's run table and scatters) go to W&B."""
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
    earlier = run_folders(run_dir, run_id)
    wandb_logger = ResumedWandbLogger(
        project=w.project, entity=w.entity, group=w.group or group, job_type="train",
        tags=list(dict.fromkeys([*tags, *w.tags])), name=run_name, id=run_id, save_dir=str(run_dir),
        offline=(mode == "offline"), resume="allow", config={**config, **(extra_config or {})},
        settings=wandb_settings(mode), skip_through=last_logged_step(earlier) if resume_step else -1,
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
    if mode == "offline":  # the upload command comes with the run's summary, once the folder is complete
        log.info("W&B: offline (no API key), in %s", Path(experiment.dir).parent)
    else:
        log.info("W&B: online, %s", getattr(experiment, "url", None) or w.project)
    loggers.append(wandb_logger)
    return loggers


def sync_command(folders: list[Path]) -> str:
    """``wandb sync`` of every folder of a run, oldest first (each start of a run writes its own folder)."""
    unique = list(dict.fromkeys(str(f) for f in folders))
    return "wandb sync " + " ".join(unique)


def wandb_summary(loggers: list[Logger], values: dict) -> None:
    """Put ``values`` in the W&B run's summary (the dashboards' run table and scatters read it)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.summary.update(values)


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


def wandb_settings(mode: str):
    import wandb

    # Fail within seconds rather than minutes when online but the servers cannot be reached.
    return wandb.Settings(init_timeout=30, silent=True) if mode == "online" else wandb.Settings(silent=True)


def finish_loggers(loggers: list[Logger], status: str) -> None:
    """Flush every logger; W&B's background process writes its last rows only when the run is finished."""
    for lg in loggers:
        lg.finalize(status)
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.finish(exit_code=0 if status == "success" else 1)
