"""One rank of a two-process gloo job for ``test_sparse_allreduce.py`` (run as a script, not collected).

``python ddp_sparse_worker.py RANK WORLD STORE OUT MODE``: joins a process group through the file ``STORE`` and
writes what the test checks to ``OUT`` (a ``torch.save`` of tensors only). MODE ``reduce``: averages hand-made
gradients (sparse, overlapping, dense, missing). MODE ``train``: trains a small PEER under DDP, with its tables
ignored by DDP and reduced by us, on this rank's half of every batch, from weights that differ across ranks.
"""

from __future__ import annotations

import gc
import sys

import torch
import torch.distributed as dist
from torch import nn

from peerlab.mixers.peer import PEER
from peerlab.optim import LazyAdamW, clip_grad_norm
from peerlab.parallel.sparse_allreduce import (
    all_reduce_sparse_mean,
    broadcast_from_rank0,
    ignore_in_ddp,
    sparse_grad_params,
)

N_ROWS, WIDTH = 12, 3


def hand_made_grads(rank: int) -> list[torch.Tensor | None]:
    """Per parameter: overlapping sparse rows (one repeated, uncoalesced); a dense gradient on rank 1 only and sparse
    on rank 0; a gradient on rank 0 only; no gradient anywhere."""
    g = torch.Generator().manual_seed(100 + rank)
    rows = torch.tensor([[1, 5, 5, 7 + rank]])
    sparse = torch.sparse_coo_tensor(rows, torch.randn(4, WIDTH, generator=g, dtype=torch.float64), (N_ROWS, WIDTH),
                                     check_invariants=True)
    other = torch.randn(N_ROWS, WIDTH, generator=g, dtype=torch.float64)
    mixed = other if rank == 1 else other.to_sparse(1)
    only0 = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.ones(1, WIDTH, dtype=torch.float64), (N_ROWS, WIDTH),
                                    check_invariants=True)
    return [sparse, mixed, only0 if rank == 0 else None, None]


def reduce(rank: int) -> dict:
    params = [nn.Parameter(torch.zeros(N_ROWS, WIDTH, dtype=torch.float64)) for _ in range(4)]
    for p, g in zip(params, hand_made_grads(rank), strict=True):
        p.grad = g
    all_reduce_sparse_mean(params)
    return {f"grad{i}": (p.grad.to_dense() if p.grad is not None else torch.tensor([])) for i, p in enumerate(params)}


def model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 8), PEER(d_model=8, n_experts=64, heads=2, k=4, d_key=8, query_norm="layer",
                                               sparse_grads=True)).double()


def train(rank: int, steps: int = 6) -> dict:
    torch.manual_seed(rank)  # different weights on each rank: the broadcast must make them equal
    m = model()
    m[1].prepare_for_backend()
    sparse = sparse_grad_params(m)
    ignore_in_ddp(m, sparse)
    ddp = nn.parallel.DistributedDataParallel(m)
    broadcast_from_rank0(sparse.values())
    start = {k: v.clone() for k, v in m.state_dict().items()}
    opt = LazyAdamW(m.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(7)
    local = []
    for _ in range(steps):
        x = torch.randn(2, 6, 8, generator=data, dtype=torch.float64)  # the whole batch; this rank takes its half
        ddp(x[rank:rank + 1]).square().mean().backward()
        local.append(m[1].up.weight.grad.to_dense().clone())  # as DDP left it: this rank's own
        all_reduce_sparse_mean(sparse.values())
        clip_grad_norm(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    del ddp  # its reducer must go before the process group does (else, at exit: "terminate called", SIGABRT)
    return {**{f"start.{k}": v for k, v in start.items()}, **{f"end.{k}": v for k, v in m.state_dict().items()},
            "ignored": torch.tensor(len(sparse)), "local_up_grads": torch.stack(local)}


if __name__ == "__main__":
    rank, world, store, out, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(reduce(rank) if mode == "reduce" else train(rank), out)
        gc.collect()
        dist.barrier()  # both ranks done with every collective before either tears the group down
    finally:
        dist.destroy_process_group()
