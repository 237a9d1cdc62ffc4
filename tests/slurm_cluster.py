"""A real single-node SLURM cluster for the ``slurm`` tests: Debian's ``slurm-wlm`` and ``munge`` daemons, started
from a temporary folder on loopback, stopped by their PIDs.

Everything lives under one folder: the munge key and socket, ``slurm.conf``, state, spool, logs and pid files. Ports
are free ones picked at start, so a daemon left over from another run can never answer for this one, and clients
(``sbatch``, ``squeue``, ``scontrol``) find the cluster through ``SLURM_CONF`` alone.

    python tests/slurm_cluster.py up /tmp/slurm    # start; prints the export line for SLURM_CONF
    python tests/slurm_cluster.py down /tmp/slurm  # stop by PID
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("slurmd", "slurmctld", "munged")  # stopped in this order
PACKAGES = "slurm-wlm munge"


def installed() -> bool:
    return all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch", "srun", "squeue", "scontrol"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(root: Path, host: str, cpus: int, mem_mb: int) -> str:
    return "\n".join([
        "ClusterName=peerlab-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"AuthInfo=socket={root}/munge/munge.socket",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=bf_interval=1",
        "MessageTimeout=20",
        "KillWait=10",
        "MinJobAge=600",
        "InactiveLimit=0",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


def env(root: Path) -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}


def _wait(check, what: str, root: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(root.glob("*.log")))
    raise RuntimeError(f"SLURM test cluster: {what} did not happen within {timeout_s:.0f} s\n{logs}")


def start(root: Path, cpus: int | None = None, mem_mb: int = 8000) -> dict[str, str]:
    """Start munged, slurmctld and slurmd for a one-node cluster under ``root``; returns the clients' environment."""
    if not installed():
        raise RuntimeError(f"SLURM is not installed: apt-get install -y {PACKAGES}")
    root = Path(root).resolve()
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]
    (root / "slurm.conf").write_text(_config(root, host, cpus or os.cpu_count() or 1, mem_mb))
    e = env(root)
    m = root / "munge"
    subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={m}/munge.socket", f"--pid-file={root}/munged.pid",
                    f"--log-file={root}/munged.log", f"--seed-file={m}/munge.seed"], check=True, env=e)
    _wait(lambda: (m / "munge.socket").exists(), "munged start", root)
    subprocess.run(["slurmctld", "-f", str(root / "slurm.conf")], check=True, env=e)
    subprocess.run(["slurmd", "-f", str(root / "slurm.conf")], check=True, env=e)

    def node_idle() -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=e, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated")

    try:
        _wait(node_idle, "the node coming up idle", root)
    except RuntimeError:
        stop(root)
        raise
    return e


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop(root: Path) -> None:
    """Stop the daemons by the PIDs their pid files hold (never by name: other clusters may run here)."""
    root = Path(root).resolve()
    for name in DAEMONS:
        pid = _pid(root / f"{name}.pid")
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print(__doc__.strip().splitlines()[-2:], file=sys.stderr)
        return 2
    root = Path(argv[1])
    if argv[0] == "up":
        start(root)
        print(f"export SLURM_CONF={root.resolve() / 'slurm.conf'}")
    else:
        stop(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
