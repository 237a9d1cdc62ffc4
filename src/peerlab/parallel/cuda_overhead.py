"""GPU memory a training process holds outside PyTorch's tensors: the CUDA context and NCCL's buffers.

Neither goes through PyTorch's caching allocator, so neither the memory model (:mod:`peerlab.parallel.memory`) nor
torch's trackers see them; both are real bytes on the card, and a plan that leaves them to "headroom" can OOM at
its first collective. The figures are measured ones from public reports (each constant names its source); they
vary with the driver, the NCCL version and the topology, so the planner shows them as a named term beside the
peak (``overhead_gb``) and a point fits when ``peak + overhead`` stays under 90% of the card.

NCCL allocates per communicator (one per process group that runs a collective), and its all-to-all opens
connections to every peer on every channel, which costs far more than the ring that all-gathers, reduce-scatters
and all-reduces use. peerlab's groups under each strategy:

- DDP: the default group.
- FSDP (``trainer=fsdp``): the default group and the data-parallel mesh's (Lightning's ``ModelParallelStrategy``).
- memory-parallel tables (``trainer.memory_parallel=M``): also the tables' group of M ranks (all-gathers, the
  all-to-all, the all-reduce) and, with more than one replica, the replicas' group for the tables' gradients.
"""

from __future__ import annotations

CUDA_CONTEXT = 781 * 10**6
"""Bytes ``nvidia-smi`` shows for a process that has only initialised CUDA through PyTorch (its kernels loaded):
https://github.com/pytorch/pytorch/issues/34323 ("781MB")."""

NCCL_COMMUNICATOR = {2: 544 * 10**6, "more": 688 * 10**6}
"""Bytes per NCCL communicator after its first all-reduce, 4 x A100 over NVLink: 544 MB for a group of 2 GPUs, 688 MB
for more: https://github.com/NVIDIA/nccl/issues/964."""

NCCL_ALL_TO_ALL = (434 - 106) * 10**7
"""Bytes an all-to-all adds (connections to every peer on all 32 channels), 8 x H100: 1.06 GB of NCCL memory per GPU
before the first ``all_to_all_single``, 4.34 GB after: https://github.com/NVIDIA/nccl/issues/1685."""


def communicators(strategy: str, world: int, memory_parallel: int = 1) -> list[int]:
    """The sizes of the process groups that run collectives on each GPU (see the module's docstring)."""
    if world <= 1:
        return []
    groups = [world] if strategy == "ddp" else [world, world]
    if strategy == "fsdp" and memory_parallel > 1:
        groups.append(memory_parallel)
        if world // memory_parallel > 1:
            groups.append(world // memory_parallel)
    return groups


def overhead(device_type: str, strategy: str, world: int, memory_parallel: int = 1) -> dict[str, int]:
    """Bytes per GPU outside PyTorch's allocator, by term (empty off CUDA)."""
    if device_type != "cuda":
        return {}
    out = {"CUDA context": CUDA_CONTEXT}
    groups = communicators(strategy, world, memory_parallel)
    if groups:
        out["NCCL communicators"] = sum(NCCL_COMMUNICATOR[2] if n == 2 else NCCL_COMMUNICATOR["more"] for n in groups)
    if strategy == "fsdp" and memory_parallel > 1:  # the split tables move activations with an all-to-all
        out["NCCL all-to-all"] = NCCL_ALL_TO_ALL
    return out


def of(ex) -> dict[str, int]:
    """:func:`overhead` of an :class:`~peerlab.parallel.memory.Execution`."""
    return overhead(ex.device_type, ex.strategy, ex.world, ex.memory_parallel)


def total(ex) -> int:
    """Bytes of :func:`of`, all terms."""
    return sum(of(ex).values())
