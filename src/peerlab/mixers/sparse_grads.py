"""Which gradients PEER's expert tables get (``layer.sparse_grads``): sparse rows, or dense N x d_model tables.

Sparse row gradients pay when a step retrieves fewer rows than N: backward and the optimizer then touch only those
rows (:class:`peerlab.optim.LazyAdamW`). Under DDP they must also be averaged across processes: the LightningModule
keeps sparse tables out of DDP's reducer and averages them itself (``peerlab/sparse_allreduce.py``, which says why:
torch's gloo sparse all-reduce corrupted the heap in our runs). That path is tested on gloo only; NCCL has no sparse
all-reduce for DDP either (pytorch/pytorch#22400). ``auto`` (the default) therefore chooses:

| where | gradients |
|---|---|
| one process | sparse in a step that retrieves fewer than N rows, dense in a step that retrieves all N |
| DDP on gloo | sparse in every step (which tables are sparse is fixed when DDP wraps the model), averaged by peerlab |
| DDP on NCCL or another backend (one process too) | dense, through DDP's buckets; at the paper's batch (262k tokens x 128 retrievals, N = 1M) nearly every row is retrieved anyway |

A dense and a sparse step give the same update when every row is retrieved. When some rows are not, LazyAdamW leaves
them untouched under sparse gradients, while dense AdamW also moves them along their momentum (and their zero
gradient); at the paper's scale the two coincide, on small runs they differ slightly (docs/layers.md).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

from peerlab.mixers.base import MixerConfigError

GradMode = bool | Literal["auto"]
SPARSE_BACKENDS = ("gloo",)


def check_mode(mode: object) -> GradMode:
    if not (mode is True or mode is False or mode == "auto"):
        raise MixerConfigError(f"layer.sparse_grads={mode!r}: allowed: auto, true, false")
    return mode  # type: ignore[return-value]


def process_group() -> tuple[str | None, int]:
    """``(backend, world size)`` of the default process group, ``(None, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return str(dist.get_backend()), dist.get_world_size()
    return None, 1


def resolve(mode: GradMode, backend: str | None, world: int, sharded: bool = False) -> GradMode:
    """``True`` (always sparse), ``False`` (always dense) or ``"auto"`` (per step: sparse when fewer than N rows
    were retrieved), for a requested ``mode`` under a process group ``backend`` of ``world`` processes;
    ``sharded``: FSDP (``trainer=fsdp``), whose reduce-scatter takes dense gradients only."""
    if sharded:
        if mode is True:
            raise MixerConfigError("layer.sparse_grads=true: trainer=fsdp shards and reduces dense gradients only "
                                   "(its reduce-scatter has no sparse kernel); use layer.sparse_grads=auto or false")
        return False
    if backend is None:  # no process group: nothing to reduce
        return mode
    # A process group exists (DDP wraps the model even with one process): its backend must reduce what we produce.
    can_reduce = backend in SPARSE_BACKENDS
    if mode is True and not can_reduce:
        raise MixerConfigError(
            f"layer.sparse_grads=true: the {backend!r} process group cannot all-reduce sparse gradients "
            f"(pytorch/pytorch#22400; only {', '.join(SPARSE_BACKENDS)} can); use layer.sparse_grads=auto "
            "(dense tables under this backend) or false")
    if mode == "auto":
        return can_reduce
    return mode


def sparse_this_step(mode: GradMode, rows_used: int, n_rows: int) -> bool:
    """Whether a step's table gradients are sparse, given the resolved mode and the rows it retrieved."""
    return rows_used < n_rows if mode == "auto" else bool(mode)


def expected_rows(draws: int, n_rows: int) -> int:
    """Distinct rows among ``draws`` uniform draws from ``n_rows``: the rows a step's table gradient holds if
    retrieval spreads evenly (the planner's assumption; a skewed router touches fewer)."""
    import math

    return min(n_rows, round(n_rows * -math.expm1(draws * math.log1p(-1 / n_rows)))) if n_rows > 1 else n_rows


def count_rows(indices: torch.Tensor) -> int:
    return int(torch.unique(indices).numel())
