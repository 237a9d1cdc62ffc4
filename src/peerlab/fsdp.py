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
every unit keeps its weights' dtype. ``peerlab.memory`` counts the same units.
"""

from __future__ import annotations

import torch

from peerlab.model import Transformer


def shard_model(model: Transformer, mesh, blocks_dtype: torch.dtype | None = None) -> None:
    """Apply ``fully_shard`` to ``model`` in place over the 1-D data-parallel ``mesh``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    own_dtype = MixedPrecisionPolicy()
    blocks = MixedPrecisionPolicy(param_dtype=blocks_dtype, reduce_dtype=torch.float32) if blocks_dtype else own_dtype
    for block in model.blocks:
        if block.mixer.full_precision and any(True for _ in block.mixer.parameters()):
            fully_shard(block.mixer, mesh=mesh, mp_policy=own_dtype)
        fully_shard(block, mesh=mesh, mp_policy=blocks)
    fully_shard(model, mesh=mesh, mp_policy=own_dtype)


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
