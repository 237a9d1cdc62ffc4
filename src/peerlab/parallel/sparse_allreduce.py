"""Averaging sparse (row-wise) gradients across DDP processes ourselves, on the main thread, with dense collectives.

PEER's expert tables get sparse COO gradients (``mixers/sparse_grads.py``). DistributedDataParallel would reduce
them with the process group's sparse all-reduce, which only gloo has and which runs in gloo's worker threads; in
our two-process CPU runs that path corrupted the heap ("malloc(): unaligned tcache chunk detected", or SIGSEGV,
after thousands to tens of thousands of steps of a 2-rank PEER run; core dumps inside ``AsyncSparseAllreduceWork``;
``tests/ddp_sparse_stress.py`` runs both ways). So the tables stay out of DDP's reducer (:func:`ignore_in_ddp`)
and, before every optimizer step, each rank gathers every rank's rows and values with two padded ``all_gather``
calls, sums them and divides by the world size, as DDP would (:func:`all_reduce_sparse_mean`). Dense
``all_gather`` exists on every backend, so nothing here is gloo-specific (it has run on gloo only).

Each rank sends its own nnz rows, so the traffic is ``world x max nnz x d`` per table, which is what a sparse
all-reduce moves too. DDP does not broadcast ignored parameters at wrap time either: :func:`broadcast_from_rank0`
makes the tables equal on all ranks before training starts.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from peerlab.optim.lazy_adamw import coalesced


def sparse_grad_params(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``module`` (by fully qualified name) whose gradients are sparse: the weights of
    ``nn.Embedding``/``nn.EmbeddingBag`` with ``sparse=True``, DDP's own rule for "expect sparse gradients"."""
    found = {}
    for prefix, sub in module.named_modules():
        if isinstance(sub, (nn.Embedding, nn.EmbeddingBag)) and sub.sparse:
            found[f"{prefix}.weight" if prefix else "weight"] = sub.weight
    return found


def ignore_in_ddp(module: nn.Module, names: Iterable[str]) -> None:
    """Keep ``names`` (fully qualified in ``module``, the module DDP will wrap) out of DDP's broadcast and reducer.
    DDP reads the list when it wraps ``module``; call this before."""
    names = sorted(set(names) | set(getattr(module, "_ddp_params_and_buffers_to_ignore", ())))
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)


@torch.no_grad()
def broadcast_from_rank0(params: Iterable[torch.Tensor]) -> None:
    for p in params:
        dist.broadcast(p.data, src=0)


def _rows_and_values(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's gradient of ``p`` as unique sorted rows and their values; none for a missing gradient."""
    grad = p.grad
    if grad is None:
        return (torch.empty(0, dtype=torch.long, device=p.device),
                torch.empty(0, *p.shape[1:], dtype=p.dtype, device=p.device))
    grad = coalesced(grad) if grad.is_sparse else grad.to_sparse(1).coalesce()
    return grad._indices()[0], grad._values()


@torch.no_grad()
def all_reduce_sparse_mean(params: Iterable[torch.Tensor], group: dist.ProcessGroup | None = None) -> None:
    """Replace each parameter's gradient by the mean over ranks of every rank's gradient, as a coalesced sparse
    tensor, identical on all ranks. Gradients may be sparse, dense or missing on any rank; a parameter without a
    gradient on every rank keeps none. Every rank must pass the same parameters in the same order."""
    params = list(params)
    world = dist.get_world_size(group)
    if not params or world == 1:
        return
    local = [_rows_and_values(p) for p in params]
    device = params[0].device
    counts = torch.tensor([[rows.numel(), p.grad is not None] for (rows, _), p in zip(local, params, strict=True)],
                          dtype=torch.long, device=device)
    gathered = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(gathered, counts, group=group)
    all_counts = torch.stack(gathered).cpu()  # (world, params, 2)
    for i, (p, (rows, values)) in enumerate(zip(params, local, strict=True)):
        nnz = all_counts[:, i, 0].tolist()
        if not all_counts[:, i, 1].any():
            continue  # no rank has a gradient for it
        width = max(nnz)
        pad = width - rows.numel()
        rows = torch.cat([rows, rows.new_zeros(pad)])
        values = torch.cat([values, values.new_zeros(pad, *values.shape[1:])])
        all_rows = [torch.empty_like(rows) for _ in range(world)]
        all_values = [torch.empty_like(values) for _ in range(world)]
        dist.all_gather(all_rows, rows, group=group)
        dist.all_gather(all_values, values, group=group)
        rows = torch.cat([r[:n] for r, n in zip(all_rows, nnz, strict=True)])
        values = torch.cat([v[:n] for v, n in zip(all_values, nnz, strict=True)])
        # Summing in rank order makes the sum, and so the update, bit-identical on every rank.
        total = torch.sparse_coo_tensor(rows.unsqueeze(0), values, p.shape, check_invariants=False).coalesce()
        p.grad = total / world
