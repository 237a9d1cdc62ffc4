"""Our all-reduce of sparse expert-table gradients (``peerlab.parallel.sparse_allreduce``) in real two-process gloo jobs,
against float64 references computed in one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from peerlab.parallel.sparse_allreduce import sparse_grad_params

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_sparse_worker as worker  # noqa: E402

from rank_processes import run_rank_processes  # noqa: E402


def run_ranks(tmp_path: Path, mode: str, world: int = 2) -> list[dict]:
    outs = run_rank_processes(HERE / "ddp_sparse_worker.py", tmp_path, mode, world=world, timeout=300)
    return [torch.load(o, weights_only=True) for o in outs]


@pytest.mark.slow  # two processes
def test_mean_of_sparse_dense_and_missing_gradients_matches_the_dense_reference(tmp_path):
    ranks = run_ranks(tmp_path, "reduce")
    per_rank = [worker.hand_made_grads(r) for r in range(2)]
    for i in range(4):
        grads = [g for g in (per_rank[0][i], per_rank[1][i]) if g is not None]
        for out in ranks:
            if not grads:
                assert out[f"grad{i}"].numel() == 0  # no rank had one: none is made up
                continue
            expected = sum(g.to_dense() for g in grads) / 2  # DDP's mean: a missing gradient counts as zero
            torch.testing.assert_close(out[f"grad{i}"], expected, rtol=0, atol=1e-15)
        assert torch.equal(ranks[0][f"grad{i}"], ranks[1][f"grad{i}"])  # bit-identical on every rank


@pytest.mark.slow  # two processes
def test_ddp_with_our_sparse_reduction_trains_what_one_process_trains_on_the_whole_batch(tmp_path):
    ranks = run_ranks(tmp_path, "train")
    assert int(ranks[0]["ignored"]) == 2  # PEER's down and up tables
    # DDP left the tables' gradients alone (they differ across ranks after backward): ours is their only reduction.
    assert not torch.allclose(ranks[0]["local_up_grads"], ranks[1]["local_up_grads"])
    # Rank 1 started from other weights: DDP's broadcast (dense) and ours (the tables) made them rank 0's.
    for key in [k for k in ranks[0] if k.startswith("end.")]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # One process, the same start, the whole batch: the mean loss over both halves is what DDP's mean reproduces.
    m = worker.model()
    m.load_state_dict({k[len("start."):]: v for k, v in ranks[0].items() if k.startswith("start.")})
    m[1].prepare_for_backend()
    from peerlab.optim import LazyAdamW, clip_grad_norm

    opt = LazyAdamW(m.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(7)
    for _ in range(6):
        x = torch.randn(2, 6, 8, generator=data, dtype=torch.float64)
        m(x).square().mean().backward()
        clip_grad_norm(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    moved = 0.0
    for key, value in m.state_dict().items():
        torch.testing.assert_close(ranks[0][f"end.{key}"], value, rtol=1e-10, atol=1e-12)
        moved = max(moved, (value - ranks[0][f"start.{key}"]).abs().max().item())
    assert moved > 1e-3  # the check compared trained weights, not the start


@pytest.mark.parametrize("sparse", [True, False])
def test_only_embeddings_with_sparse_gradients_are_found(sparse):
    m = nn.ModuleDict({"table": nn.Embedding(4, 2, sparse=sparse), "bag": nn.EmbeddingBag(4, 2, sparse=True),
                       "linear": nn.Linear(2, 2)})
    expected = ["bag.weight", "table.weight"] if sparse else ["bag.weight"]
    assert sorted(sparse_grad_params(m)) == expected
