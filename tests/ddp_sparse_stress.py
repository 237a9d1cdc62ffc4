"""A long two-process gloo DDP run of a small PEER, to compare how PEER's sparse table gradients are reduced (a
script, not collected by pytest: it runs for minutes).

    python tests/ddp_sparse_stress.py peerlab 100000     # tables ignored by DDP, averaged by peerlab.parallel.sparse_allreduce
    python tests/ddp_sparse_stress.py ddp 100000         # DDP's own sparse all-reduce (gloo's worker threads)

``ddp`` is what peerlab did before ``sparse_allreduce.py``: in our runs it died of heap corruption or SIGSEGV after
thousands to tens of thousands of steps, sooner with the cores oversubscribed (e.g. two ``while :; do :; done``
loops beside it). Rank 0 prints its progress every 1000 steps; a crash ends the run with a non-zero status.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from peerlab.mixers.peer import PEER
from peerlab.optim import LazyAdamW, clip_grad_norm
from peerlab.parallel.sparse_allreduce import (
    all_reduce_sparse_mean,
    broadcast_from_rank0,
    ignore_in_ddp,
    sparse_grad_params,
)


def run(rank: int, world: int, mode: str, steps: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), PEER(d_model=32, n_experts=256, heads=2, k=4, d_key=16,
                                                  query_norm="layer", sparse_grads=True))
    model[1].prepare_for_backend()
    tables = sparse_grad_params(model) if mode == "peerlab" else {}
    if tables:
        ignore_in_ddp(model, tables)
    ddp = nn.parallel.DistributedDataParallel(model)
    broadcast_from_rank0(tables.values())
    optimizer = LazyAdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for step in range(steps):
        ddp(torch.randn(4, 32, 32)).square().mean().backward()
        all_reduce_sparse_mean(tables.values())
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if rank == 0 and step % 1000 == 0:
            print(f"{mode}: step {step}, {time.perf_counter() - start:.0f} s", flush=True)
    if rank == 0:
        print(f"{mode}: {steps} steps done, {time.perf_counter() - start:.0f} s", flush=True)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["peerlab", "ddp"], help="who reduces the tables' sparse gradients")
    ap.add_argument("steps", type=int)
    ap.add_argument("--port", type=int, default=29533)
    args = ap.parse_args()
    mp.spawn(run, args=(2, args.mode, args.steps, args.port), nprocs=2)


if __name__ == "__main__":
    main()
