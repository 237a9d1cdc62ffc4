"""Optimizer pieces that know about sparse (row-wise) gradients of PEER's expert tables."""

from peerlab.optim.clipping import clip_grad_norm
from peerlab.optim.lazy_adamw import LazyAdamW

__all__ = ["LazyAdamW", "clip_grad_norm"]
