"""Expert tables split by columns over a memory-parallel group (``trainer.memory_parallel=M``; which tables and
over which ranks is :mod:`peerlab.parallel.memory_parallel`).

Each of the M ranks of a group holds columns ``[r c, (r + 1) c)`` (``c = d_model / M``) of every row of a table
and trains on its own tokens, as under FSDP. A layer's tokens meet the columns so (per token of this rank; fp32;
``hk`` = heads x k retrieved rows; bytes *sent* by this rank, the ring algorithm's count; backward in brackets):

- retrieval runs on the rank's own tokens (router, sub-keys and query BatchNorm are FSDP's, as at M = 1);
- the indices (int32) and router weights are all-gathered in the group: ``4 hk (M - 1)`` each
  [the weights' gradients reduce-scattered: ``4 hk (M - 1)``];
- PEER only: the input goes from "my tokens, all columns" to "the group's tokens, my columns", an all-to-all:
  ``4 d (M - 1) / M`` [the same back];
- PEER only: each rank dots its columns of the retrieved ``u_i`` with its columns of the input, and one all-reduce
  sums the partial dots: ``2 (M - 1) / M x 4 M hk = 8 hk (M - 1)`` [the same, for their gradient];
- each rank sums its columns of the retrieved rows (``v_i`` weighted by ``g_i act(u_i . x)`` for PEER, the values
  weighted by ``g_i`` for PKM) for the group's tokens, and an all-to-all sends every token its columns back:
  ``4 d (M - 1) / M`` [the same].

Why this way round: the alternative, gathering the retrieved rows to the token's rank, moves ``4 hk d`` bytes a
token, ``hk / 2`` times more than the input and output all-to-alls (64 times at the paper's h = 8, k = 16).
:func:`bytes_per_token` is this arithmetic, which the planner uses and ``tests/test_memory_parallel.py`` checks
against the bytes that pass through the process group.

The collectives are torch's (``torch.distributed``), each in an autograd function whose backward is its transpose:
the ranks of a group compute different things from a gathered tensor, so a gradient must be summed over the group,
which DTensor's ``Replicate`` placement would take to be identical on every rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from peerlab.mixers.base import ActivationMemory
from peerlab.mixers.peer_experts import gathered_dots
from peerlab.mixers.row_groups import RowGroups
from peerlab.mixers.sparse_grads import expected_rows

Activation = Callable[[torch.Tensor], torch.Tensor]


def bytes_per_token(kind: str, d_model: int, hk: int, m: int, float_bytes: int = 4) -> dict[str, float]:
    """Bytes each rank sends per token of its own, forward and backward, by collective: the module docstring."""
    if m <= 1:
        return {}
    f, d = float_bytes, d_model
    out = {"indices (all-gather)": 4 * hk * (m - 1), "router weights (all-gather, reduce-scatter)": 2 * f * hk * (m - 1),
           "output (all-to-all, both ways)": 2 * f * d * (m - 1) / m}
    if kind == "peer":
        out["input (all-to-all, both ways)"] = 2 * f * d * (m - 1) / m
        out["partial dots (all-reduce, both ways)"] = 2 * 2 * f * hk * (m - 1)
    return out


def local_columns(table: torch.Tensor) -> torch.Tensor:
    """This rank's columns of a table split over a group (a DTensor; differentiable), or the table itself."""
    return table.to_local() if hasattr(table, "to_local") else table


def split_activation_memory(kind: str, router: ActivationMemory, tokens: int, m: int, d_model: int, hk: int,
                            n_rows: int, f: int, chunk: int = 64) -> ActivationMemory:
    """What a layer whose tables are split over ``m`` ranks holds for ``tokens`` tokens of this rank: its retrieval's
    (``router``), and the table part's: the group's ``m tokens`` rows of indices (int64 once gathered), router
    weights and partial dots, and the columns of inputs and outputs; in backward, one table's dense gradient
    (``n_rows x d / m``) before it lands in ``.grad`` (PEER's down table: with its used rows' sums, uniform
    retrieval assumed)."""
    g, c = m * tokens, d_model // m
    if kind == "peer":
        saved = tokens * hk * 8 + g * (8 * hk + 3 * f * hk + c * f)  # own and gathered rows, weights, dots, g act, x
        forward = g * c * f + tokens * d_model * f + min(chunk, g) * hk * c * f  # y columns, output, the dot buffer
        # the down table's used rows' sums beside its dense gradient, row groups, dx/dy columns, dpre, dg
        backward = (n_rows + expected_rows(g * hk, n_rows)) * c * f + g * (24 * hk + 2 * c * f + 2 * f * hk)
    else:
        saved = tokens * hk * 8 + g * (8 * hk + f * hk)
        forward = g * c * f + tokens * d_model * f
        backward = n_rows * c * f + g * (2 * c * f + f * hk)
    return ActivationMemory(saved=router.saved + saved, forward_peak=max(router.forward_peak, forward),
                            backward_peak=max(router.backward_peak, backward))


