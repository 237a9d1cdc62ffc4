"""PEER's expert part as fused Triton kernels, forward and backward (``layer.impl=triton``; ``pip install .[gpu]``).

Same function as :func:`peerlab.mixers.peer_experts.experts_chunked`, same values and gradients:

- forward, one program per token: gather each retrieved down row ``u``, dot with ``x``, activation, times the
  router weight, accumulate the weighted up rows ``v``; stores only the pre-activations (tokens x h*k).
- backward, one program per token: gather ``v`` again for ``dw = v . dy``; router-score gradient ``dw * act``;
  ``dpre = dw * g * act'``; ``dx = sum_j dpre_j u_j``; it also writes the two per-occurrence coefficients
  (``dpre`` and ``g * act``) of the table gradients.
- table gradients, one program per *used* row: the sum over the tokens that retrieved the row of coefficient x
  ``x_t`` (down table) and x ``dy_t`` (up table), over the occurrences sorted once by row. Their size and cost
  follow the rows used, not N; they are returned sparse (``sparse_grads``) or scattered into a dense table.

No gathered ``tokens x h*k x d_model`` tensor exists at any point. Tests run these kernels on the CPU through
Triton's interpreter (``TRITON_INTERPRET=1``, set before this module is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from peerlab.mixers.row_groups import RowGroups
from peerlab.mixers.sparse_grads import GradMode

ACTIVATION_CODES = {"gelu": 0, "relu": 1, "silu": 2, "identity": 3}


@triton.jit
def _activation(z, ACT: tl.constexpr):
    """``(act(z), act'(z))``; GELU is the exact (erf) one, as ``F.gelu``."""
    if ACT == 0:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        a = z * cdf
        da = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    elif ACT == 1:
        a = tl.maximum(z, 0.0)
        da = tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == 2:
        s = tl.sigmoid(z)
        a = z * s
        da = s * (1.0 + z * (1.0 - s))
    else:  # identity (layer=peer_linear)
        a = z
        da = z * 0.0 + 1.0
    return a, da


@triton.jit
def _slots(idx_ptr, g_ptr, t, j0, HK, D, offs_d, mask_d, BLOCK_J: tl.constexpr):
    """Token ``t``'s retrieved slots ``j0 .. j0 + BLOCK_J``: positions, mask, router weights, and the offsets and
    mask of their table rows as a (BLOCK_J, BLOCK_D) tile."""
    offs_j = j0 + tl.arange(0, BLOCK_J)
    mask_j = offs_j < HK
    rows = tl.load(idx_ptr + t * HK + offs_j, mask=mask_j, other=0).to(tl.int64)
    g = tl.load(g_ptr + t * HK + offs_j, mask=mask_j, other=0.0).to(tl.float32)
    return offs_j, mask_j, g, rows[:, None] * D + offs_d[None, :], mask_j[:, None] & mask_d[None, :]


@triton.jit
def _forward_kernel(x_ptr, idx_ptr, g_ptr, down_ptr, up_ptr, y_ptr, pre_ptr, HK, D,
                    BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    x = tl.load(x_ptr + t * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j0 in range(0, HK, BLOCK_J):
        offs_j, mask_j, g, tile, mask = _slots(idx_ptr, g_ptr, t, j0, HK, D, offs_d, mask_d, BLOCK_J)
        u = tl.load(down_ptr + tile, mask=mask, other=0.0).to(tl.float32)
        pre = tl.sum(u * x[None, :], axis=1)
        tl.store(pre_ptr + t * HK + offs_j, pre, mask=mask_j)
        a, _ = _activation(pre, ACT)
        v = tl.load(up_ptr + tile, mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum((a * g)[:, None] * v, axis=0)
    tl.store(y_ptr + t * D + offs_d, acc.to(y_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _backward_kernel(idx_ptr, g_ptr, pre_ptr, down_ptr, up_ptr, gy_ptr, gx_ptr, gg_ptr, c_down_ptr, c_up_ptr,
                     HK, D, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, ACT: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    gy = tl.load(gy_ptr + t * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    gx = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j0 in range(0, HK, BLOCK_J):
        offs_j, mask_j, g, tile, mask = _slots(idx_ptr, g_ptr, t, j0, HK, D, offs_d, mask_d, BLOCK_J)
        pre = tl.load(pre_ptr + t * HK + offs_j, mask=mask_j, other=0.0)
        v = tl.load(up_ptr + tile, mask=mask, other=0.0).to(tl.float32)
        dw = tl.sum(v * gy[None, :], axis=1)  # d loss / d (g * act), per retrieved expert
        a, da = _activation(pre, ACT)
        dpre = dw * g * da
        tl.store(gg_ptr + t * HK + offs_j, dw * a, mask=mask_j)
        tl.store(c_down_ptr + t * HK + offs_j, dpre, mask=mask_j)
        tl.store(c_up_ptr + t * HK + offs_j, a * g, mask=mask_j)
        u = tl.load(down_ptr + tile, mask=mask, other=0.0).to(tl.float32)
        gx += tl.sum(dpre[:, None] * u, axis=0)
    tl.store(gx_ptr + t * D + offs_d, gx.to(gx_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _row_sums_kernel(order_ptr, starts_ptr, ends_ptr, c_down_ptr, c_up_ptr, x_ptr, gy_ptr, out_down_ptr, out_up_ptr, HK, D,
                     BLOCK_D: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    start = tl.load(starts_ptr + r)
    end = tl.load(ends_ptr + r)
    acc_down = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in range(start, end):
        occ = tl.load(order_ptr + i)  # flat (token, slot) position of this occurrence
        t = occ // HK
        acc_down += tl.load(c_down_ptr + occ) * tl.load(x_ptr + t * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        acc_up += tl.load(c_up_ptr + occ) * tl.load(gy_ptr + t * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    tl.store(out_down_ptr + r * D + offs_d, acc_down.to(out_down_ptr.dtype.element_ty), mask=mask_d)
    tl.store(out_up_ptr + r * D + offs_d, acc_up.to(out_up_ptr.dtype.element_ty), mask=mask_d)


def _blocks(hk: int, d: int) -> tuple[int, int, int]:
    block_d = triton.next_power_of_2(d)
    # A BLOCK_J x BLOCK_D tile of rows in registers: about 4k floats keeps occupancy up at every d_model.
    block_j = max(1, min(triton.next_power_of_2(hk), 4096 // block_d))
    return block_j, block_d, 4 if block_d <= 512 else 8


class _TritonExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, indices, weights, down, up, act_code, sparse_grads):
        x, indices, weights = x.contiguous(), indices.contiguous(), weights.contiguous()
        tokens, hk = indices.shape
        d = x.shape[1]
        block_j, block_d, warps = _blocks(hk, d)
        y = torch.empty_like(x)
        pre = torch.empty(tokens, hk, device=x.device, dtype=torch.float32)
        _forward_kernel[(tokens,)](x, indices, weights, down, up, y, pre, hk, d, BLOCK_J=block_j, BLOCK_D=block_d,
                                   ACT=act_code, num_warps=warps)
        ctx.save_for_backward(x, indices, weights, pre, down, up)
        ctx.act_code, ctx.sparse_grads = act_code, sparse_grads
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, indices, weights, pre, down, up = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        tokens, hk = indices.shape
        d = x.shape[1]
        block_j, block_d, warps = _blocks(hk, d)
        grad_x = torch.empty_like(x)
        grad_g = torch.empty(tokens, hk, device=x.device, dtype=torch.float32)
        c_down = torch.empty_like(grad_g)
        c_up = torch.empty_like(grad_g)
        _backward_kernel[(tokens,)](indices, weights, pre, down, up, grad_y, grad_x, grad_g, c_down, c_up, hk, d,
                                    BLOCK_J=block_j, BLOCK_D=block_d, ACT=ctx.act_code, num_warps=warps)
        grad_down = grad_up = None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            groups = RowGroups(indices, down.shape[0])
            rows_down = down.new_empty(groups.rows.numel(), d)
            rows_up = up.new_empty(groups.rows.numel(), d)
            _row_sums_kernel[(groups.rows.numel(),)](groups.order, groups.offsets, groups.ends, c_down, c_up, x, grad_y, rows_down, rows_up,
                                                      hk, d, BLOCK_D=block_d, num_warps=warps)
            grad_down = groups.as_grad(rows_down, down.shape[0], ctx.sparse_grads)
            grad_up = groups.as_grad(rows_up, up.shape[0], ctx.sparse_grads)
        return grad_x, None, grad_g.to(weights.dtype), grad_down, grad_up, None, None


def experts_triton(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, down: torch.Tensor,
                   up: torch.Tensor, activation: str, sparse_grads: GradMode = False) -> torch.Tensor:
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"layer.activation={activation!r}: impl=triton supports {', '.join(ACTIVATION_CODES)}")
    return _TritonExperts.apply(x, indices, weights, down.contiguous(), up.contiguous(),
                                ACTIVATION_CODES[activation], sparse_grads)
