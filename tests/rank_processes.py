"""Start the ranks of a 2-process gloo job as separate Python processes and wait for all of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_rank_processes(worker: Path, tmp_path: Path, *extra: str, world: int = 2, timeout: float = 600,
                       cwd: Path | None = None) -> list[Path]:
    """Run ``python worker RANK WORLD STORE OUT *extra`` for every rank; return each rank's OUT path.

    A rank that fails leaves the others waiting in a collective, so every rank is stopped on the way out, also when
    the test fails."""
    store = tmp_path / "store"
    outs = [tmp_path / f"rank{r}.pt" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), str(world), str(store), str(outs[r]), *extra],
                              stderr=subprocess.PIPE, text=True, cwd=cwd) for r in range(world)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return outs
