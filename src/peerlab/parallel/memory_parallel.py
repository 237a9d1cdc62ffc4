"""Memory parallelism (``trainer.memory_parallel=M``): the expert tables of PEER, PKM and Memory+ split by columns
over groups of M ranks, applied from outside the layers, as torchtitan's ``parallelize.py`` applies its plans. A
mixer learns only that its tables are split and over which group (``Mixer.tables_group``); how its tokens meet the
columns is :mod:`peerlab.mixers.column_shards`, with the bytes of each collective.

The W processes form a 2-D ``DeviceMesh`` ``(W / M, M)`` named ``("replica", "memory_parallel")``:

- each row of M consecutive ranks is a memory-parallel group; every table becomes a DTensor placed ``Shard(1)``
  over it, so that a rank holds N x d_model / M of each table, its gradient and its AdamW moments;
- the rows are replicas of each other's tables. The layer's collectives already give each rank's columns the
  gradient of all its group's tokens; :func:`reduce_table_grads` sums that over the replicas, once per optimizer
  step (not per micro-batch), and divides by W: the mean over every rank's tokens, what FSDP takes at M = 1;
- everything else, retrieval included, is sharded by FSDP over all W ranks exactly as ``trainer=fsdp`` shards it
  (:mod:`peerlab.parallel.fsdp`, which leaves the tables alone through ``fully_shard(ignored_params=...)``); every rank
  trains on its own share of the batches, as at M = 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from peerlab.config import ConfigError

MESH_DIMS = ("replica", "memory_parallel")
AUTO = "auto"


def sizes(world: int, d_model: int) -> list[int]:
    """The memory-parallel sizes a run of ``world`` processes can take: divisors of both."""
    return [m for m in range(1, world + 1) if world % m == 0 and d_model % m == 0]


def choose(model: nn.Module, ex) -> int:
    """``trainer.memory_parallel=auto``: the size whose step moves the fewest bytes (``peerlab.parallel.traffic``),
    the smaller on a tie; 1 for a model without expert tables or a run that is not sharded over several ranks."""
    if ex.strategy != "fsdp" or ex.world <= 1 or not any(m.expert_tables() for m in model.mixers):
        return 1
    return ranked(model, ex)[0]


def ranked(model: nn.Module, ex) -> list[int]:
    """The memory-parallel sizes ``ex``'s world can take for ``model``, the fewest bytes moved per step first."""
    from dataclasses import replace

    from peerlab.parallel.traffic import comm_bytes

    fsdp = replace(ex, strategy="fsdp")
    traffic = {m: sum(comm_bytes(model, replace(fsdp, memory_parallel=m)).values())
               for m in sizes(ex.world, model.shape.d_model)}
    return sorted(traffic, key=lambda m: (traffic[m], m))


def check_layout(m: int, world: int, mixers: list[nn.Module], d_model: int) -> None:
    """Refuse in one line a memory-parallel size that cannot split this run's tables (``auto`` always can)."""
    if m in (1, AUTO):
        return
    if world % m:
        raise ConfigError(f"trainer.memory_parallel={m}: must divide the number of processes ({world} here)")
    if not any(mixer.expert_tables() for mixer in mixers):
        raise ConfigError(f"trainer.memory_parallel={m}: this layer has no expert tables to split (PEER, PKM and "
                          "Memory+ have); use 1")
    if d_model % m:
        raise ConfigError(f"trainer.memory_parallel={m}: must divide d_model ({d_model}), the tables' columns")


def build_mesh(world: int, m: int, device_type: str):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world // m, m), mesh_dim_names=MESH_DIMS)


def shard_tables(model: nn.Module, mesh) -> list[nn.Parameter]:
    """Replace every mixer's expert tables by DTensors split by columns over ``mesh["memory_parallel"]``, and tell
    the mixer; returns the new parameters (FSDP must leave them alone)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    group_mesh = mesh["memory_parallel"]
    tables = []
    for mixer in model.mixers:
        for name, param in mixer.expert_tables().items():
            owner_name, _, attr = name.rpartition(".")
            owner = mixer.get_submodule(owner_name) if owner_name else mixer
            # every rank built the same weights from the same seed: each keeps its own columns
            sharded = nn.Parameter(distribute_tensor(param.detach(), group_mesh, [Shard(1)], src_data_rank=None),
                                   requires_grad=param.requires_grad)
            setattr(owner, attr, sharded)
            tables.append(sharded)
        if mixer.expert_tables():
            mixer.tables_group = group_mesh.get_group()
    return tables


def table_params(model: nn.Module) -> list[nn.Parameter]:
    """The expert tables split by columns (empty at M = 1)."""
    return [p for mixer in model.mixers if mixer.tables_group is not None for p in mixer.expert_tables().values()]


@torch.no_grad()
def reduce_table_grads(tables: list[nn.Parameter], mesh, world: int) -> None:
    """Sum each table shard's gradient over the replicas and divide by ``world``: the mean over all ranks' tokens."""
    replicas = mesh["replica"]
    for p in tables:
        if p.grad is None:
            continue
        local = p.grad.to_local()
        if replicas.size() > 1:
            dist.all_reduce(local, group=replicas.get_group())
        local.div_(world)
