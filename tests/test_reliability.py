"""Faults: SIGTERM and SIGKILL at a random step then rerun; NaN at a chosen step; offline W&B without hanging."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY
from peerlab import wandb_offline
from peerlab.train import run

# ~300 optimizer steps of the TINY model, checkpointed every 20: a kill lands mid-run.
ARGS = [*TINY, "budget=6.4e10", "trainer.ckpt_every_steps=20", "trainer.val_every_steps=50", "trainer.log_every_steps=1",
        "run_name=r"]


# PEER with sparse expert-table gradients and LazyAdamW: its lazily updated moments must survive the checkpoint.
PEER_ARGS = ["layer=peer_small", "layer.n_experts=1024", "layer.d_key=16", "layer.sparse_grads=true"]


def launch(out: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS, *extra, f"out_dir={out}"], cwd=out,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(out: Path, extra: tuple[str, ...] = ()) -> dict:
    proc = launch(out, extra)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "not resumable" not in err  # Lightning knows our loader resumes exactly (its stateful protocol)
    return json.loads((out / "r" / "results.json").read_text())


def train_rows(run_dir: Path) -> list[tuple[int, float, float]]:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        return [(int(r["step"]), float(r["train/loss"]), float(r["flops"])) for r in csv.DictReader(fh) if r.get("train/loss")]


def last_logged(run_dir: Path) -> int:
    """The last training step in metrics.csv while the run writes it (a row cut short is not there yet)."""
    try:
        return max((step for step, _, _ in train_rows(run_dir)), default=-1)
    except (OSError, ValueError, KeyError):
        return -1


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("whole")
    return out / "r", finish(out)


def kill_after_first_checkpoint(out: Path, sig: int, extra: tuple[str, ...] = ()) -> tuple[str, int]:
    proc = launch(out, extra)
    ckpt = out / "r" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    # a step past the first checkpoint, chosen per signal, reached as the run's own metrics say: no sleep to race
    target = saved + random.Random(sig).randint(2, 6)
    while last_logged(out / "r") < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed: raise the budget"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    return err, torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"], proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("extra", [PEER_ARGS, ["trainer.accumulate_grad_batches=2", "data.batch_size=4"]],
                         ids=["peer-sparse-gradients", "accumulation"])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, extra):
    whole_dir, resumed_dir = tmp_path / "whole", tmp_path / "killed"
    whole_dir.mkdir()
    resumed_dir.mkdir()
    whole = finish(whole_dir, tuple(extra))
    _, killed_step, _ = kill_after_first_checkpoint(resumed_dir, signal.SIGTERM, tuple(extra))
    assert 0 < killed_step < whole["steps"]
    resumed = finish(resumed_dir, tuple(extra))
    assert resumed["resumed_from_step"] == killed_step and resumed["steps"] == whole["steps"]
    a, b = weights(whole_dir / "r"), weights(resumed_dir / "r")
    assert resumed["final_val_loss"] == whole["final_val_loss"]
    for name in a:  # a resumed run is the uninterrupted one, bit for bit
        assert torch.equal(b[name], a[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_killed_run_resumes_to_the_same_weights_and_curve(uninterrupted, tmp_path, sig):
    whole_dir, whole = uninterrupted
    err, killed_step, code = kill_after_first_checkpoint(tmp_path, sig)
    assert 0 < killed_step < whole["steps"]
    assert code == {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -9}[sig]
    if sig != signal.SIGKILL:
        # The step the message names is the step saved, and no step the process finished is lost.
        name = signal.Signals(sig).name
        saved = re.search(rf"interrupted: {name} received at step (\d+) \((training|validation)\); last.ckpt saved at "
                          r"step (\d+) in .*; rerun the same command to resume", err)
        assert saved, err[-2000:]
        assert "Traceback" not in err and "graceful shutdown" not in err
        assert int(saved[3]) == killed_step and int(saved[1]) <= killed_step <= int(saved[1]) + 1
        record = json.loads((tmp_path / "r" / "results.json").read_text())
        assert record["status"] == "interrupted" and record["preempted"]["saved_step"] == killed_step
        # Every step the process finished is in the log and in the checkpoint (rows carry cumulative FLOPs).
        assert max(f for _, _, f in train_rows(tmp_path / "r")) == killed_step * whole["flops"] / whole["steps"]

    resumed = finish(tmp_path)
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == killed_step
    assert resumed["steps"] == whole["steps"] and resumed["flops"] == whole["flops"] and resumed["tokens"] == whole["tokens"]
    a, b = weights(whole_dir), weights(tmp_path / "r")
    for name in a:  # bit for bit
        assert torch.equal(b[name], a[name]), name
    rows_a, rows_b = train_rows(whole_dir), train_rows(tmp_path / "r")
    steps_b = [s for s, _, _ in rows_b]
    assert len(steps_b) == len(set(steps_b)), "duplicated steps in the resumed log"
    assert [s for s, _, _ in rows_a] == steps_b
    assert [f for _, _, f in rows_a] == [f for _, _, f in rows_b]
    assert [x for _, x, _ in rows_b] == [x for _, x, _ in rows_a]
    assert resumed["final_val_loss"] == whole["final_val_loss"]
    # The same W&B run is resumed, not a new one: both starts' folders, synced together, hold each step once.
    folders = resumed["wandb_dirs"]
    assert len(folders) == 2 and resumed["wandb_sync"] == "wandb sync " + " ".join(folders)
    ids = {p.name.rsplit("-", 1)[-1] for p in (tmp_path / "r" / "wandb").glob("offline-run-*")}
    assert ids == {(tmp_path / "r" / "wandb_id.txt").read_text().strip()}
    synced = [int(row["trainer/global_step"]) for f in folders for row in wandb_offline.history(f) if "train/loss" in row]
    assert len(synced) == len(set(synced)), "a step logged twice to W&B"
    if sig != signal.SIGKILL:  # a killed process may lose its last unflushed rows, never repeat one
        assert synced == steps_b


def test_nan_stops_the_run_keeps_last_good_checkpoint(compose, tmp_path, monkeypatch):
    from peerlab.model import Transformer

    original = Transformer.loss
    calls = {"train": 0}

    def poisoned(self, idx, targets):
        loss = original(self, idx, targets)
        if self.training:
            calls["train"] += 1
            if calls["train"] == 13:  # the 13th training step, i.e. step index 12
                return loss * float("nan")
        return loss

    monkeypatch.setattr(Transformer, "loss", poisoned)
    cfg = compose("budget=1.3e10", f"out_dir={tmp_path}", "trainer.ckpt_every_steps=5", "run_name=nan")
    with pytest.raises(FloatingPointError, match="non-finite training loss \\(nan\\) at step 12"):
        run(cfg)
    results = json.loads((tmp_path / "nan" / "results.json").read_text())
    assert results["status"] == "diverged" and "step 12" in results["error"]
    ckpt = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_diverged_run_prints_one_line(tmp_path, cache_dir):
    """Through the CLI: a learning rate that blows up gives one line and exit status 3."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "budget=1.3e10", "optim.lr=1e6",
                           "optim.grad_clip=0", "optim.warmup_fraction=0", f"out_dir={tmp_path}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "error: training diverged: non-finite training loss" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_without_api_key_finishes_without_network_wait(tmp_path, cache_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc, so no API key
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "budget=6e9", f"out_dir={tmp_path}",
                           "run_name=off"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # no time limit to race a shared machine: W&B chose offline by itself, so nothing tried the network
    assert "offline" in json.loads((tmp_path / "off" / "results.json").read_text())["wandb_dir"]
    results = json.loads((tmp_path / "off" / "results.json").read_text())
    assert results["wandb_dir"] and "offline-run" in results["wandb_dir"]
    assert f"W&B: offline (no API key), in {results['wandb_dir']}" in (tmp_path / "off" / "train.log").read_text()
    assert results["wandb_sync"] == f"wandb sync {results['wandb_dir']}"
    assert f"upload:      wandb sync {results['wandb_dir']}" in proc.stdout
