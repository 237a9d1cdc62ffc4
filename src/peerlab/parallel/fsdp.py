"""How ``trainer=fsdp`` cuts the transformer into FSDP2 units (torch's ``fully_shard``).

- one unit per block, gathered before its forward and freed after (again for its backward);
- inside a block, a mixer that runs in full precision (``Mixer.full_precision``: PEER, PKM, Memory+, whose
  retrieval and tables are float32 with autocast off) is a unit of its own, gathered in float32 whatever the
  blocks' policy, so its top-k picks what a DDP run picks and its BatchNorm keeps float32 weights;
- the root unit holds the rest: the token embedding and the LM head (tied: one tensor, which must stay in one
  unit), the position embedding and the final LayerNorm, kept in float32 so the residual stream and the loss are
  what a DDP run computes.

On CUDA under bf16 autocast the blocks are gathered in bf16 and their gradients reduced in float32
(``MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)``, as Lingua and torchtitan do); elsewhere
every unit keeps its weights' dtype. ``peerlab.parallel.memory`` counts the same units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peerlab.model import Transformer


@dataclass(frozen=True)
class Unit:
    """One ``fully_shard`` unit: the parameters it gathers (not a nested unit's, not ``ignored`` ones), and whether
    it is gathered in float32 whatever the blocks' policy (a full-precision mixer, the root)."""

    name: str
    module: torch.nn.Module
    params: tuple[torch.nn.Parameter, ...]
    full_precision: bool

    @property
    def elements(self) -> int:
        return sum(p.numel() for p in self.params)


def units(model: Transformer, ignored: set[torch.nn.Parameter] | frozenset = frozenset()) -> list[Unit]:
    """The units in the order ``fully_shard`` is applied (inner first): per block its full-precision mixer (when it
    has parameters of its own), then the block; the root last. Read by :func:`shard_model`, ``peerlab.parallel.memory`` and
    ``peerlab.parallel.traffic``, so that what is sharded and what is counted are one description."""
    out, taken = [], set(ignored)
    for i, block in enumerate(model.blocks):
        if block.mixer.full_precision:
            mine = tuple(p for p in block.mixer.parameters() if p not in taken)
            if mine:
                out.append(Unit(f"block {i} mixer", block.mixer, mine, True))
                taken.update(mine)
        mine = tuple(p for p in block.parameters() if p not in taken)
        out.append(Unit(f"block {i}", block, mine, False))
        taken.update(mine)
    out.append(Unit("root", model, tuple(p for p in model.parameters() if p not in taken), True))
    return out


def blocks_dtype(device_type: str, precision: str) -> torch.dtype | None:
    """The dtype FSDP gathers the blocks in: bfloat16 on CUDA under bf16 autocast, else the weights' own."""
    return torch.bfloat16 if device_type == "cuda" and precision in ("bf16-mixed", "bf16-true") else None


def shard_model(model: Transformer, mesh, blocks_dtype: torch.dtype | None = None,
                ignored: set[torch.nn.Parameter] | None = None) -> None:
    """Apply ``fully_shard`` to ``model`` in place over the 1-D data-parallel ``mesh``. ``ignored``: parameters
    sharded otherwise (memory-parallel expert tables, ``peerlab.parallel.memory_parallel``), which FSDP leaves."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    own_dtype = MixedPrecisionPolicy()
    blocks = MixedPrecisionPolicy(param_dtype=blocks_dtype, reduce_dtype=torch.float32) if blocks_dtype else own_dtype
    ignored = ignored or set()
    for unit in units(model, ignored):
        fully_shard(unit.module, mesh=mesh, mp_policy=own_dtype if unit.full_precision else blocks,
                    ignored_params=ignored)


def shard_for_training(model: Transformer, data_mesh, tables_mesh, device_type: str,
                       precision: str) -> list[torch.nn.Parameter]:
    """What ``trainer=fsdp`` does to the model, in one place for the LightningModule's ``configure_model`` and for
    ``peerlab.parallel.fake_step``: the expert tables split over ``tables_mesh``'s memory-parallel groups (when
    given; ``peerlab.parallel.memory_parallel``), then FSDP units over ``data_mesh``, the blocks gathered in
    :func:`blocks_dtype`. Returns the split tables."""
    from peerlab.parallel.memory_parallel import shard_tables

    tables = shard_tables(model, tables_mesh) if tables_mesh is not None else []
    shard_model(model, data_mesh, blocks_dtype(device_type, precision), set(tables))
    return tables


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
