"""The state of every point of a sweep: from SLURM's queue and each point's ``results.json`` for
``hydra/launcher=slurm``, from ``multirun.yaml`` and the point folders for a local launcher (basic, joblib).

The launcher records, in ``<sweep dir>/.peerlab_sweep.json``, each point's folder and, once submitted, its SLURM job
id. A point is ``done`` when its results.json says ``completed``; otherwise its job's state comes from ``squeue``
(pending with SLURM's reason, running, requeued); a job that has left the queue without a completed results.json
has failed, or was interrupted, and its log is named. Nothing here needs SLURM's accounting (``sacct``).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MANIFEST = ".peerlab_sweep.json"
# Pending reasons a job never leaves by waiting: it asks for more than its partition can ever give it.
NEVER_STARTS = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidQOS",
                "InvalidAccount", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "AssocMaxCpuPerJobLimit")
ENDED = ("interrupted", "diverged", "failed")  # what results.json says of a point that stopped without finishing
RUNNING_STATES = ("RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "RESIZING")


@dataclass
class Point:
    subdir: str
    job: str | None
    state: str  # done, running, pending, failed, interrupted, diverged, unsubmitted
    reason: str = ""
    log: str | None = None


def write_manifest(sweep_dir: Path, points: list[str], jobs: dict[int, str], submitit_folder: str) -> None:
    data = {"points": points, "jobs": {str(i): j for i, j in jobs.items()}, "submitit_folder": submitit_folder}
    tmp = sweep_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(sweep_dir / MANIFEST)


def read_manifest(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise FileNotFoundError(f"{sweep_dir}: no sweep launched with hydra/launcher=slurm here (no {MANIFEST})") from None
    return data


def _normalised(overrides: list[str]) -> frozenset:
    """A point's overrides as (key, value) pairs, numbers as numbers (Hydra writes 1e12 back as 1000000000000.0)."""
    out = set()
    for o in overrides:
        key, _, value = str(o).partition("=")
        try:
            value = float(value)
        except ValueError:
            value = value.strip("'\"")
        out.add((key.lstrip("+"), value))
    return frozenset(out)


def _status(point_dir: Path) -> str | None:
    """The ``status`` in a point's results.json (None before it writes one)."""
    from peerlab.run_folder import read_results

    return (read_results(point_dir) or {}).get("status")


def local_points(sweep_dir: Path) -> list[Point]:
    """The points of a sweep run by a local launcher (Hydra's basic or joblib), from its ``multirun.yaml`` (the grid)
    and each point folder's overrides and results.json. A local launcher leaves no queue to ask: a point with a
    folder and no result is ``started`` (running now, or stopped without a result)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    meta = OmegaConf.load(sweep_dir / "multirun.yaml")
    params = meta.hydra.sweeper.get("params") or {}
    task = list(meta.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides([*(f"{k}={v}" for k, v in params.items()), *task])
    grid = BasicSweeper.split_arguments(parsed, None)[0]
    folders = {}
    for overrides_file in sweep_dir.glob("*/.hydra/overrides.yaml"):
        folders[_normalised(OmegaConf.load(overrides_file))] = overrides_file.parent.parent
    found = []
    for point in grid:
        folder = folders.get(_normalised(point))
        name = folder.name if folder is not None else " ".join(point)
        if folder is None:
            found.append(Point(name, None, "not started"))
            continue
        status = _status(folder)
        state = "done" if status == "completed" else (status if status in ENDED else "started")
        found.append(Point(name, None, state, log=str(folder / "train.log")))
    return found


def sweep_points(sweep_dir: Path, env: dict | None = None) -> list[Point]:
    """Every point of a sweep, whichever launcher ran it: SLURM's (its manifest and queue) or a local one."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such folder")
    if (sweep_dir / MANIFEST).is_file():
        return points(sweep_dir, env)
    if (sweep_dir / "multirun.yaml").is_file():
        return local_points(sweep_dir)
    raise FileNotFoundError(f"{sweep_dir}: not a sweep folder (no multirun.yaml, no {MANIFEST}): give the folder a "
                            "multirun printed at its start, e.g. runs/sweeps/<name>")


