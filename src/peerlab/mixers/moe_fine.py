"""Fine-grained token-choice MoE (OLMoE, Muennighoff et al. 2024, arXiv 2409.02060; DeepSeekMoE's granularity),
sized by a matched rule so that it keeps one cost structure at every width.

``E`` experts, each ``1/g`` of the dense FFW's width, and every token takes its top-``g`` (weights renormalised):
the experts' FLOPs are exactly the FFW's, and the ``E/g`` FFWs' worth of parameters are at least the matched
rule's 10x. Routing, the Switch load-balancing loss (weight 0.01, OLMoE's) and the router z-loss (0.001, OLMoE's)
are :class:`peerlab.mixers.moe.MoE`'s token choice (dropless).

The router costs ``2 d_model E`` FLOPs per token, ``E / (8 d_model)`` of the FFW's, which OLMoE's 64 or the
issue's 128 experts make large at CPU widths (0.33x at d_model 48). The rule therefore ties E to the width:

    E = min(128, 2 d_model)                       router <= 0.25x of the FFW: the layer costs <= 1.25x
    g = min(8, largest power of 2 <= E / 10)      >= 10x the FFW's parameters (E / g of them)

so it is 128 experts of 1/8 width, top-8, from d_model 64 up (OLMoE's granularity with twice its experts), and
coarser below (d_model 24: 48 experts of 1/4 width, top-4). Explicit ``n_experts``/``granularity`` override it.
"""

from __future__ import annotations

from peerlab.mixers.base import MixerConfigError
from peerlab.mixers.matched_sizes import MIN_PARAM_RATIO
from peerlab.mixers.moe import MoE

MAX_EXPERTS, MAX_GRANULARITY = 128, 8


def fine_sizes(d_model: int) -> tuple[int, int]:
    """``(n_experts, granularity)`` by the rule above."""
    experts = min(MAX_EXPERTS, 2 * d_model)
    granularity = 1
    while granularity * 2 <= min(MAX_GRANULARITY, experts / MIN_PARAM_RATIO):
        granularity *= 2
    return experts, granularity


class MoEFine(MoE):
    def __init__(
        self,
        d_model: int,
        n_experts: int | None = None,
        granularity: int | None = None,
        ffw_mult: float = 4.0,
        aux_loss_weight: float = 0.01,
        z_loss_weight: float = 0.001,
        activation: str = "gelu",
        n_layer: int = 1,
    ) -> None:
        rule_experts, rule_granularity = fine_sizes(d_model)
        n_experts = rule_experts if n_experts is None else n_experts
        granularity = rule_granularity if granularity is None else granularity
        if not 1 <= granularity <= n_experts:
            raise MixerConfigError(f"layer.granularity={granularity}: must be in [1, n_experts={n_experts}]")
        if (ffw_mult * d_model) % granularity:
            raise MixerConfigError(f"layer.granularity={granularity}: must divide the FFW's width "
                                   f"{ffw_mult * d_model:g} (layer.ffw_mult x d_model)")
        super().__init__(d_model, n_experts=n_experts, expert_hidden_mult=ffw_mult / granularity,
                         routing="token_choice", top_k=granularity, aux_loss_weight=aux_loss_weight,
                         z_loss_weight=z_loss_weight, activation=activation, n_layer=n_layer)
        self.granularity = granularity
