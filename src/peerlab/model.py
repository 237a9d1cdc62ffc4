"""Decoder-only pre-norm transformer whose feed-forward mixer is chosen per block by a factory.

The model knows nothing about particular mixers: blocks listed in ``sparse_blocks`` get ``sparse_mixer(...)``,
the others get ``dense_mixer(...)``. Both factories take ``d_model`` and ``n_layer`` keyword arguments.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from peerlab.lm_loss import lm_loss
from peerlab.mixers.base import Mixer

MixerFactory = Callable[..., Mixer]


@dataclass(frozen=True)
class ModelShape:
    """Everything that fixes the transformer's size, derived from the ``model`` config."""

    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int
    seq_len: int

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "n_layer", "n_head", "seq_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key}={getattr(self, key)}: must be >= 1")
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")


def resolve_sparse_blocks(spec: str | int | Sequence[int], n_layer: int) -> list[int]:
    """Block indices (0-based) that get the chosen layer.

    ``"middle"`` is the paper's default: block ``(n_layer - 1) // 2``, i.e. block 6 of 12 counted from 1.
    ``"all"`` replaces every block's FFW; ``"none"`` keeps the dense backbone; a list names blocks explicitly.
    """
    if isinstance(spec, str):
        if spec == "middle":
            return [(n_layer - 1) // 2]
        if spec == "all":
            return list(range(n_layer))
        if spec == "none":
            return []
        raise ValueError(
            f"model.sparse_blocks={spec!r}: allowed are 'middle', 'all', 'none' or a list of block indices"
        )
    blocks = [spec] if isinstance(spec, int) else list(spec)
    for b in blocks:
        if not isinstance(b, int) or not 0 <= b < n_layer:
            raise ValueError(f"model.sparse_blocks={list(blocks)}: block {b!r} is not in [0, {n_layer})")
    return sorted(set(blocks))


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        nn.init.normal_(self.qkv.weight, std=0.02)
        nn.init.normal_(self.proj.weight, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                positions: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
        """``cache``: this block's keys and values (batch, heads, seq_len, d_head) of the positions each sequence has
        run; ``positions``: the new tokens' positions (batch, time) and the end of the longest sequence with them.
        The new tokens' keys and values are written into the cache and the tokens attend to all up to their own."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, heads, t, d_head)
        else:
            keys, values = cache
            where, end = positions
            rows = torch.arange(b, device=x.device)[:, None]
            keys[rows, :, where] = k.transpose(1, 2)
            values[rows, :, where] = v.transpose(1, 2)
            mask = torch.arange(end, device=x.device) <= where[:, :, None]  # (b, t, end)
            y = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask[:, None])
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


@contextmanager
def _running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Leave BatchNorm's running statistics as they were: a checkpointed block's recomputation must not count its
    batch a second time (the query BatchNorm of PEER and PKM)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, kept, strict=True):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class Block(nn.Module):
    def __init__(self, shape: ModelShape, mixer: Mixer) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(shape.d_model)
        self.attn = CausalSelfAttention(shape.d_model, shape.n_head, shape.n_layer)
        self.ln_mixer = nn.LayerNorm(shape.d_model)
        self.mixer = mixer
        # Activation checkpointing (trainer.activation_checkpointing): keep only the block's input and recompute
        # the block in backward. Inside forward, so a sharded block's weights are gathered for the recomputation.
        self.checkpointed = False

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                positions: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
        if self.checkpointed and torch.is_grad_enabled() and cache is None:
            return checkpoint(self._forward, x, use_reentrant=False,
                              context_fn=lambda: (nullcontext(), _running_stats_kept(self)))
        return self._forward(x, cache, positions)

    def _forward(self, x: torch.Tensor, cache=None, positions=None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), cache, positions)
        return x + self.mixer(self.ln_mixer(x))


class KVCache:
    """Keys and values of the positions a generation has run, per block, for ``batch`` sequences of at most
    ``seq_len`` tokens, and how many each sequence has (``lengths``): a step then runs only its new tokens
    (``Transformer(idx, cache=...)``), in time flat in the prefix, with the logits of a full forward pass (up to
    rounding). Only for models whose mixers act on each token alone in eval mode (``Transformer.can_cache``)."""

    def __init__(self, model: Transformer, batch: int) -> None:
        s = model.shape
        ref = model.tok_emb.weight
        shape = (batch, s.n_head, s.seq_len, s.d_model // s.n_head)
        self.layers = [(ref.new_zeros(shape), ref.new_zeros(shape)) for _ in model.blocks]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=ref.device)

    def row(self, i: int) -> KVCache:
        """Sequence ``i``'s share, a view: a prompt runs alone through it (prompts differ in length)."""
        view = copy.copy(self)
        view.layers = [(k[i : i + 1], v[i : i + 1]) for k, v in self.layers]
        view.lengths = self.lengths[i : i + 1]
        return view


class Transformer(nn.Module):
    """GPT-style LM: token + learned position embeddings, pre-LN blocks, final LN, head tied to the embedding."""

    def __init__(
        self,
        shape: ModelShape,
        dense_mixer: MixerFactory,
        sparse_mixer: MixerFactory | None = None,
        sparse_blocks: str | int | Sequence[int] = "middle",
    ) -> None:
        super().__init__()
        self.shape = shape
        self.sparse_blocks = resolve_sparse_blocks(sparse_blocks, shape.n_layer) if sparse_mixer else []
        self.tok_emb = nn.Embedding(shape.vocab_size, shape.d_model)
        self.pos_emb = nn.Embedding(shape.seq_len, shape.d_model)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        blocks = []
        for i in range(shape.n_layer):
            factory = sparse_mixer if i in self.sparse_blocks else dense_mixer
            blocks.append(Block(shape, factory(d_model=shape.d_model, n_layer=shape.n_layer)))
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(shape.d_model)
        self.loss_chunk_tokens = 0  # trainer.loss_chunk_tokens: the LM head's loss in chunks of this many tokens

    @property
    def mixers(self) -> list[Mixer]:
        return [block.mixer for block in self.blocks]

    def can_cache(self) -> bool:
        """Whether a :class:`KVCache` gives what full forward passes give: every mixer acts on each token alone in
        eval mode (MoE's expert choice routes among a pass's tokens, so a token's output depends on the others)."""
        return all(m.per_token for m in self.mixers)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``(batch, time, vocab)`` for token ids ``(batch, time)``; with ``targets``, the mean next-token
        loss instead (in the forward pass, where a sharded model's weights are gathered). With ``cache``, ``idx``
        are the tokens that follow each sequence's cached ones, and the cache grows by them."""
        t = idx.shape[1]
        positions = None
        if cache is None:
            end = t
        else:  # each new token's position, and where the longest sequence ends: once for every block
            where = cache.lengths[:, None] + torch.arange(t, device=idx.device)
            end = int(where.max()) + 1
            positions = (where, end)
        if end > self.shape.seq_len:
            raise ValueError(f"sequence length {end} exceeds the model's seq_len={self.shape.seq_len}")
        pos = self.pos_emb.weight[:t] if cache is None else self.pos_emb(positions[0])
        x = self.tok_emb(idx) + pos
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None, positions)
        if cache is not None:
            cache.lengths += t
        h = self.ln_f(x)
        if targets is None:
            return F.linear(h, self.tok_emb.weight)
        return lm_loss(h.flatten(0, 1), self.tok_emb.weight, targets.flatten(), self.loss_chunk_tokens)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self(idx, targets)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        for block in self.blocks:
            block.checkpointed = enabled

    @contextmanager
    def usage_paused(self) -> Iterator[None]:
        """Forward passes inside do not count towards the mixers' usage statistics (padding batches)."""
        counting = [m for m in self.modules() if hasattr(m, "count_usage")]
        for m in counting:
            m.count_usage = False
        try:
            yield
        finally:
            for m in counting:
                m.count_usage = True

    def aux_losses(self) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for i, mixer in enumerate(self.mixers):
            for name, value in mixer.aux_losses().items():
                terms[f"block{i}/{name}"] = value
        return terms

    def num_params(self) -> int:
        """Total parameters (the tied head counted once, position embeddings included)."""
        return sum(p.numel() for p in self.parameters())

    def active_params(self) -> int:
        """Parameters used for one token: sparse mixers count only the experts/memories a token touches."""
        mixer_total = sum(p.numel() for m in self.mixers for p in m.parameters())
        return self.num_params() - mixer_total + sum(m.active_params() for m in self.mixers)
