"""The GPU check script (benchmarks/gpu_scale.py) runs its whole path on the CPU at toy sizes: DDP through
Lightning in bf16-mixed and fp32 (gloo here, NCCL on GPUs), step timings with MFU, and the cost of the paper grid."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # two DDP runs of two processes each, and the step timings


def test_gpu_scale_smoke_on_cpu(tmp_path, cache_dir):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_scale", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_scale.json").read_text())
    runs = report["ddp"]["runs"]
    assert set(runs) == {"bf16-mixed", "32-true"}
    assert all(r["world_size"] == 2 and r["steps"] >= 20 for r in runs.values())
    assert runs["bf16-mixed"]["expert_grads"] == {"block0": "sparse row gradients"}  # gloo reduces sparse rows
    assert abs(report["ddp"]["final_val_loss_gap"]) < 0.01
    rows = report["steps"]["rows"]
    layers = {r["layer"] for r in rows}
    assert {"dense", "moe", "pkm-32^2", "peer-16^2", "peer-32^2"} <= layers
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] for r in rows)
    cost = report["grid_cost"]["rows"]
    assert len(cost) == 2 * 4 * 4  # budgets x models x layers of isoflop_paper.yaml
    assert all(r["gpu_hours"] > 0 for r in cost)
    # more FLOPs, more hours: the 2e19 point costs 2e19/6e18 times the 6e18 one at the same rate
    by_point = {(r["model"], r["layer"], r["budget"]): r["gpu_hours"] for r in cost}
    assert abs(by_point[("d12", "peer", 2e19)] / by_point[("d12", "peer", 6e18)] - 2e19 / 6e18) < 1e-9
    hygiene = report["hygiene"]["rows"]
    assert {(r["matmul_precision"], r["fused_adamw"]) for r in hygiene} == {
        (p, f) for p in ("highest", "high") for f in (False, True)}
    assert all(r["step_ms"] > 0 for r in hygiene)
    planner = report["planner"]  # the largest grid point that fits, planned against what the step allocated
    assert planner["point"].startswith("d") and 0.75 <= planner["ratio"] <= 1.25, planner
    assert planner["step_s"] > 0 and planner["estimated_step_s"] is None  # no time model for a CPU
    md = (tmp_path / "SCALE.md").read_text()
    assert "## The memory planner against this GPU" in md and "One optimizer step took" in md
    assert "## DDP (gloo) through Lightning" in md and "isoflop_paper.yaml" in md
    assert "## CUDA defaults: TF32 matmuls and fused AdamW" in md

