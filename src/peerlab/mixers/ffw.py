"""Dense feed-forward block: the transformer's default mixer and the baseline every sparse layer replaces."""

from __future__ import annotations

import math

import torch
from torch import nn

from peerlab.mixers.activations import activation_fn
from peerlab.mixers.base import ActivationMemory, Mixer, MixerConfigError, Precision


class FeedForward(Mixer):
    """``W2 act(W1 x)`` with hidden width ``hidden_mult * d_model`` (or ``d_hidden``), no biases."""

    def __init__(
        self,
        d_model: int,
        hidden_mult: float = 4.0,
        d_hidden: int | None = None,
        activation: str = "gelu",
        n_layer: int = 1,
    ) -> None:
        super().__init__()
        if d_model < 1:
            raise ValueError(f"ffw: d_model={d_model} must be >= 1")
        self.d_model = d_model
        self.d_hidden = int(d_hidden) if d_hidden else int(round(hidden_mult * d_model))
        if self.d_hidden < 1:
            key = f"layer.d_hidden={d_hidden}" if d_hidden else f"layer.hidden_mult={hidden_mult}"
            raise MixerConfigError(f"{key}: the hidden width {self.d_hidden} must be >= 1")
        self.act = activation_fn(activation)
        self.up = nn.Linear(d_model, self.d_hidden, bias=False)
        self.down = nn.Linear(self.d_hidden, d_model, bias=False)
        nn.init.normal_(self.up.weight, std=0.02)
        # GPT-2 scaling of residual-branch outputs keeps the residual stream's variance flat with depth.
        nn.init.normal_(self.down.weight, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))

    def flops_per_token(self) -> int:
        return 2 * 2 * self.d_model * self.d_hidden

    def activation_memory(self, tokens: int, precision: Precision, device_type: str = "cuda") -> ActivationMemory:
        c = precision.matmul_bytes  # its input (or autocast's copy of it), the hidden pre-activation and activation
        return ActivationMemory(
            saved=tokens * c * (self.d_model + 2 * self.d_hidden),
            backward_peak=tokens * 2 * c * self.d_hidden,  # gradients of the activation and of its input
            autocast_params=2 * self.d_model * self.d_hidden if precision.autocast else 0,
        )
