"""``trainer.memory_parallel=M``: expert tables split by columns over groups of M ranks
(peerlab.parallel.memory_parallel, peerlab.mixers.column_shards).

Fast: each rank's share of the arithmetic (partial dots, column bags) in one process against the whole tables, and
the refusals. Slow: real gloo jobs of 2 (M = 2) and 4 (M = 2 x 2 replicas) processes train every sparse layer 20
steps beside ``trainer=fsdp`` at M = 1 from the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from peerlab.mixers.column_shards import bag_columns, bytes_per_token, peer_partial_dots
from peerlab.mixers.peer_experts import experts_torch

HERE = Path(__file__).resolve().parent
LAYERS = ["peer", "peer_linear", "pkm", "memory_plus"]


# ---------------------------------------------------------------------- one process: each rank's share
@pytest.mark.parametrize("m", [2, 4])
def test_column_shares_sum_to_the_whole_tables_output_and_gradients(m):
    torch.manual_seed(0)
    tokens, d, n, hk = 7, 8, 32, 6
    x = torch.randn(tokens, d, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(tokens, hk, dtype=torch.float64, requires_grad=True)
    indices = torch.randint(0, n, (tokens, hk))
    down = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    up = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(tokens, d, dtype=torch.float64)
    whole = experts_torch(x, indices, weights, down, up, F.gelu)
    (whole * probe).sum().backward()
    expected = [t.grad.clone() for t in (x, weights, down, up)]
    for t in (x, weights, down, up):
        t.grad = None
    # rank r: columns [r c, (r+1) c) of x and of both tables; the partial dots summed as the all-reduce sums them
    c = d // m
    cols = [slice(r * c, (r + 1) * c) for r in range(m)]
    pre = sum(peer_partial_dots(x[:, s], indices, down[:, s], chunk=3) for s in cols)
    coefs = F.gelu(pre) * weights
    out = torch.cat([bag_columns(indices, coefs, up[:, s]) for s in cols], dim=1)
    torch.testing.assert_close(out, whole, rtol=1e-12, atol=1e-12)
    (out * probe).sum().backward()
    for got, want, name in zip((x.grad, weights.grad, down.grad, up.grad), expected, ("x", "weights", "down", "up"), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=name)


def test_bytes_per_token_follow_the_collectives():
    # PEER at d = 1024, h k = 128, M = 8: x and y both ways 4 x 1024 x 7/8 x 2 each, indices 4 x 128 x 7,
    # weights 2 x 4 x 128 x 7, partial dots 16 x 128 x 7
    peer = bytes_per_token("peer", 1024, 128, 8)
    assert sum(peer.values()) == pytest.approx(2 * 2 * 4 * 1024 * 7 / 8 + 4 * 128 * 7 + 8 * 128 * 7 + 16 * 128 * 7)
    pkm = bytes_per_token("pkm", 1024, 256, 8)
    assert sum(pkm.values()) == pytest.approx(2 * 4 * 1024 * 7 / 8 + 12 * 256 * 7)
    assert bytes_per_token("peer", 1024, 128, 1) == {}


# ---------------------------------------------------------------------- gloo jobs
def run_job(tmp_path: Path, world: int, m: int, dtypes: str) -> dict:
    from rank_processes import run_rank_processes

    outs = run_rank_processes(HERE / "memory_parallel_worker.py", tmp_path, str(m), dtypes, world=world, timeout=900,
                              cwd=HERE)
    return torch.load(outs[0], weights_only=False)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict:
    """(world, M) -> the job's results: M = 2 on 2 processes (float64 and float32), M = 2 x 2 replicas on 4."""
    return {(2, 2): run_job(tmp_path_factory.mktemp("mp2"), 2, 2, "float64,float32"),
            (4, 2): run_job(tmp_path_factory.mktemp("mp4"), 4, 2, "float64")}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    # a gradient that is zero up to rounding (a LayerNorm bias before a BatchNorm) is compared absolutely
    return ((a - b).norm() / max(b.norm().item(), 1e-6)).item()


