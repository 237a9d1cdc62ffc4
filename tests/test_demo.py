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


def test_demo_reports_the_difference_and_draws_the_curves_of_its_two_runs(tmp_path, monkeypatch, capsys):
    """The fast stand-in for the slow test above: the two training processes replaced by the runs they leave
    (results.json), everything after them (the losses, their difference, the figure) as the demo does it."""
    from types import SimpleNamespace

    from peerlab import demo

    out = tmp_path / "demo"
    finals = {"ffw": 3.9023, "peer_matched": 3.8644}

    def trained(*args, **kwargs):  # what the joblib multirun leaves: one finished run per layer
        for layer, loss in finals.items():
            run = out / f"{layer}-s2-1e12"
            run.mkdir(parents=True, exist_ok=True)
            (run / "results.json").write_text(json.dumps(
                {"status": "completed", "final_val_loss": loss, "final_val_ppl": 2.718 ** loss, "steps": 1400,
                 "tokens": 2.9e6, "flops": 1e12, "params_total": 45e3, "params_active": 45e3}))
        return SimpleNamespace(poll=lambda: 0, returncode=0)

    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=0))
    monkeypatch.setattr(demo.subprocess, "Popen", trained)
    assert demo.main(["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PEER - dense: -0.0379 nats at equal FLOPs" in printed
    assert re.search(r"^\s*dense \(ffw, s2\): final val loss 3\.9023", printed, re.M)
    figure = out.resolve() / "loss_vs_flops-s2-1e12.png"
    assert f"figure: {figure}" in printed and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