# ---------------------------------------------------------------------- collectives with their transposes
class _GatherTokens(torch.autograd.Function):
    """(T, ...) on each rank -> (M T, ...), the group's tokens in rank order; backward: reduce-scatter (sum)."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        out = t.new_empty((dist.get_world_size(group) * t.shape[0], *t.shape[1:]))
        dist.all_gather_single(out, t.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out = grad.new_empty((grad.shape[0] // dist.get_world_size(ctx.group), *grad.shape[1:]))
        dist.reduce_scatter_single(out, grad.contiguous(), group=ctx.group)
        return out, None


def _all_to_all(t: torch.Tensor, group) -> torch.Tensor:
    out = torch.empty_like(t)
    dist.all_to_all_single(out, t.contiguous(), group=group)
    return out


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t, group=group)
    return t


class _SelfTranspose(torch.autograd.Function):
    """A collective that is its own transpose, so its backward is itself: the all-to-all (block ``j`` of dim 0 goes
    to rank ``j``, block ``j`` of the result came from rank ``j``) and the all-reduce (the gradient of each rank's
    copy of a sum is the sum of the ranks' gradients)."""

    @staticmethod
    def forward(ctx, t, group, collective):
        ctx.group, ctx.collective = group, collective
        return collective(t, group)

    @staticmethod
    def backward(ctx, grad):
        return ctx.collective(grad, ctx.group), None, None


def gather_indices(indices: torch.Tensor, group) -> torch.Tensor:
    """The group's retrieved rows, (M T, hk), sent as int32 (rows < 2^31)."""
    small = indices.to(torch.int32)
    out = small.new_empty((dist.get_world_size(group) * small.shape[0], small.shape[1]))
    dist.all_gather_single(out, small.contiguous(), group=group)
    return out.long()


def tokens_to_columns(x: torch.Tensor, group) -> torch.Tensor:
    """(T, d): this rank's tokens, all columns -> (M T, d / M): the group's tokens, this rank's columns."""
    m = dist.get_world_size(group)
    t, d = x.shape
    return _SelfTranspose.apply(x.view(t, m, d // m).transpose(0, 1).reshape(m * t, d // m), group, _all_to_all)


def columns_to_tokens(y: torch.Tensor, group) -> torch.Tensor:
    """(M T, d / M): the group's tokens, this rank's columns -> (T, d): this rank's tokens, all columns."""
    m = dist.get_world_size(group)
    t, c = y.shape[0] // m, y.shape[1]
    return _SelfTranspose.apply(y, group, _all_to_all).view(m, t, c).transpose(0, 1).reshape(t, m * c)


# ---------------------------------------------------------------------- what each rank computes
class _PartialDots(torch.autograd.Function):
    """``u_i[cols] . x[cols]`` for the retrieved rows, keeping only ``x`` and the indices for backward (the rows are
    gathered again, as in PEER's ``chunked`` experts); the table's gradient is dense over its rows."""

    @staticmethod
    def forward(ctx, x, indices, table, chunk):
        ctx.save_for_backward(x, indices, table)
        with torch.no_grad():
            return gathered_dots(table, indices, x, chunk)

    @staticmethod
    def backward(ctx, grad_pre):
        x, indices, table = ctx.saved_tensors
        grad_pre = grad_pre.contiguous()
        grad_x = F.embedding_bag(indices, table, per_sample_weights=grad_pre, mode="sum") \
            if ctx.needs_input_grad[0] else None
        grad_table = None
        if ctx.needs_input_grad[2]:
            groups = RowGroups(indices, table.shape[0])
            grad_table = groups.as_grad(groups.row_sums(grad_pre, x), table.shape[0], False)
        return grad_x, None, grad_table, None


def peer_partial_dots(x_columns: torch.Tensor, indices: torch.Tensor, down_columns: torch.Tensor,
                      chunk: int = 64) -> torch.Tensor:
    return _PartialDots.apply(x_columns, indices, down_columns, chunk)


def bag_columns(indices: torch.Tensor, coefs: torch.Tensor, table_columns: torch.Tensor) -> torch.Tensor:
    """``sum_j coefs[t, j] table[indices[t, j], cols]``: this rank's columns of the group's outputs."""
    return F.embedding_bag(indices, table_columns, per_sample_weights=coefs, mode="sum")


def peer_experts_sharded(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, down: torch.Tensor,
                         up: torch.Tensor, act: Activation, chunk: int, group) -> torch.Tensor:
    """PEER's experts with ``down``/``up`` holding this rank's columns: ``x`` (T, d) and the retrieval (T, hk) of this
    rank's tokens -> (T, d), what :func:`peerlab.mixers.peer_experts.experts_torch` gives on the whole tables."""
    rows = gather_indices(indices, group)
    coefs = _GatherTokens.apply(weights, group)
    pre = _SelfTranspose.apply(peer_partial_dots(tokens_to_columns(x, group), rows, down, chunk), group, _all_reduce)
    return columns_to_tokens(bag_columns(rows, act(pre) * coefs, up), group)


def weighted_bag_sharded(indices: torch.Tensor, weights: torch.Tensor, values: torch.Tensor, group) -> torch.Tensor:
    """PKM's read with ``values`` holding this rank's columns: (T, hk) of this rank's tokens -> (T, d)."""
    return columns_to_tokens(bag_columns(gather_indices(indices, group), _GatherTokens.apply(weights, group), values),
                             group)
