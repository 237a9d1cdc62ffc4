"""A run folder has one live owner, and a run's identity includes its data: two processes, or a corpus changed
under a finished run, end in a one-line refusal, never in mixed or stale results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from peerlab import run_folder
from peerlab.config import ConfigError
from peerlab.run_lock import LOCK, RunFolderBusy, RunLock
from peerlab.train import run

BUDGET = "6e9"
HOLDER = """
import sys
from peerlab.run_lock import RunLock
lock = RunLock(sys.argv[1], wait_s=float(sys.argv[2]) if len(sys.argv) > 2 else 0).acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


def hold(folder, env_extra: dict | None = None, wait_s: float = 0) -> subprocess.Popen:
    """Another process holding ``folder``; returns once it does (it says so), so nothing races a sleep."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), str(wait_s)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, **(env_extra or {})})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_does_not_block(compose, tmp_path):
    cfg = compose(f"budget={BUDGET}", f"out_dir={tmp_path}", "run_name=clash")
    holder = hold(tmp_path / "clash")
    try:
        with pytest.raises(RunFolderBusy, match=rf"run_name='clash': .*clash is in use by a live run \(pid {holder.pid} on "):
            run(cfg)
        assert not run_folder.holds_run(tmp_path / "clash")  # refused before writing anything
        assert not (tmp_path / "clash" / run_folder.RUN_CONFIG).exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own; the kernel drops its lock
        holder.wait()
    assert run(cfg)["status"] == "completed"


def test_one_process_cannot_hold_a_folder_twice_and_release_frees_it(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunFolderBusy, match="in use by a live run"):
        RunLock(tmp_path).acquire()
    first.release()
    with RunLock(tmp_path) as again:
        assert again.held
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()  # the record names the last holder


def test_a_requeued_slurm_job_waits_for_its_previous_incarnation_and_another_job_is_refused(tmp_path):
    old = hold(tmp_path, {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0"})
    other = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "60"], env={**os.environ, "SLURM_JOB_ID": "78"},
                           capture_output=True, text=True, timeout=60, input="")
    assert other.returncode != 0 and "RunFolderBusy" in other.stderr and "SLURM job 77" in other.stderr  # at once
    requeued = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "60"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"})
    try:
        old.stdin.write("\n")
        old.stdin.flush()  # the previous incarnation finishes saving and exits
        assert old.stdout.readline().strip() == "released"
        line = [None]
        reader = threading.Thread(target=lambda: line.__setitem__(0, requeued.stdout.readline().strip()))
        reader.start()
        reader.join(60)
        assert line[0] == "held", requeued.stderr.read() if requeued.poll() is not None else "still waiting"
    finally:
        for proc in (old, requeued):
            proc.kill()
            proc.wait()


def test_moving_a_run_aside_leaves_the_folders_lock_in_place(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    with RunLock(tmp_path):
        moved = run_folder.move_aside(tmp_path)
        assert (tmp_path / LOCK).is_file() and not (moved / LOCK).exists()


def test_a_changed_corpus_is_another_run_never_already_complete(compose, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    words = "the quick brown fox jumps over the lazy dog and runs far away into the woods".split()
    docs = lambda shift: [{"text": " ".join(words[(i + shift) % len(words)] for i in range(j, j + 400))}  # noqa: E731
                          for j in range(40)]
    corpus.write_text("\n".join(json.dumps(d) for d in docs(0)))
    overrides = ("data=files", f"data.files=[{corpus}]", f"budget={BUDGET}", f"out_dir={tmp_path}", "run_name=r")
    first = run(compose(*overrides))
    assert first["data"] == json.loads((tmp_path / "r" / run_folder.DATA).read_text())
    assert set(first["data"]) >= {"corpus", "tokenizer", "vocab_size", "tokens"}
    corpus.write_text("\n".join(json.dumps(d) for d in docs(3)))  # the same file name, other documents
    with pytest.raises(ConfigError, match=r"run_name='r': .* holds a run trained on other data than data=files gives now "
                                          r"\(corpus: 'files-.*' there, 'files-.*' here"):
        run(compose(*overrides))
    corpus.write_text("\n".join(json.dumps(d) for d in docs(0)))  # the data back as it was: the run is complete
    assert run(compose(*overrides))["wall_time_s"] == first["wall_time_s"]


def test_an_interrupted_run_from_before_fingerprints_resumes_and_records_its_data(tmp_path, compose):
    cfg = compose(f"budget={BUDGET}", f"out_dir={tmp_path}", "run_name=old")
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "last.ckpt.previous").write_text("")  # a run that holds something finished
    run_folder.save_config(tmp_path / "old", cfg)
    fingerprint = {"corpus": "c", "tokenizer": "t", "vocab_size": 512, "tokens": "x"}
    run_folder.check_data(tmp_path / "old", cfg, fingerprint)
    assert run_folder.read_data(tmp_path / "old") == fingerprint
    with pytest.raises(ConfigError, match=r"other data .*\(tokens: 'x' there, 'y' here\)"):
        run_folder.check_data(tmp_path / "old", cfg, {**fingerprint, "tokens": "y"})


def test_a_key_added_or_removed_is_another_config_even_with_a_null_value():
    old = {"optim": {"lr": 0.002}, "model": {"d_model": None}}
    assert run_folder.differences(old, {"optim": {"lr": 0.002, "fused": None}, "model": {"d_model": None}}) == [
        ("optim.fused", run_folder.ABSENT, None)]
    assert run_folder.differences(old, {"optim": {"lr": 0.002}, "model": {}}) == [("model.d_model", None, run_folder.ABSENT)]
    assert run_folder.differences(old, {"optim": {"lr": 0.002}}) == [("model", {"d_model": None}, run_folder.ABSENT)]
    assert run_folder.differences(old, old) == []


def test_a_folder_holding_a_run_whose_config_lacks_a_key_refuses_a_config_that_has_it(compose, tmp_path):
    from omegaconf import OmegaConf

    cfg = compose(f"out_dir={tmp_path}", "run_name=k")
    folder = tmp_path / "k"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_text("")
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["layer"]["activation"]  # a key (with a value) that the saved run did not have
    OmegaConf.save(OmegaConf.create(saved), folder / run_folder.RUN_CONFIG)
    with pytest.raises(ConfigError, match=r"another config \(layer.activation: \(no such key\) there, 'gelu' here\)"):
        run_folder.settle(folder, cfg)
