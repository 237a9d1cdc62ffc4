"""The contract every feed-forward mixer honours, so the model and trainer never special-case a layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Precision:
    """The byte sizes a training step's tensors take: ``float_bytes`` for weights and full-precision activations
    (4, or 8 in float64 runs), ``matmul_bytes`` for the outputs of matrix products under autocast (2 for bf16/fp16
    mixed precision, else ``float_bytes``)."""

    float_bytes: int = 4
    matmul_bytes: int = 4

    @property
    def autocast(self) -> bool:
        return self.matmul_bytes < self.float_bytes


@dataclass(frozen=True)
class ActivationMemory:
    """What a mixer holds for one micro-batch during a training step, besides its parameters and their ``.grad``
    (``peerlab.parallel.memory`` adds those). Bytes, for the whole micro-batch.

    - ``saved``: kept by autograd from the forward to the backward pass, the mixer's copy of its input included.
    - ``forward_peak``: the most held at once inside its forward on top of ``saved`` (scores, gather buffers).
    - ``backward_peak``: the most held at once inside its backward on top of what is saved (gradients of
      activations, row-gradient buffers, a dense table gradient before it lands in ``.grad``).
    - ``autocast_params``: parameters that autocast copies to 16 bits for a matmul (copies kept until backward, and
      16-bit gradients made before the float32 ones); 0 without autocast.
    """

    saved: int
    forward_peak: int = 0
    backward_peak: int = 0
    autocast_params: int = 0


class Mixer(nn.Module):
    """Base class of the feed-forward mixers.

    A mixer is ``forward(x) -> y`` on ``(batch, time, d_model)`` plus the few things the trainer needs:

    - :meth:`flops_per_token`: exact forward FLOPs per token (2 x multiply-adds), used for FLOP budgets.
    - :meth:`active_params`: parameters that take part in computing one token's output.
    - :attr:`aux_loss`: an auxiliary loss set by the last training forward pass (``None`` when there is none).
    - :meth:`reset_usage` / :meth:`usage_stats`: routing statistics accumulated in eval mode (sparse layers).
    - :meth:`optimizer_groups`: named parameter groups that need their own optimizer settings.
    - :meth:`prepare_for_backend`: settle what depends on the process group, before DDP wraps the model.
    - :meth:`activation_memory`: the bytes a training step's micro-batch holds in it (``peerlab.parallel.memory``).
    - :meth:`usage_tensors`: the tensors behind :meth:`usage_stats`, summed over data-parallel ranks.
    - :attr:`full_precision`: True for a mixer that runs its forward in its parameters' precision with autocast
      off (retrieval in float32); sharded training keeps such a mixer's parameters in float32.
    - :meth:`expert_tables` / :attr:`tables_group`: the tables memory parallelism splits by columns, and the group
      they are split over once it has (``peerlab.parallel.memory_parallel``); :meth:`rows_per_token`,
      :meth:`split_activation_memory` and :meth:`split_bytes_per_token` describe the split layer to the planner.
    """

    aux_loss: torch.Tensor | None = None
    full_precision: bool = False
    # In eval mode, each token's output depends on that token alone (PEER's and PKM's query BatchNorm use running
    # statistics then); False for a mixer that routes among a pass's tokens: then no KV cache (model.KVCache).
    per_token: bool = True
    # Set by peerlab.parallel.memory_parallel: the process group over whose ranks expert_tables() are split by
    # columns (each rank then holds a DTensor shard of them); None while each table is whole on every rank.
    tables_group = None
    count_usage: bool = True  # False while a padding batch (sharded validation) runs: it must not count

    def flops_per_token(self) -> int:
        raise NotImplementedError

    def active_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def aux_losses(self) -> dict[str, torch.Tensor]:
        """Named auxiliary loss terms of the last forward pass, already weighted; empty for most mixers."""
        return {}

    def reset_usage(self) -> None:
        """Start accumulating routing statistics afresh (called before each validation pass)."""

    def usage_stats(self) -> dict[str, float]:
        """Routing statistics accumulated since :meth:`reset_usage` (empty for dense mixers)."""
        return {}

    def prepare_for_backend(self, sharded: bool = False, group: tuple[str | None, int] | None = None) -> None:
        """Called once the process group (if any) exists and before DDP or FSDP wraps the model (``sharded``: FSDP):
        a mixer whose gradients depend on the backend (PEER's sparse tables) settles them here. ``group``:
        ``(backend, world size)`` to settle for instead of the live process group's (the memory planner's)."""

    def activation_memory(self, tokens: int, precision: Precision, device_type: str = "cuda") -> ActivationMemory:
        """Bytes held for a micro-batch of ``tokens`` tokens in a training step (``device_type``: where it runs,
        which picks among implementations). Checked against torch's saved-tensor hooks in tests/test_memory.py."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its activation memory")

    def usage_tensors(self) -> list[torch.Tensor]:
        """The accumulators behind :meth:`usage_stats` whose sum over processes is the usage of all their batches
        (validation sharded across data-parallel ranks sums them before reading the statistics)."""
        return []

    def expert_tables(self) -> dict[str, nn.Parameter]:
        """The N x d_model tables whose rows the layer retrieves, by parameter name (``down.weight``): what
        ``trainer.memory_parallel`` splits by columns. Empty for a mixer without such tables."""
        return {}

    def rows_per_token(self) -> int:
        """Table rows one token retrieves (heads x k); 0 for a mixer without tables."""
        return 0

    def split_activation_memory(self, tokens: int, precision: Precision, m: int,
                                device_type: str = "cuda") -> ActivationMemory:
        """:meth:`activation_memory` when :meth:`expert_tables` are split by columns over ``m`` ranks."""
        raise NotImplementedError(f"{type(self).__name__} has no tables to split")

    def split_bytes_per_token(self, m: int, float_bytes: int = 4) -> dict[str, float]:
        """Bytes each rank sends per token of its own, by collective, with the tables split over ``m`` ranks."""
        return {}

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters that train with their own optimizer settings, keyed by group name (see ``optim.groups``)."""
        return {}


class MixerConfigError(ValueError):
    """A mixer built with impossible sizes; the message names the ``layer.<key>``, its value and what is allowed."""
