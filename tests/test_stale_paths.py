"""Paths that once ended silently wrong: Ctrl-C in the final evaluation, a sharded run's second checkpoint, a
retried run's W&B id, the summary's checkpoint line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from conftest import ROOT, TINY
from peerlab.train import run


def test_ctrl_c_in_the_final_evaluation_is_an_interrupted_run_exit_130_and_the_rerun_completes(tmp_path, compose):
    # short blocks: hundreds of validation batches, so the final evaluation lasts well past the signal's delivery
    overrides = [*TINY, "budget=6e8", f"out_dir={tmp_path}", "run_name=r", "logger=csv", "data.seq_len=8",
                 "data.batch_size=16"]
    args = [sys.executable, str(ROOT / "train.py"), *overrides]
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
    again = run(compose(*overrides[len(TINY):]))  # the rerun, in this process: it evaluates the resumed run
    assert again["status"] == "completed" and again["resumed_from_step"] == results["steps"]
    assert again["checkpoints"]["best"]  # an unsharded run keeps best.ckpt


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
