"""Settings reach the code that acts on them: W&B's resume wiring in ``build_loggers`` (same id, overlapping rows
skipped) and ``trainer.activation_checkpointing`` from ``train.py`` into the model's blocks."""

from __future__ import annotations

from peerlab.loggers import build_loggers, finish_loggers, run_folders
from peerlab.wandb_offline import history


def _log(cfg, run_dir, steps, resume_step):
    loggers = build_loggers(cfg, run_dir, "r", {"seed": 0}, resume_step=resume_step)
    wandb_logger = loggers[-1]
    for step in steps:
        wandb_logger.log_metrics({"train/loss": 10.0 - step, "flops": 1e6 * step}, step=step)
    finish_loggers(loggers, "success")
    return wandb_logger


def test_a_resumed_start_continues_the_same_wandb_run_and_never_logs_a_step_twice(compose, tmp_path):
    cfg = compose(f"out_dir={tmp_path}", "run_name=r")
    first = _log(cfg, tmp_path, range(1, 11), resume_step=0)  # killed after logging step 10, its checkpoint at 5
    second = _log(cfg, tmp_path, range(6, 13), resume_step=5)  # retrains 6-10 bit-identically, then 11-12
    assert second.version == first.version  # one W&B run id, from wandb_id.txt
    folders = run_folders(tmp_path, first.version)
    assert len(folders) == 2
    steps = [row["trainer/global_step"] for folder in folders for row in history(folder)]
    assert sorted(steps) == list(range(1, 13)), steps  # 6-10 once, not twice


def test_activation_checkpointing_reaches_the_blocks_from_train_py(compose, tmp_path, monkeypatch):
    import peerlab.model
    from peerlab.train import run

    calls = []
    real = peerlab.model.checkpoint
    monkeypatch.setattr(peerlab.model, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    run(compose("budget=1.2e9", f"out_dir={tmp_path}", "run_name=off", "logger=csv"))
    assert calls == []
    run(compose("budget=1.2e9", f"out_dir={tmp_path}", "run_name=on", "logger=csv", "trainer.activation_checkpointing=true"))
    assert len(calls) > 0
