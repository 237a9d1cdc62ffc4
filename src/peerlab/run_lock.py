"""One live owner per run folder: a POSIX record lock (``fcntl.lockf``) on ``<run>/run.lock``, held by rank 0 of
the job from before the folder is read until the run's last file is written.

Why a record lock, and why it is safe on the shared filesystems clusters use:

- The lock lives in the kernel (local disks) or on the file server (NFS), never in the file's contents, so a holder
  that dies for any reason, SIGKILL and OOM included, releases it: the kernel drops a dead process's locks, and an
  NFSv4 server drops a lost client's when its lease lapses (90 s by default), so a resume after node loss waits
  at most that long. Nothing stale has to be detected or broken by us, which is where lock files with heartbeats
  (``O_EXCL``, ``link``) go wrong: deciding that a silent holder is dead races with the holder itself.
- POSIX record locks are the locks NFS implements (NLM for NFSv3, in the protocol for NFSv4); Linux forwards
  ``flock`` to them on NFS only as an emulation, so ``lockf`` asks for the real thing. GPFS and Lustre mounted with
  ``-o flock`` keep them coherent across nodes. A filesystem that refuses locks outright (``ENOLCK``, ``ENOSYS``,
  ``EOPNOTSUPP``: Lustre without ``flock``) is named in a warning and the run goes on unlocked.
- The file is never deleted: unlinking a lock file while another process waits on its inode lets two processes
  hold "the" lock. The JSON inside (host, pid, SLURM job, start time) only names the holder in the refusal; whether
  the folder is held is the lock's answer, never the text's.

POSIX locks belong to a process, not to a file descriptor, so a second lock of the same folder by the same process
would succeed: a process-wide table refuses it instead (tests run several runs in one process). The other ranks
of a job do not lock: under Lightning's launcher they start only after rank 0 holds the folder, and under srun or
torchrun a refused rank 0 never reaches the rendezvous, so its job's other ranks never train.

A SLURM job requeued while its previous incarnation is still saving in its grace period (same job id, a higher
``SLURM_RESTART_COUNT``) waits for that holder to exit, up to ``wait_s``, instead of being refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from peerlab.config import ConfigError

log = logging.getLogger(__name__)

LOCK = "run.lock"
UNSUPPORTED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
HELD_BY_OTHER = (errno.EACCES, errno.EAGAIN)
_HELD: dict[str, RunLock] = {}  # folders this process holds, by resolved path


class RunFolderBusy(ConfigError):
    """The run folder is held by another live process."""


def this_holder() -> dict:
    """Who we are, as the refusal of another process will name us."""
    job = os.environ.get("SLURM_JOB_ID")
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": job,
            "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", 0) or 0) if job else None,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def describe(holder: dict | None) -> str:
    if not holder:
        return "a live process (its details are being written)"
    where = f"pid {holder.get('pid')} on {holder.get('host')}"
    if holder.get("slurm_job"):
        where += f", SLURM job {holder['slurm_job']}"
    return f"{where}, since {holder.get('since')}"


def read_holder(path: Path) -> dict | None:
    """The record of whoever holds (or last held) the lock; opening and closing the file here is safe only because
    this process does not hold it (closing any descriptor drops a process's POSIX locks on the file)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_predecessor(holder: dict | None, me: dict) -> bool:
    """The holder is an earlier incarnation of this same SLURM job (requeued while it saves in its grace period)."""
    return bool(holder and me["slurm_job"] and holder.get("slurm_job") == me["slurm_job"]
                and (holder.get("slurm_restart") or 0) < (me["slurm_restart"] or 0))


class RunLock:
    """``with RunLock(run_dir, key="run_name=..."):`` holds the folder; refused in one line while another lives."""

    def __init__(self, run_dir: Path, key: str = "out_dir", wait_s: float = 300.0, poll_s: float = 1.0) -> None:
        self.path = Path(run_dir) / LOCK
        self.key, self.wait_s, self.poll_s = key, wait_s, poll_s
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        resolved = str(self.path.resolve())
        if resolved in _HELD:
            raise RunFolderBusy(f"{self.key}: {self.path.parent} is in use by a live run ({describe(read_holder(self.path))}, "
                                "this very process); wait for it to end, or choose another run_name= or out_dir=")
        me = this_holder()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno in UNSUPPORTED:
                    os.close(fd)
                    log.warning("run folder lock: %s refuses file locks (%s); two processes could train into %s at once",
                                self.path.parent, os.strerror(exc.errno), self.path.parent)
                    return self
                if exc.errno not in HELD_BY_OTHER:
                    os.close(fd)
                    raise
            holder = read_holder(self.path)
            if _is_predecessor(holder, me) and time.monotonic() < deadline:
                log.info("run folder lock: waiting for the previous incarnation of this SLURM job (%s) to finish",
                         describe(holder))
                time.sleep(self.poll_s)
                continue
            os.close(fd)
            raise RunFolderBusy(f"{self.key}: {self.path.parent} is in use by a live run ({describe(holder)}); wait for "
                                "it to end, or choose another run_name= or out_dir=")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        with contextlib.suppress(OSError):
            os.fsync(fd)
        self._fd = fd
        _HELD[resolved] = self
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        _HELD.pop(str(self.path.resolve()), None)
        with contextlib.suppress(OSError):
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