def queue(job_ids: list[str], env: dict | None = None) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` of the jobs still in SLURM's queue (array tasks as ``<array>_<task>``)."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    out = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T|%r"], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0 and "Invalid job id" not in out.stderr:  # SLURM did not answer: nothing is known
        raise RuntimeError(f"squeue failed: {out.stderr.strip() or out.returncode}")
    found = {}
    for line in out.stdout.splitlines():
        job, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        found[job] = (state, "" if reason in ("None", "(null)") else reason)
    return found


def jobs_parent(submitit_folder: str) -> Path:
    """The folder that holds one folder per job, from submitit's template (``<sweep dir>/.submitit/%j``)."""
    path = Path(submitit_folder)
    return path.parent if "%j" in path.name else path


def job_folder(submitit_folder: str, job: str) -> Path:
    return Path(submitit_folder.replace("%j", job)) if "%j" in submitit_folder else Path(submitit_folder) / job


def job_log(submitit_folder: str, job: str) -> str:
    """The job's stderr log (task 0), where submitit writes it."""
    return str(job_folder(submitit_folder, job) / f"{job}_0_log.err")


def left_without_result(submitit_folder: str, job: str) -> bool:
    """submitit writes a result file before its job exits; a job gone from the queue without one was killed (or
    exited on SIGTERM), and submitit's own wait, which asks ``sacct``, may never learn of it."""
    return not (job_folder(submitit_folder, job) / f"{job}_0_result.pkl").exists()


def points(sweep_dir: Path, env: dict | None = None) -> list[Point]:
    sweep_dir = Path(sweep_dir)
    manifest = read_manifest(sweep_dir)
    jobs = {int(i): j for i, j in manifest["jobs"].items()}
    folder = manifest["submitit_folder"]
    in_queue = queue(list(jobs.values()), env)
    found = []
    for i, subdir in enumerate(manifest["points"]):
        job = jobs.get(i)
        status = _status(sweep_dir / subdir)
        if status == "completed":
            found.append(Point(subdir, job, "done"))
        elif job is None:
            found.append(Point(subdir, None, "unsubmitted"))
        elif job in in_queue:
            state, reason = in_queue[job]
            kind = "running" if state in RUNNING_STATES else "pending"
            found.append(Point(subdir, job, kind, reason if kind == "pending" else ""))
        else:
            kind = status if status in ENDED else "failed"
            found.append(Point(subdir, job, kind, log=job_log(folder, job)))
    return found


def summary(found: list[Point]) -> str:
    """``12/32 done, 8 running, 12 pending (Priority)``, then one clause per failed point with its log."""
    counts = Counter(p.state for p in found)
    parts = [f"{counts['done']}/{len(found)} done"]
    if counts["running"]:
        parts.append(f"{counts['running']} running")
    if counts["pending"]:
        reasons = Counter(p.reason or "queued" for p in found if p.state == "pending")
        parts.append(f"{counts['pending']} pending ({', '.join(f'{r}' if n == counts['pending'] else f'{r}: {n}' for r, n in reasons.most_common())})")
    for state in ("started", "not started", "unsubmitted", "interrupted", "diverged", "failed"):
        if counts[state]:
            parts.append(f"{counts[state]} {state}")
    lines = [", ".join(parts)]
    for p in found:
        if p.state in ("failed", "interrupted", "diverged"):
            job = f"job {p.job}; " if p.job else ""
            lines.append(f"  {p.state}: {p.subdir} ({job}log: {p.log})")
        elif p.state == "pending" and p.reason in NEVER_STARTS:
            lines.append(f"  never starts: {p.subdir} (job {p.job}, Reason={p.reason}: it asks for more than its "
                         f"partition has; scancel {p.job} and lower hydra.launcher.cpus_per_task, mem_gb or gpus_per_node)")
    return "\n".join(lines)
