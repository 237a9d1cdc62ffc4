"""``trainer=fsdp`` (FSDP2 through Lightning's ModelParallelStrategy) on 2 CPU processes with gloo: every mixer
against DDP and one process; per-rank bytes; training, validation, SIGTERM resume, the minutes-based checkpoint
and the consolidated checkpoint through ``train.py``; sharded checkpoints read as data."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, run_train
from rank_processes import run_rank_processes

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent


def run_ranks(tmp_path: Path, world: int = 2) -> dict:
    outs = run_rank_processes(HERE / "fsdp_worker.py", tmp_path, world=world, timeout=600, cwd=HERE)
    return torch.load(outs[0], weights_only=False)


@pytest.fixture(scope="module")
def mixers(tmp_path_factory) -> dict:
    return run_ranks(tmp_path_factory.mktemp("fsdp-mixers"))


MIXERS = ["ffw", "moe", "moe_tc", "moe_fine", "pkm", "peer", "memory_plus"]


@pytest.mark.parametrize("layer", MIXERS)
def test_fsdp_trains_what_ddp_trains(mixers, layer):
    r = mixers[layer]
    # query BatchNorm and expert choice act per rank in both, so both see the same batches
    assert r["fsdp"] == pytest.approx(r["ddp"], abs=1e-6, rel=0)
    moved = max((r["fsdp_weights"][k] - v).abs().max().item() for k, v in r["start_weights"].items())
    assert moved > 1e-3  # the comparison is of trained weights
    for name, value in r["ddp_weights"].items():
        torch.testing.assert_close(r["fsdp_weights"][name], value, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("layer", ["peer-layernorm", "pkm-layernorm", "ffw", "moe_tc", "memory_plus"])
def test_fsdp_trains_what_one_process_trains_on_the_whole_batch(mixers, layer):
    r = mixers[layer]  # no per-rank statistics: LayerNorm queries, or no query norm at all
    # measured: at most 4.8e-7 apart (experiments/results/fsdp/agreement.md): 4x that
    assert r["fsdp"] == pytest.approx(r["single"], abs=2e-6, rel=0)


@pytest.mark.parametrize("layer", MIXERS)
def test_each_rank_holds_half_the_weights_and_optimizer_state(mixers, layer):
    r = mixers[layer]
    (params, moments), (one_params, one_moments) = r["bytes"], r["single_bytes"]
    assert 0.49 <= params / one_params <= 0.52 and 0.49 <= moments / one_moments <= 0.52  # dim-0 shards, padded


def test_checkpointed_blocks_and_the_chunked_loss_under_fsdp(mixers):
    r = mixers["peer"]
    assert r["fsdp_ckpt_chunked"] == pytest.approx(r["fsdp"], abs=1e-6, rel=0)


# ---------------------------------------------------------------------------------------------- through train.py
PEER = ["layer=peer_small", "layer.n_experts=256", "layer.d_key=16", "layer.query_norm=layer"]
# ~63 steps: long enough for a checkpoint and a kill after it, short enough that the 2-rank and one-process runs'
# weights stay within float rounding (PEER's top-k is discontinuous: longer runs drift apart by routing flips)
COMMON = [*TINY, *PEER, "logger=csv", "budget=1.3e10", "trainer.ckpt_every_steps=10", "trainer.val_every_steps=20"]
TWO = ["trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"]


def rows(run_dir: Path, key: str) -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(fh) if r.get(key)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    out = tmp_path_factory.mktemp("fsdp-runs")
    for name, extra in [("fsdp", ["trainer=fsdp", *TWO]), ("ddp", ["trainer=ddp", *TWO, "layer.sparse_grads=false"]),
                        ("single", ["data.batch_size=8", "layer.sparse_grads=false"])]:
        proc = run_train(*COMMON, *extra, f"out_dir={out}", f"run_name={name}", cwd=out, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_fsdp_run_validates_each_block_once_as_one_process_does(trained):
    fsdp, ddp, single = (results(trained / n) for n in ("fsdp", "ddp", "single"))
    assert fsdp["strategy"] == "fsdp" and fsdp["world_size"] == 2 and fsdp["expert_grads"] == {"block0": "dense gradients"}
    assert fsdp["steps"] == single["steps"] and fsdp["flops"] == single["flops"]
    # the final evaluation: every rank scored its share of the split, and the sum is one process's. After 59 steps
    # the weights differ from one process's by the rounding of the gradients' reduction order. Measured on this
    # 2-core machine (2026-12-07): FSDP 6.5e-9 final, at most 4.8e-7 in a periodic validation, usage 4.3e-8; DDP
    # (its bucketed all-reduce sums in another order) 6.4e-6 final, at most 1.14e-5 periodic. Tolerances: 2-4 times.
    tol = {"fsdp": 2e-6, "ddp": 3e-5}
    assert fsdp["final_val_loss"] == pytest.approx(single["final_val_loss"], abs=tol["fsdp"])
    assert ddp["final_val_loss"] == pytest.approx(single["final_val_loss"], abs=tol["ddp"])
    assert fsdp["usage"] == pytest.approx(single["usage"], abs=2e-7)  # usage summed over ranks, padding uncounted
    # the periodic validations: the same first val_batches batches, shared out
    one = rows(trained / "single", "val/loss")
    for name, run in (("fsdp", fsdp), ("ddp", ddp)):
        got = rows(Path(run["run_dir"]), "val/loss")
        assert [s for s, _ in got] == [s for s, _ in one] and len(one) >= 3
        assert [v for _, v in got] == pytest.approx([v for _, v in one], abs=tol[name])


def test_fsdp_run_ends_with_one_consolidated_checkpoint_that_loads_as_any_other(trained):
    from peerlab.checkpointing import load_checkpoint_dict
    from peerlab.data.datamodule import TextDataModule  # noqa: F401 (the run's own data, below)
    from peerlab.evaluate import load_checkpoint
    from peerlab.train import evaluate

    ckpt = trained / "fsdp" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and not any(p.name.startswith(".") for p in ckpt.parent.iterdir())
    raw = load_checkpoint_dict(ckpt)
    assert raw["global_step"] == results(trained / "fsdp")["steps"] and raw["optimizer_states"]
    module, _ = load_checkpoint(ckpt)  # saved_settings.rebuild, as eval.py and analysis.per_source load it
    from omegaconf import OmegaConf

    from peerlab.builders import build_datamodule

    dm = build_datamodule(OmegaConf.create(module.run_config), progress=False)
    dm.setup()
    val_loss, _ = evaluate(module, dm.eval_dataloader())
    assert val_loss == pytest.approx(results(trained / "fsdp")["final_val_loss"], abs=1e-6)
    proc = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"ckpt={ckpt}", f"out_dir={trained / 'eval'}"],
                          cwd=trained, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (trained / "eval" / "table.md").is_file()


def test_sigterm_resumes_a_sharded_run_bit_identically(trained, tmp_path):
    args = [sys.executable, str(ROOT / "train.py"), *COMMON, "trainer=fsdp", *TWO, f"out_dir={tmp_path}", "run_name=r"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    ckpt = tmp_path / "r" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.time() + 300
        while not (ckpt / "meta.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        def logged() -> int:
            try:
                return len(rows(tmp_path / "r", "train/loss"))
            except (OSError, ValueError, KeyError):  # not written yet, or a row being written
                return 0

        saved = logged()
        while logged() < saved + 2 and proc.poll() is None and time.time() < deadline:  # two steps past it, as logged
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted: raise the budget"
        proc.send_signal(signal.SIGTERM)  # to rank 0 only: the ranks agree on the signal at the next step
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    assert "last.ckpt saved at step" in err and ckpt.is_dir()  # a sharded folder while training
    assert err.count("interrupted: ") == 1, err[-3000:]  # both ranks stop at one step; rank 0 says so, once
    resumed = run_train(*COMMON, "trainer=fsdp", *TWO, f"out_dir={tmp_path}", "run_name=r", cwd=tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = results(trained / "fsdp"), results(tmp_path / "r")
    assert 0 < b["resumed_from_step"] < a["steps"] and b["final_val_loss"] == a["final_val_loss"]
    wa = torch.load(trained / "fsdp" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert rows(tmp_path / "r", "train/loss") == rows(trained / "fsdp", "train/loss")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_minutes_based_checkpoint_fires_on_every_rank_at_the_same_step(tmp_path, cache_dir, strategy):
    extra = ["layer.sparse_grads=false"] if strategy == "ddp" else []
    proc = run_train(*COMMON, f"trainer={strategy}", *TWO, *extra, "trainer.ckpt_every_steps=100000",
                     "trainer.ckpt_every_minutes=0.002", f"out_dir={tmp_path}", "run_name=m", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]  # a rank saving alone leaves the other in a collective: a hang

    def saves(log: Path) -> list[str]:
        return [line.split("] - ", 1)[1] for line in log.read_text().splitlines() if "last.ckpt refreshed at step" in line]

    rank0, rank1 = saves(tmp_path / "m" / "train.log"), saves(tmp_path / "m" / "train.rank1.log")
    steps = [line.split(" (")[0] for line in rank0]
    assert len(steps) >= 2 and steps == [line.split(" (")[0] for line in rank1]


def test_an_fsdp_checkpoint_exports_to_transformers_with_its_logits(trained, tmp_path):
    """issue 38: the consolidated checkpoint of a run trained with FSDP exports like any other."""
    from transformers import AutoModelForCausalLM

    import peerlab
    import peerlab.hf  # noqa: F401
    from peerlab.export import export

    ckpt = trained / "fsdp" / "checkpoints" / "last.ckpt"
    out = export(ckpt, tmp_path / "hf")
    ours, _ = peerlab.load(ckpt)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, ours.shape.vocab_size, (2, ours.shape.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids).logits - ours(ids)).abs().max().item() <= 1e-5
