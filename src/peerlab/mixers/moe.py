"""Mixture of Experts: expert-choice routing (Zhou et al. 2022; the paper's baseline) or token-choice top-k.

``E`` experts, each a dense FFW ``W2 act(W1 x)`` of width ``expert_hidden_mult * d_model`` (the paper: the dense
FFW's width; smaller widths give fine-grained MoE), and a linear router with a softmax over experts.

- ``routing: expert_choice``: each expert takes the ``C = round(capacity_factor * tokens / E)`` tokens it scores
  highest, outputs weighted by their router probability. Load is balanced by construction, but a token's routing
  depends on the other tokens of the batch, later ones included, in evaluation too: validation reports
  expert-choice routing over each validation batch, as the paper's setup would. Tokens no expert picks pass
  through the residual only (reported as ``dropped_tokens``).
- ``routing: token_choice``: each token takes its top-``top_k`` experts (weights renormalised), dropless, with the
  Switch load-balancing loss ``aux_loss_weight * E * sum_e f_e P_e`` and an optional router z-loss
  ``z_loss_weight * mean(logsumexp(logits)^2)``. Causal.

Tokens are grouped per expert and all experts run at once; there is no loop over tokens or experts. Expert choice
is one batched matmul over ``(E, C, d)``. Token choice sorts the assignments by expert and, on the CPU in float32
or bfloat16, runs ``F.grouped_mm`` over the ragged groups; elsewhere (CUDA, float64) it pads every group to the
largest and runs one batched matmul, whose empty slots (``padded_slots``) cost time but change nothing. Both give
the same values and gradients (tests/test_moe.py); on the CPU the grouped path avoids the padding, 1.8-1.9x the
assignments at the start of training with 64-128 experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peerlab.mixers.activations import activation_fn
from peerlab.mixers.base import ActivationMemory, Mixer, MixerConfigError, Precision
from peerlab.mixers.usage import usage_metrics

ROUTINGS = ("expert_choice", "token_choice")
# Token choice's padded path (CUDA) sizes every expert's group to the largest: the planner takes the largest group
# at twice the mean, what 64-128 experts show at the start of training (the docstring's 1.8-1.9x).
PADDED_GROUP_FACTOR = 2.0


class MoE(Mixer):
    def __init__(
        self,
        d_model: int,
        n_experts: int = 128,
        expert_hidden_mult: float = 4.0,
        routing: str = "expert_choice",
        capacity_factor: float = 1.0,
        top_k: int = 1,
        aux_loss_weight: float = 0.01,
        z_loss_weight: float = 0.0,
        activation: str = "gelu",
        n_layer: int = 1,
    ) -> None:
        super().__init__()
        if n_experts < 1:
            raise MixerConfigError(f"layer.n_experts={n_experts}: must be >= 1")
        if routing not in ROUTINGS:
            raise MixerConfigError(f"layer.routing={routing!r}: allowed: {', '.join(ROUTINGS)}")
        if not capacity_factor > 0:
            raise MixerConfigError(f"layer.capacity_factor={capacity_factor}: must be > 0")
        if not 1 <= top_k <= n_experts:
            raise MixerConfigError(f"layer.top_k={top_k}: must be in [1, n_experts={n_experts}]")
        if aux_loss_weight < 0 or z_loss_weight < 0:
            raise MixerConfigError(f"layer.aux_loss_weight={aux_loss_weight}, layer.z_loss_weight={z_loss_weight}: must be >= 0")
        self.d_model, self.n_experts, self.routing = d_model, n_experts, routing
        self.per_token = routing != "expert_choice"  # expert choice ranks a pass's tokens against each other
        self.capacity_factor, self.top_k = capacity_factor, top_k
        self.aux_loss_weight, self.z_loss_weight = aux_loss_weight, z_loss_weight
        self.d_hidden = max(1, int(round(expert_hidden_mult * d_model)))
        self.act = activation_fn(activation)
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(n_experts, d_model, self.d_hidden).normal_(std=0.02))
        self.w2 = nn.Parameter(torch.empty(n_experts, self.d_hidden, d_model).normal_(std=0.02 / math.sqrt(2 * n_layer)))
        nn.init.normal_(self.router.weight, std=0.02)
        self._aux: dict[str, torch.Tensor] = {}
        self.padded_slots = 0  # token choice: empty expert slots in the last batched matmul (wasted, not counted)
        self.grouped_mm = True  # token choice: F.grouped_mm where it runs (CPU, float32/bfloat16); False: always pad
        self.register_buffer("routed_mass", torch.zeros(0, dtype=torch.float64), persistent=False)
        # tokens seen and tokens no expert picked (expert choice), as a tensor so that ranks can sum them
        self.register_buffer("token_counts", torch.zeros(2, dtype=torch.float64), persistent=False)

    def capacity(self, tokens: int) -> int:
        return min(tokens, max(1, round(self.capacity_factor * tokens / self.n_experts)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (tokens, d_model)
        logits = self.router(x)  # (tokens, E)
        # Router softmax in at least float32 (bf16 logits round badly), float64 stays float64.
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        probs = logits.softmax(dim=-1).to(x.dtype)
        self._aux = {}
        if self.z_loss_weight > 0 and self.training:
            self._aux["z_loss"] = self.z_loss_weight * torch.logsumexp(logits, dim=-1).pow(2).mean()
        if self.routing == "expert_choice":
            y = self._expert_choice(x, probs)
        else:
            y = self._token_choice(x, probs)
        return y.view(shape)

    def _experts_batched(self, xin: torch.Tensor) -> torch.Tensor:
        """``(E, C, d) -> (E, C, d)``: every expert on its own tokens, as two batched matmuls."""
        return torch.bmm(self.act(torch.bmm(xin, self.w1)), self.w2)

    def _expert_choice(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        capacity = self.capacity(x.shape[0])
        gates, token_idx = probs.t().topk(capacity, dim=-1)  # (E, C): each expert's chosen tokens
        out = self._experts_batched(x[token_idx]) * gates.unsqueeze(-1)  # (E, C, d)
        y = torch.zeros_like(x).index_add_(0, token_idx.flatten(), out.flatten(0, 1))
        if self._tracking():
            with torch.no_grad():
                self.routed_mass += gates.sum(-1).double()
                self.token_counts += torch.tensor([x.shape[0], x.shape[0] - int(token_idx.unique().numel())],
                                                  dtype=torch.float64, device=self.token_counts.device)
        return y

    def _token_choice(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        weights, experts = probs.topk(self.top_k, dim=-1)  # (tokens, top_k)
        weights = weights / weights.sum(-1, keepdim=True)
        flat_experts = experts.flatten()
        order = flat_experts.argsort(stable=True)  # assignments grouped by expert
        token_of = order // self.top_k
        sorted_experts = flat_experts[order]
        counts = torch.bincount(flat_experts, minlength=self.n_experts)
        if self._grouped(x):
            ends = torch.cumsum(counts, 0).to(torch.int32)
            hidden = self.act(F.grouped_mm(x.index_select(0, token_of), self.w1, offs=ends))
            out = F.grouped_mm(hidden, self.w2, offs=ends)
            self.padded_slots = 0
        else:
            # Slot of each assignment within its expert's group; groups padded to the largest one (dropless), so
            # all experts run as one batched matmul instead of E small ones.
            starts = torch.cumsum(counts, 0) - counts
            slot = torch.arange(order.numel(), device=x.device) - starts[sorted_experts]
            xin = x.new_zeros(self.n_experts, int(counts.max()), x.shape[-1])
            self.padded_slots = xin.shape[0] * xin.shape[1] - order.numel()  # compute spent on padding, not counted
            xin[sorted_experts, slot] = x[token_of]
            out = self._experts_batched(xin)[sorted_experts, slot]
        y = torch.zeros_like(x).index_add_(0, token_of, out * weights.flatten()[order].unsqueeze(-1))
        if self.training and self.aux_loss_weight > 0:
            fraction = counts.to(probs.dtype) / (tokens * self.top_k)  # f_e: share of assignments
            self._aux["load_balance"] = self.aux_loss_weight * self.n_experts * (fraction * probs.mean(0)).sum()
        if self._tracking():
            with torch.no_grad():
                self.routed_mass.index_add_(0, flat_experts, weights.flatten().double())
                self.token_counts[0] += tokens
        return y

    def _grouped(self, x: torch.Tensor) -> bool:
        """Token choice through ``F.grouped_mm``: on the CPU in float32/bfloat16, where it is tested against the
        padded path; CUDA's kernels have other layout and dtype requirements, so CUDA pads."""
        return self.grouped_mm and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) \
            and self.w1.dtype == x.dtype

    # ------------------------------------------------------------------ Mixer contract
    def aux_losses(self) -> dict[str, torch.Tensor]:
        return dict(self._aux) if self.training else {}

    def flops_per_token(self) -> int:
        """Router, plus per token the expert FFWs it is processed by: ``capacity_factor`` of them on average with
        expert choice (exact when tokens per batch * capacity_factor is a multiple of E), ``top_k`` with token
        choice."""
        per_expert = 2 * 2 * self.d_model * self.d_hidden
        share = self.capacity_factor if self.routing == "expert_choice" else self.top_k
        return 2 * self.d_model * self.n_experts + int(round(share * per_expert))

    def active_params(self) -> int:
        share = self.capacity_factor if self.routing == "expert_choice" else self.top_k
        return self.router.weight.numel() + int(round(share * 2 * self.d_model * self.d_hidden))

    def _tracking(self) -> bool:
        return not self.training and self.routed_mass.numel() > 0 and self.count_usage

    def reset_usage(self) -> None:
        self.routed_mass = torch.zeros(self.n_experts, dtype=torch.float64, device=self.w1.device)
        self.token_counts = torch.zeros(2, dtype=torch.float64, device=self.w1.device)

    def usage_stats(self) -> dict[str, float]:
        stats = usage_metrics(self.routed_mass)
        if stats and self.routing == "expert_choice":
            seen, dropped = self.token_counts.tolist()
            stats["dropped_tokens"] = dropped / max(1.0, seen)
        return stats

    def usage_tensors(self) -> list[torch.Tensor]:
        return [self.routed_mass, self.token_counts] if self.routed_mass.numel() else []

    def activation_memory(self, tokens: int, precision: Precision, device_type: str = "cuda") -> ActivationMemory:
        """What each routing keeps: the input (or autocast's copy of it) and the router probabilities, then per
        expert slot the gathered token, the hidden pre-activation and activation, the expert output and the gated
        output; plus the indices that route them. Token choice runs ``F.grouped_mm`` in float32 on the CPU and pads
        every expert's group to the largest on CUDA (:data:`PADDED_GROUP_FACTOR`). Backward holds the gradients
        of the slots' activations."""
        c, f, d, dh, E = precision.matmul_bytes, precision.float_bytes, self.d_model, self.d_hidden, self.n_experts
        router = c * d + f * E + (f * E + f if self.z_loss_weight > 0 else 0)
        grouped = False
        if self.routing == "expert_choice":
            slots = E * self.capacity(tokens)
            per_slot = 8 + c * d + 2 * c * dh + f + c * d + f * d  # index, input, hidden x2, gate, output, gated
            saved = tokens * router + slots * per_slot
            forward = slots * f * d + tokens * f * E  # the gathered float32 inputs before autocast's copy, logits
            backward = slots * (c * (2 * dh + d) + f * d)  # the slots' hidden and input gradients, the gated one's
        else:
            k = self.top_k
            assignments = tokens * k
            routing = tokens * (8 * k + f + f * k) + assignments * (8 + 8 + f)  # top-k, weights, order, token, weight
            grouped = device_type == "cpu" and precision.float_bytes == 4  # F.grouped_mm, in float32 (see _grouped)
            if grouped:
                m, slots = f, assignments
            else:
                m, slots = c, int(PADDED_GROUP_FACTOR * assignments)
                routing += assignments * 16  # each assignment's expert and slot
            saved = tokens * router + routing + slots * (m * d + 2 * m * dh) + assignments * (m * d + f * d)
            forward = slots * f * d + tokens * f * E * 2
            backward = slots * m * (2 * dh + d) + assignments * f * d
        experts_cast = self.routing == "expert_choice" or not grouped
        autocast = (self.router.weight.numel() + (self.w1.numel() + self.w2.numel() if experts_cast else 0)
                    if precision.autocast else 0)
        return ActivationMemory(saved=saved, forward_peak=forward, backward_peak=backward, autocast_params=autocast)

