"""glibc keeps freed blocks in the process (src/peerlab/allocator.py): a step that frees and re-allocates the same
large tensors stops page-faulting them in again, and training with DataLoader worker processes still works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TINY, run_train

PROBE = """
import json, os, resource
from peerlab.allocator import reexec_with_tunables
reexec_with_tunables()
enabled = "MALLOC_MMAP_THRESHOLD_" in os.environ
import torch
torch.set_num_threads(1)
x, w = torch.randn(2048, 256), torch.randn(256, 4096, requires_grad=True)
def step():  # a training-like step: activations and gradients of 33.5 MB, freed at its end
    (x @ w).relu().sum().backward()
    w.grad = None
for _ in range(5):  # warm-up: the first steps fault their blocks in either way
    step()
faults = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"enabled": enabled, "faults": sorted(faults)}))
"""


def _probe(env_value: str) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**env, "PEERLAB_MALLOPT": env_value})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    default, kept = _probe("0"), _probe("1")
    assert default["enabled"] is False and kept["enabled"] is True
    # By default every step faults its > 32 MB blocks in again (glibc mmaps them); kept blocks fault in once. The
    # median step is compared: a one-off event (an arena growing once, seen on CI as one step of 32768 faults)
    # must not decide the test.
    median_default, median_kept = default["faults"][4], kept["faults"][4]
    assert median_default > 10_000 and median_kept < median_default / 4, (default, kept)


def test_training_with_dataloader_workers(tmp_path, cache_dir):
    proc = run_train(*TINY, "data.num_workers=2", "budget=1.3e10", f"out_dir={tmp_path}", "logger=csv",
                     "run_name=workers", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "workers" / "results.json").read_text())["status"] == "completed"
