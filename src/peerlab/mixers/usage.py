"""Expert-usage statistics as the paper defines them (Table 2), shared by every sparse mixer."""

from __future__ import annotations

import math

import torch


def usage_metrics(mass: torch.Tensor) -> dict[str, float]:
    """From ``mass[i]`` = router weight given to expert i, summed over tokens (z'): ``expert_usage`` = share of
    experts with z_i > 0 and ``unevenness`` = KL(z || uniform) = log N + sum z_i log z_i, with z = z' / |z'|_1.
    Empty when nothing was routed."""
    total = mass.sum() if mass.numel() else 0
    if total <= 0:
        return {}
    z = mass / total
    nz = z[z > 0]
    return {
        "expert_usage": float((z > 0).double().mean()),
        "unevenness": float(math.log(mass.numel()) + (nz * nz.log()).sum()),
    }
