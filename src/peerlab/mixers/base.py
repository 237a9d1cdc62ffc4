"""The contract every feed-forward mixer honours, so the model and trainer never special-case a layer."""

from __future__ import annotations

import torch
from torch import nn


class Mixer(nn.Module):
    """Base class of the feed-forward mixers.

    A mixer is ``forward(x) -> y`` on ``(batch, time, d_model)`` plus the few things the trainer needs:

    - :meth:`flops_per_token`: exact forward FLOPs per token (2 x multiply-adds), used for FLOP budgets.
    - :meth:`active_params`: parameters that take part in computing one token's output.
    - :attr:`aux_loss`: an auxiliary loss set by the last training forward pass (``None`` when there is none).
    - :meth:`reset_usage` / :meth:`usage_stats`: routing statistics accumulated in eval mode (sparse layers).
    - :meth:`optimizer_groups`: named parameter groups that need their own optimizer settings.
    - :meth:`prepare_for_backend`: settle what depends on the process group, before DDP wraps the model.
    """

    aux_loss: torch.Tensor | None = None

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

    def prepare_for_backend(self) -> None:
        """Called once the process group (if any) exists and before DDP wraps the model: a mixer whose gradients
        depend on the backend (PEER's sparse tables) settles them here."""

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters that train with their own optimizer settings, keyed by group name (see ``optim.groups``)."""
        return {}


class MixerConfigError(ValueError):
    """A mixer built with impossible sizes; the message names the ``layer.<key>``, its value and what is allowed."""
