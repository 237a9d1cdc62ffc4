"""Activation functions by config name, shared by all mixers so the same name means the same function."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def identity(x: torch.Tensor) -> torch.Tensor:
    """Linear experts (``layer=peer_linear``; UltraMemV2, arXiv 2508.18756; arXiv 2606.07414)."""
    return x


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "identity": identity,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        from peerlab.mixers.base import MixerConfigError

        raise MixerConfigError(f"activation={name!r}: allowed: {', '.join(ACTIVATIONS)}") from None
