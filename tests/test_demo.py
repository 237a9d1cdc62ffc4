"""``make demo``: dense and PEER side by side at equal FLOPs, both losses and their difference, a PNG."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # two training processes side by side (the joblib launcher): the real multi-process run
def test_demo_trains_both_prints_the_difference_and_draws_the_curves(tmp_path, cache_dir):
    proc = subprocess.run([sys.executable, "-m", "peerlab.demo", "--budget", "3e10", "--out", str(tmp_path / "demo")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    losses = {name: float(v) for name, v in re.findall(r"^\s*(dense|PEER) \(.*?final val loss (\d+\.\d+)", out, re.M)}
    assert set(losses) == {"dense", "PEER"}, out
    diff = float(re.search(r"^PEER - dense: ([+-]\d+\.\d+) nats at equal FLOPs", out, re.M)[1])
    assert abs(diff - (losses["PEER"] - losses["dense"])) < 1e-4
    # one folder per layer, model and budget: a demo at another budget trains its own runs, never reuses these
    results = {layer: json.loads((tmp_path / "demo" / f"{layer}-s2-3e10" / "results.json").read_text())
               for layer in ("ffw", "peer_matched")}
    assert all(r["status"] == "completed" and r["config"]["model"]["name"] == "s2" for r in results.values())
    assert all(abs(r["flops"] - 3e10) / 3e10 < 0.05 for r in results.values())  # equal FLOPs, within one step
    figure = re.search(r"^figure: (.+\.png)$", out, re.M)[1]
    assert open(figure, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert figure == str((tmp_path / "demo" / "loss_vs_flops-s2-3e10.png").resolve())  # a demo at another budget: its own
