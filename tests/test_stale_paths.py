"""Paths that once ended silently wrong: Ctrl-C in the final evaluation, a sharded run's second checkpoint, a
retried run's W&B id, the summary's checkpoint line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from conftest import ROOT, TINY
from peerlab.train import run


def test_ctrl_c_in_the_final_evaluation_is_an_interrupted_run_exit_130_and_the_rerun_completes(tmp_path, cache_dir):
    args = [sys.executable, str(ROOT / "train.py"), *TINY, "budget=2e8", f"out_dir={tmp_path}", "run_name=r",
            "logger=csv", "data.seq_len=8", "data.batch_size=4"]  # many small validation batches: a second or more
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the run says when its final evaluation starts: no sleep races it
        if "final evaluation: " in line:
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].endswith("rerun the same command to resume")
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["status"] == "interrupted" and results["failed_in"] == "final evaluation"
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((tmp_path / "r" / "results.json").read_text())["status"] == "completed"
    assert "(best: " in again.stdout  # an unsharded run keeps best.ckpt, and says where


def test_a_sharded_run_writes_last_ckpt_only_and_its_summary_names_no_missing_best(compose, tmp_path, capsys):
    cfg = compose("budget=3e9", f"out_dir={tmp_path}", "run_name=f", "trainer=fsdp", "trainer.accelerator=cpu",
                  "trainer.devices=1", "logger=csv", "trainer.ckpt_every_steps=5")
    results = run(cfg)
    ckpts = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.ckpt"))
    assert [str(p) for p in ckpts] == ["f/checkpoints/last.ckpt"], ckpts  # no Lightning default copy under csv/
    assert results["checkpoints"]["best"] is None
    assert "(best: None)" not in capsys.readouterr().out


def test_a_retry_after_an_attempt_that_left_nothing_finished_is_a_fresh_wandb_run(compose, tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "wandb_id.txt").write_text("oldattempt01")  # an attempt with another config crashed before any checkpoint
    (folder / "run_config.yaml").write_text("optim: {lr: 0.5}\n")
    run(compose("budget=3e9", f"out_dir={tmp_path}", "run_name=r"))
    assert (folder / "wandb_id.txt").read_text() != "oldattempt01"