@pytest.mark.slow
@pytest.mark.parametrize("job", [(2, 2), (4, 2)], ids=["M2", "M2x2"])
@pytest.mark.parametrize("layer", LAYERS)
def test_split_tables_train_what_whole_tables_train(jobs, job, layer):
    whole, split = (jobs[job]["float64", layer][m] for m in (1, 2))
    assert len(whole["losses"]) == 20
    assert split["losses"] == pytest.approx(whole["losses"], abs=1e-6, rel=0)
    assert whole["losses"][-1] < whole["losses"][0]
    assert set(split["grads"]) == set(whole["grads"])
    for name, grad in whole["grads"].items():
        assert relative(split["grads"][name], grad) < 1e-6, name
    # which experts were used, exactly; how evenly (router weights: float64 rounding of 20 steps apart)
    assert {k: v for k, v in split["usage"].items() if k.endswith("expert_usage")} == \
        {k: v for k, v in whole["usage"].items() if k.endswith("expert_usage")}
    assert split["usage"] == pytest.approx(whole["usage"], rel=1e-9)
    for name, weight in whole["weights"].items():
        torch.testing.assert_close(split["weights"][name], weight, rtol=1e-6, atol=1e-6, msg=name)  # Adam: 1e-16 -> 3e-8 measured


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_checkpointed_blocks_and_the_chunked_loss_with_split_tables(jobs, dtype):
    entry = jobs[2, 2][dtype, "peer"]
    assert entry["checkpointed"] == pytest.approx(entry[2]["losses"], abs=1e-6, rel=0)


