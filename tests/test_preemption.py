"""Preemption, SLURM launcher checks, sweep folder names and sweep status, without a cluster: the pieces the
``slurm`` tests (tests/test_slurm.py) then run end to end on a real one."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from peerlab.config import sweep_subdir
from peerlab.preemption import Preempted, Preemption
from peerlab.sweeps import status
from peerlab.sweeps.launcher import partition_limits, request_problem


class _Last:
    def __init__(self) -> None:
        self.saved: list[tuple[int, bool]] = []

    def save(self, trainer, at_batch_start: bool = False) -> None:
        self.saved.append((trainer.global_step, at_batch_start))


def _trainer(step: int = 0, accumulate: int = 1):
    return SimpleNamespace(global_step=step, accumulate_grad_batches=accumulate, world_size=1,
                           state=SimpleNamespace(fn="fit"))


def test_a_signal_is_only_recorded_then_saved_at_the_next_step_boundary():
    last, trainer = _Last(), _trainer(step=7, accumulate=2)
    callback = Preemption(last)
    before = signal.getsignal(signal.SIGUSR2)
    callback.on_train_start(trainer, None)
    try:
        os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs now and must not save or raise
        assert callback.signum == signal.SIGUSR2 and callback.received_step == 7 and last.saved == []
        callback.on_train_batch_start(trainer, None, None, batch_idx=3)  # mid-accumulation: not a step boundary
        assert last.saved == []
        trainer.global_step = 8
        with pytest.raises(Preempted) as caught:
            callback.on_train_batch_start(trainer, None, None, batch_idx=4)
    finally:
        callback.restore()
    assert last.saved == [(8, True)]
    exc = caught.value
    assert str(exc) == "SIGUSR2 received at step 7 (training); last.ckpt saved at step 8"
    assert exc.requeues and exc.exit_code == 128 + signal.SIGUSR2
    assert exc.as_record() == {"signal": "SIGUSR2", "received_at_step": 7, "saved_step": 8, "during": "training"}
    assert signal.getsignal(signal.SIGUSR2) is before  # handlers handed back


def test_sigterm_in_validation_saves_there_and_does_not_requeue():
    last, trainer = _Last(), _trainer(step=100)
    callback = Preemption(last)
    callback.on_train_start(trainer, None)
    try:
        callback._record(signal.SIGTERM, None)
        callback._record(signal.SIGUSR2, None)  # the first signal decides
        with pytest.raises(Preempted) as caught:
            callback.on_validation_batch_end(trainer)
    finally:
        callback.restore()
    assert last.saved == [(100, False)]
    assert caught.value.where == "validation" and not caught.value.requeues and caught.value.exit_code == 143
    assert caught.value.next_action() == "rerun the same command to resume"


def test_a_requeue_signal_hands_over_to_the_handler_it_replaced(monkeypatch):
    calls = []
    exc = Preempted(signal.SIGUSR2, 3, 4, "training", previous=lambda signum, frame: calls.append(signum))
    assert exc.next_action() == "the previous handler (submitit's) requeues the job"
    exc.hand_over()
    assert calls == [signal.SIGUSR2]
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: ran.append(cmd) or SimpleNamespace(returncode=0, stderr=""))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    plain = Preempted(signal.SIGUSR1, 3, 4, "training", previous=signal.SIG_DFL)
    assert plain.next_action() == "requeueing SLURM job 42 (scontrol requeue)"
    plain.hand_over()
    assert ran == [["scontrol", "requeue", "42"]]


def test_no_signal_no_save():
    last, trainer = _Last(), _trainer(step=5)
    callback = Preemption(last)
    callback.on_train_start(trainer, None)
    callback.on_train_batch_start(trainer, None, None, batch_idx=0)
    callback.on_validation_batch_end(trainer)
    callback.on_train_end(trainer, None)
    assert last.saved == [] and callback._previous == {}


@pytest.mark.parametrize("dirname,expected", [
    ("budget=1000000000000.0,model=s2", "budget=1e12,model=s2"),
    ("budget=2e+19,layer=peer", "budget=2e19,layer=peer"),
    ("budget=1.5e+19", "budget=1.5e19"),
    ("budget=1e12,optim.lr=0.002", "budget=1e12,optim.lr=0.002"),  # as typed: untouched
    ("optim.lr=1e-05,seed=3", "optim.lr=1e-05,seed=3"),
    ("data.sources=[wikipedia,lee],model=s3", "data.sources=[wikipedia,lee],model=s3"),
])
def test_sweep_folders_show_budgets_as_written(tmp_path, dirname, expected):
    assert sweep_subdir(dirname, str(tmp_path)) == expected


def test_a_sweep_made_with_long_names_keeps_resuming_into_its_folders(tmp_path):
    (tmp_path / "budget=1000000000000.0,model=s2").mkdir()
    assert sweep_subdir("budget=1000000000000.0,model=s2", str(tmp_path)) == "budget=1000000000000.0,model=s2"
    assert sweep_subdir("budget=2000000000000.0,model=s2", str(tmp_path)) == "budget=2e12,model=s2"  # a new point
    long = ",".join(f"key{i}=value{i}" for i in range(40))
    fitted = sweep_subdir(long, str(tmp_path))
    assert len(fitted.encode()) <= 255 and fitted != sweep_subdir(long + ",x=1", str(tmp_path))


def _trainer_cfg(devices=1, num_nodes=1):
    return SimpleNamespace(devices=devices, num_nodes=num_nodes)


@pytest.mark.parametrize("params,trainer,limits,expected", [
    ({"tasks_per_node": 1}, _trainer_cfg(2), None, "hydra.launcher.tasks_per_node=1: must equal trainer.devices=2"),
    ({"tasks_per_node": 8, "gpus_per_node": 8}, _trainer_cfg("auto"), None, None),
    ({"tasks_per_node": 2, "gpus_per_node": None}, _trainer_cfg("auto"), None, "hydra.launcher.tasks_per_node=2: must equal trainer.devices=auto"),
    ({"tasks_per_node": 1, "nodes": 2}, _trainer_cfg(1, 1), None, "hydra.launcher.nodes=2: must equal trainer.num_nodes=1"),
    ({"tasks_per_node": 1, "gpus_per_node": 1}, _trainer_cfg(1), {"name": "cpu", "cpus": 2, "mem_mb": 8000, "gpus": 0},
     "hydra.launcher.gpus_per_node=1: partition 'cpu' has no GPUs"),
    ({"tasks_per_node": 1, "cpus_per_task": 8}, _trainer_cfg(1), {"name": "cpu", "cpus": 2, "mem_mb": 8000, "gpus": 0},
     "hydra.launcher.cpus_per_task=8: x tasks_per_node=1 asks for 8 CPUs per node, and the largest node of partition 'cpu' has 2"),
    ({"tasks_per_node": 1, "mem_gb": 64}, _trainer_cfg(1), {"name": "cpu", "cpus": 2, "mem_mb": 8000, "gpus": 0},
     "hydra.launcher.mem_gb=64: the largest node of partition 'cpu' has 7.8 GB"),
    ({"tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 8}, _trainer_cfg(8),
     {"name": "gpu", "cpus": 128, "mem_mb": 10**6, "gpus": 8}, None),
])
def test_requests_that_cannot_run_are_named_before_submitting(params, trainer, limits, expected):
    problem = request_problem(params, [trainer], limits)
    assert (problem is None) if expected is None else problem.startswith(expected), problem


def test_partition_limits_read_sinfo(monkeypatch):
    out = "cpu*|2|7900|(null)\ngpu|64|512000|gpu:h100:8(S:0-1)\ngpu|32|256000|gpu:4\n"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=0, stdout=out))
    assert partition_limits(None) == {"name": "cpu", "cpus": 2, "mem_mb": 7900, "gpus": 0}
    assert partition_limits("gpu") == {"name": "gpu", "cpus": 64, "mem_mb": 512000, "gpus": 8}
    assert partition_limits("nope") is None
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=1, stdout=""))
    assert partition_limits(None) is None


def test_sweep_status_from_the_queue_and_results(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    names = [f"model=s{i}" for i in range(6)]
    for name in names:
        (sweep / name).mkdir(parents=True)
    (sweep / names[0] / "results.json").write_text(json.dumps({"status": "completed"}))
    (sweep / names[4] / "results.json").write_text(json.dumps({"status": "interrupted"}))
    status.write_manifest(sweep, names, {i: f"7_{i}" for i in range(5)}, f"{sweep}/.submitit/%j")
    queue = "7_1|RUNNING|None\n7_2|PENDING|Priority\n7_3|PENDING|PartitionConfig\n"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=0, stdout=queue, stderr=""))
    found = status.points(sweep)
    assert [p.state for p in found] == ["done", "running", "pending", "pending", "interrupted", "unsubmitted"]
    text = status.summary(found)
    first, *rest = text.splitlines()
    assert first == "1/6 done, 1 running, 2 pending (Priority: 1, PartitionConfig: 1), 1 unsubmitted, 1 interrupted"
    assert any("never starts: model=s3 (job 7_3, Reason=PartitionConfig" in ln for ln in rest)
    assert any(f"interrupted: model=s4 (job 7_4; log: {sweep}/.submitit/7_4/7_4_0_log.err)" in ln for ln in rest)
    assert status.left_without_result(f"{sweep}/.submitit/%j", "7_4")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=1, stdout="", stderr="down"))
    with pytest.raises(RuntimeError, match="squeue failed"):  # an unanswered squeue never reads as "all gone"
        status.points(sweep)


def test_status_command_without_a_sweep_is_one_line(tmp_path, capsys):
    from peerlab.sweeps.__main__ import main

    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path}: not a sweep folder (no multirun.yaml, no .peerlab_sweep.json): give the folder "
                   "a multirun printed at its start, e.g. runs/sweeps/<name>\n")


def test_ranks_resolve_as_lightning_does_under_srun(monkeypatch):
    from peerlab.parallel.distributed import global_rank, local_rank

    for key in ("LOCAL_RANK", "RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert (local_rank(), global_rank()) == (0, 0)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert (local_rank(), global_rank()) == (1, 1)  # srun sets no LOCAL_RANK


def test_a_rank_above_zero_writes_its_own_log(tmp_path):
    from peerlab.console import one_log_per_rank

    root = logging.getLogger()
    shared = logging.FileHandler(tmp_path / "train.log")
    root.addHandler(shared)
    try:
        one_log_per_rank(0)
        assert shared in root.handlers
        one_log_per_rank(1)
        assert shared not in root.handlers
        own = [h for h in root.handlers if isinstance(h, logging.FileHandler) and str(tmp_path) in h.baseFilename]
        assert [Path(h.baseFilename).name for h in own] == ["train.rank1.log"]
    finally:
        for h in [h for h in root.handlers if isinstance(h, logging.FileHandler) and str(tmp_path) in h.baseFilename]:
            root.removeHandler(h)
            h.close()


def test_ranks_resolve_under_lightnings_own_launcher(monkeypatch):
    from peerlab.parallel.distributed import global_rank, local_rank

    for key in ("RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "LSB_JOBID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning's launcher gives the process it starts
    monkeypatch.setenv("NODE_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (local_rank(), global_rank()) == (1, 1)  # rank 1 must not write results.json, W&B or train.log


def test_a_rank_started_by_lightnings_launcher_logs_to_train_rank_r(tmp_path):
    from peerlab.console import one_log_per_rank

    root = logging.getLogger()
    launched = logging.FileHandler(tmp_path / "train_ddp_process_1.log")  # Hydra's job name under that launcher
    root.addHandler(launched)
    try:
        one_log_per_rank(1)
        own = [h for h in root.handlers if isinstance(h, logging.FileHandler) and str(tmp_path) in h.baseFilename]
        assert [Path(h.baseFilename).name for h in own] == ["train.rank1.log"]
        assert not (tmp_path / "train_ddp_process_1.log").exists()  # the empty file Hydra opened is gone
    finally:
        for h in [h for h in root.handlers if isinstance(h, logging.FileHandler) and str(tmp_path) in h.baseFilename]:
            root.removeHandler(h)
            h.close()


def test_a_second_ctrl_c_exits_at_once(monkeypatch):
    import os

    from peerlab.preemption import Preemption

    callback = Preemption(last=None)
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    callback._record(signal.SIGINT, None)
    assert callback.signum == signal.SIGINT and exits == []  # the first is recorded: saved at the next safe point
    callback._record(signal.SIGINT, None)
    assert exits == [130]
