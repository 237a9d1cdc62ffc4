"""What ``hydra/launcher=slurm`` adds to Hydra's submitit launcher (the class itself is
``hydra_plugins.peerlab_launcher.SlurmLauncher``: Hydra loads launchers from that namespace only).

Before anything is submitted, each point's config is composed and checked against the request, one line per
problem (exit status 2): SLURM tasks per node must equal ``trainer.devices`` and nodes ``trainer.num_nodes``
(Lightning's SLURM environment runs one process per task); ``gpus_per_node`` null or 0 asks for no GPU; and where
``sinfo`` answers, a request larger than every node of the partition (CPUs, memory, GPUs) is refused instead of
pending forever. While the jobs run, one line says where the sweep stands whenever that changes
(``3/8 done, 2 running, 3 pending (Priority)``, failed points with their logs), from ``squeue`` and each point's
results.json (:mod:`peerlab.sweeps.status`); ``python -m peerlab.sweeps status <sweep dir>`` prints the same line
from another shell.
"""

from __future__ import annotations

import _thread
import logging
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peerlab.config  # noqa: F401  (registers the resolvers a job needs to name its folder)
from peerlab.sweeps import status

log = logging.getLogger(__name__)
POLL_S = 5.0


class DropSacctBypass(logging.Filter):
    """submitit polls ``sacct`` and warns at every poll where SLURM keeps no accounting; the status line says
    where the jobs are, from ``squeue``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bypassing sacct error" not in record.getMessage()


def partition_limits(partition: str | None) -> dict[str, Any] | None:
    """The largest node of ``partition`` (the default one when None): ``{"name", "cpus", "mem_mb", "gpus"}``, or
    None when ``sinfo`` cannot tell."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%m|%G"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    best: dict[str, Any] | None = None
    for line in out.stdout.splitlines():
        try:
            name, cpus, mem, gres = line.strip().split("|")
            cpus_n, mem_n = int(cpus.rstrip("+")), int(mem.rstrip("+"))
        except ValueError:
            continue
        default = name.endswith("*")
        name = name.rstrip("*")
        if (partition is None and not default) or (partition is not None and name != partition):
            continue
        gpus = _gpus(gres)
        if best is None:
            best = {"name": name, "cpus": cpus_n, "mem_mb": mem_n, "gpus": gpus}
        else:
            best.update(cpus=max(best["cpus"], cpus_n), mem_mb=max(best["mem_mb"], mem_n), gpus=max(best["gpus"], gpus))
    return best