@pytest.mark.slow
@pytest.mark.parametrize("layer", LAYERS)
def test_split_tables_in_float32_stay_within_rounding(jobs, layer):
    whole, split = (jobs[2, 2]["float32", layer][m] for m in (1, 2))
    # the dots are summed in another order: measured at most 1.0e-6 relative after 20 steps (closing note of #35)
    assert split["losses"] == pytest.approx(whole["losses"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("job", [(2, 2), (4, 2)], ids=["M2", "M2x2"])
@pytest.mark.parametrize("layer", LAYERS)
def test_each_rank_holds_half_the_tables(jobs, job, layer):
    whole, split = (jobs[job]["float64", layer][m] for m in (1, 2))
    assert split["table_bytes"] * 2 == whole["table_bytes"]


# ---------------------------------------------------------------------- through train.py
def train_runs(out: Path, *runs: tuple[str, list[str]]) -> None:
    from test_fsdp import COMMON, TWO

    from conftest import run_train

    for name, extra in runs:
        proc = run_train(*COMMON, "trainer=fsdp", *TWO, *extra, f"out_dir={out}", f"run_name={name}", cwd=out,
                         timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("mp-runs")
    train_runs(out, ("whole", []), ("split", ["trainer.memory_parallel=2"]))
    return out


@pytest.mark.slow
def test_a_split_run_trains_to_the_loss_of_whole_tables_and_its_checkpoint_evaluates_to_it(trained):
    from omegaconf import OmegaConf
    from test_fsdp import results

    from peerlab.builders import build_datamodule
    from peerlab.evaluate import load_checkpoint
    from peerlab.train import evaluate

    whole, split = results(trained / "whole"), results(trained / "split")
    assert split["config"]["trainer"]["memory_parallel"] == 2 and split["steps"] == whole["steps"]
    assert split["final_val_loss"] == pytest.approx(whole["final_val_loss"], rel=1e-5)
    module, _ = load_checkpoint(trained / "split" / "checkpoints" / "last.ckpt")  # one consolidated file
    dm = build_datamodule(OmegaConf.create(module.run_config), progress=False)
    dm.setup()
    val_loss, _ = evaluate(module, dm.eval_dataloader())
    assert val_loss == pytest.approx(split["final_val_loss"], abs=1e-6)


def interrupt_after_first_checkpoint(extra: list[str], out: Path) -> None:
    """Start ``train.py`` with ``extra``, SIGTERM it once its first sharded checkpoint is whole, and wait."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_fsdp import COMMON

    from conftest import ROOT

    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *COMMON, *extra, f"out_dir={out}", "run_name=r"],
                            cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ckpt = out / "r" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.time() + 300
        while not (ckpt / "meta.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted: raise the budget"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143 and ckpt.is_dir(), err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("resume_m", [2, 1])
def test_sigterm_at_m2_resumes_at_m2_bit_identically_and_at_m1_from_the_same_shards(trained, tmp_path, resume_m):
    from test_fsdp import TWO, results, rows

    interrupt_after_first_checkpoint(["trainer=fsdp", *TWO, "trainer.memory_parallel=2"], tmp_path)
    train_runs(tmp_path, ("r", [f"trainer.memory_parallel={resume_m}"]))
    a, b = results(trained / "split"), results(tmp_path / "r")
    assert 0 < b["resumed_from_step"] < a["steps"] and b["memory_parallel"] == resume_m
    if resume_m == 2:  # the same layout: bit-identical
        assert b["final_val_loss"] == a["final_val_loss"]
        assert rows(tmp_path / "r", "train/loss") == rows(trained / "split", "train/loss")
    else:  # torch's distributed checkpoint re-read the column shards as FSDP's row shards
        assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], rel=1e-5)


@pytest.mark.slow
def test_a_run_saved_at_m2_of_4_processes_resumes_at_m4(trained, tmp_path):
    """4 processes of 2 sequences see the batches 2 processes of 4 see (LayerNorm queries: no per-rank statistics),
    so the resumed run ends where the 2-process split run ended, up to rounding."""
    from test_fsdp import COMMON, results

    from conftest import run_train

    four = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=4", "data.batch_size=2"]
    interrupt_after_first_checkpoint([*four, "trainer.memory_parallel=2"], tmp_path)
    proc = run_train(*COMMON, *four, "trainer.memory_parallel=4", f"out_dir={tmp_path}", "run_name=r", cwd=tmp_path,
                     timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = results(tmp_path / "r")
    assert resumed["resumed_from_step"] > 0 and resumed["memory_parallel"] == 4 and resumed["world_size"] == 4
    assert resumed["final_val_loss"] == pytest.approx(results(trained / "split")["final_val_loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("job,dtype", [((2, 2), "float32"), ((4, 2), "float64")], ids=["M2-float32", "M2x2-float64"])
@pytest.mark.parametrize("layer", LAYERS)
def test_the_planner_counts_the_bytes_that_pass_through_the_process_group(jobs, job, dtype, layer):
    from memory_parallel_worker import LAYERS as SIZES
    from memory_parallel_worker import MODEL, VOCAB

    from peerlab.builders import build_model
    from peerlab.parallel.memory import Execution
    from peerlab.parallel.traffic import comm_bytes
    from peerlab.sizes import load_layer

    world, m = job
    cfg = load_layer(layer)
    cfg.update(SIZES[layer])
    for split in (1, m):
        counted = jobs[job][dtype, layer][split]
        torch.set_default_dtype(getattr(torch, dtype))
        try:
            with torch.device("meta"):
                model = build_model(MODEL, cfg, VOCAB, counted["seq"])
        finally:
            torch.set_default_dtype(torch.float32)
        ex = Execution(device_type="cpu", precision="64-true" if dtype == "float64" else "32-true", strategy="fsdp",
                       world=world, micro_batch=counted["batch"], seq_len=counted["seq"], memory_parallel=split)
        planned = sum(comm_bytes(model, ex).values())
        assert planned == pytest.approx(sum(counted["sent"].values()), rel=0.10), (split, comm_bytes(model, ex), counted["sent"])