def _gpus(gres: str) -> int:
    """GPUs per node from sinfo's %G: ``gpu:8``, ``gpu:h100:8(S:0-1)``, ``(null)``."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        fields = item.strip().split(":")
        if fields[0] == "gpu" and len(fields) > 1 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def _devices(trainer: Any, gpus_per_node: int | None) -> int | None:
    devices = trainer.devices
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, list | tuple) or hasattr(devices, "__len__") and not isinstance(devices, str):
        return len(devices)
    if str(devices) in ("auto", "-1"):  # every visible GPU of the job's, or one CPU process
        return gpus_per_node or 1
    return None


def request_problem(params: dict, trainers: Sequence[Any], limits: dict | None) -> str | None:
    """The first reason this request cannot run as asked, as one line naming the key; None when it can."""
    tasks, nodes, gpus = params.get("tasks_per_node") or 1, params.get("nodes") or 1, params.get("gpus_per_node")
    for trainer in trainers:
        devices = _devices(trainer, gpus)
        if devices is not None and devices != tasks:
            return (f"hydra.launcher.tasks_per_node={tasks}: must equal trainer.devices={trainer.devices} ({devices} "
                    "processes per node; Lightning runs one per SLURM task); set both to the same number")
        if trainer.num_nodes != nodes:
            return (f"hydra.launcher.nodes={nodes}: must equal trainer.num_nodes={trainer.num_nodes}; set both to "
                    "the same number")
    if limits is None:
        return None
    where = f"partition {limits['name']!r}"
    if gpus and limits["gpus"] == 0:
        return (f"hydra.launcher.gpus_per_node={gpus}: {where} has no GPUs (sinfo); on a CPU partition set "
                "hydra.launcher.gpus_per_node=null")
    if gpus and gpus > limits["gpus"]:
        return f"hydra.launcher.gpus_per_node={gpus}: the largest node of {where} has {limits['gpus']} GPUs"
    cpus = (params.get("cpus_per_task") or 1) * tasks
    if cpus > limits["cpus"]:
        return (f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')}: x tasks_per_node={tasks} asks for {cpus} "
                f"CPUs per node, and the largest node of {where} has {limits['cpus']}; the job would pend forever")
    mem_gb = params.get("mem_gb")
    if mem_gb and mem_gb * 1024 > limits["mem_mb"]:
        return (f"hydra.launcher.mem_gb={mem_gb}: the largest node of {where} has {limits['mem_mb'] / 1024:.1f} GB; "
                "the job would pend forever")
    return None


class Watcher(threading.Thread):
    """Logs the sweep's state line whenever it changes, until the launcher has every result."""

    def __init__(self, sweep_dir: Path, subdirs: list[str], submitit_folder: str) -> None:
        super().__init__(daemon=True, name="peerlab-sweep-status")
        self.sweep_dir, self.subdirs, self.template = sweep_dir, subdirs, submitit_folder
        self.folder = status.jobs_parent(submitit_folder)
        self._launched_at = time.time() - 1
        self._done = threading.Event()
        self._jobs: dict[int, str] = {}
        self._last = ""
        self._dead_polls = 0
        self.gave_up = False

    def _find_jobs(self) -> None:
        # submitit names a job's folder by its id: <array id>_<task> for task i = point i of this launch, or the plain
        # job id when the launch has one point.
        if len(self._jobs) == len(self.subdirs) or not self.folder.is_dir():
            return
        known = set(self._jobs.values())
        before = len(self._jobs)
        for path in self.folder.iterdir():
            array, _, task = path.name.partition("_")
            if not array.isdigit() or (task and not task.isdigit()) or path.name in known:
                continue
            index = int(task) if task else 0
            if (index < len(self.subdirs) and (not task) == (len(self.subdirs) == 1)
                    and (path / f"{path.name}_submitted.pkl").exists() and self._submitted_after(path)):
                self._jobs[index] = path.name
        if len(self._jobs) > before:  # the manifest changes only when a job is found
            status.write_manifest(self.sweep_dir, self.subdirs, self._jobs, self.template)

    def _submitted_after(self, path: Path) -> bool:
        return path.stat().st_mtime >= self._launched_at

    def run(self) -> None:
        while not self._done.wait(POLL_S):
            self.report()

    def report(self) -> None:
        try:
            self._find_jobs()
            found = status.points(self.sweep_dir)
            line = status.summary(found)
        except Exception as exc:  # a status line must never stop a sweep
            found, line = None, f"(sweep status unavailable: {type(exc).__name__}: {exc})"
        if line != self._last:
            log.info("sweep %s: %s", self.sweep_dir, line)
            self._last = line
        if found is not None:
            self._notice_dead(found)

    def _notice_dead(self, found: list[status.Point]) -> None:
        """Stop the launcher's wait once every job has left the queue and one of them left no result: submitit
        would otherwise wait for it forever where SLURM keeps no accounting. Seen twice in a row, to be sure."""
        if self.gave_up or len(self._jobs) < len(self.subdirs) or any(p.state in ("running", "pending") for p in found):
            self._dead_polls = 0
            return
        if not any(status.left_without_result(self.template, p.job) for p in found if p.job and p.state != "done"):
            return
        self._dead_polls += 1
        if self._dead_polls >= 2:
            self.gave_up = True
            _thread.interrupt_main()  # raises KeyboardInterrupt in the launcher's wait; see SlurmLauncher.launch

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Let :meth:`_notice_dead` stop the launcher's wait. ``_thread.interrupt_main`` raises KeyboardInterrupt only
        where SIGINT has a Python handler; a sweep started in the background of a script (``cmd &``) inherits SIGINT
        ignored, and the wait would never end. While the launcher waits, SIGINT gets a handler that raises once this
        watcher gave up, and keeps ignoring a real SIGINT that the process was told to ignore."""
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.default_int_handler or callable(previous):
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.gave_up or previous != signal.SIG_IGN:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def final_summary(self) -> str:
        try:
            return status.summary(status.points(self.sweep_dir))
        except Exception as exc:
            return f"(sweep status unavailable: {type(exc).__name__}: {exc})"

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=POLL_S * 2)
        self.report()

    def wait_until_idle(self) -> None:
        """Until no job of this launch is still running or pending."""
        while True:
            try:
                if not any(p.state in ("running", "pending") for p in status.points(self.sweep_dir)):
                    return
            except Exception:
                pass
            time.sleep(POLL_S)
