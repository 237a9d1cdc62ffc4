"""PEER: Parameter Efficient Expert Retrieval (He, 2024), faithful to the paper.

``heads`` query heads retrieve ``k`` experts each, by exact product-key top-k, from one pool of N single-neuron
experts ``e_i(x) = act(u_i . x) v_i`` (tables ``down`` = u and ``up`` = v, each N x d_model); router weights are a
softmax over each head's k scores, and head outputs are summed:
``f(x) = sum_h sum_{i in I_h(x)} g_i(x) act(u_i . x) v_i``.

Defaults are the paper's (N = 1024^2, h = 8, k = 16, query BatchNorm, sub-keys shared by all heads). The paper
leaves d_key and the activation open: we use d_key = 128 (sub-key scoring then costs about an eighth of a dense
FFW at d_model = 1024) and GELU ("ReLU or GELU" in the paper; GELU matches our dense FFW).
"""

from __future__ import annotations

import functools
import math
from dataclasses import astuple

import torch
from torch import nn

from peerlab.mixers.activations import activation_fn
from peerlab.mixers.base import ActivationMemory, Mixer, MixerConfigError, Precision
from peerlab.mixers.column_shards import (
    bytes_per_token,
    local_columns,
    peer_experts_sharded,
    split_activation_memory,
)
from peerlab.mixers.matched_sizes import MIN_PARAM_RATIO, fill_sizes
from peerlab.mixers.peer_experts import experts_chunked, experts_torch
from peerlab.mixers.product_keys import ProductKeyRouter
from peerlab.mixers.sparse_grads import GradMode, check_mode, expected_rows, process_group, resolve

IMPLS = ("auto", "torch", "chunked", "triton")
TRITON_ACTIVATIONS = ("gelu", "relu", "silu", "identity")  # the activations peer_triton's kernels implement


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class PEER(Mixer):
    full_precision = True  # retrieval and experts run in the tables' precision, autocast off

    def __init__(
        self,
        d_model: int,
        n_experts: int | None = 1024**2,
        heads: int | None = 8,
        k: int | None = 16,
        d_key: int | None = 128,
        query_norm: str = "batch",
        shared_keys: bool = True,
        score: str = "softmax",
        activation: str = "gelu",
        dense_hidden_mult: float = 4.0,
        impl: str = "auto",
        chunk_tokens: int = 64,
        sparse_grads: GradMode = "auto",
        stable_ties: bool = False,
        min_param_ratio: float = MIN_PARAM_RATIO,
        n_layer: int = 1,
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise MixerConfigError(f"layer.impl={impl!r}: allowed: {', '.join(IMPLS)}")
        if chunk_tokens < 1:
            raise MixerConfigError(f"layer.chunk_tokens={chunk_tokens}: must be >= 1")
        if impl == "triton" and not triton_available():
            raise MixerConfigError("layer.impl='triton': Triton is not installed (pip install '.[gpu]'); "
                                   "use layer.impl=chunked or auto")
        if impl == "triton" and activation not in TRITON_ACTIVATIONS:
            raise MixerConfigError(f"layer.activation={activation!r}: impl=triton supports {', '.join(TRITON_ACTIVATIONS)}")
        self.impl, self.chunk_tokens, self.sparse_grads = impl, chunk_tokens, check_mode(sparse_grads)
        self._sharded, self._group = False, None  # set by prepare_for_backend
        # null sizes follow d_model by the matched rule (layer=peer_matched; mixers/matched_sizes.py)
        if not min_param_ratio > 0:
            raise MixerConfigError(f"layer.min_param_ratio={min_param_ratio}: must be > 0")
        n_experts, heads, k, d_key = astuple(fill_sizes(d_model, "peer", n_experts, heads, k, d_key, min_param_ratio))
        self.activation = activation
        self.router = ProductKeyRouter(d_model, n_experts, heads, k, d_key, query_norm, shared_keys, score,
                                       stable_ties, size_key="layer.n_experts")
        self.d_model, self.n_experts, self.heads, self.k = d_model, n_experts, heads, k
        self.act = activation_fn(activation)
        # ``sparse`` marks the tables' gradients as sparse: the expert functions produce them, and under DDP the
        # LightningModule averages them outside DDP's reducer (sparse_allreduce.py). Set in prepare_for_backend().
        self.down = nn.Embedding(n_experts, d_model, sparse=self.sparse_grads is not False)  # u_i
        self.up = nn.Embedding(n_experts, d_model, sparse=self.sparse_grads is not False)  # v_i
        # Match a dense FFW of width dense_hidden_mult * d_model at init: u like its first layer's rows; v scaled
        # so that h heads of k softmax-weighted neurons carry the variance of that FFW's hidden units
        # (out var ~ h * sum_j g_j^2 * var(v) ~ (h / k) var(v) against d_ff * var(W2)).
        d_ff = dense_hidden_mult * d_model
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.normal_(self.up.weight, std=0.02 / math.sqrt(2 * n_layer) * math.sqrt(d_ff * k / heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        # Mixed precision (bf16 autocast): retrieval and experts run in the tables' precision (fp32 master
        # weights), so top-k picks the experts an fp32 run picks and every sum accumulates in fp32.
        with torch.autocast(x.device.type, enabled=False):
            x = x.reshape(-1, shape[-1]).to(self.down.weight.dtype)  # (tokens, d_model)
            weights, indices = self.router(x)  # (tokens, heads, k) each
            indices, weights = indices.flatten(1), weights.flatten(1)  # (tokens, heads*k)
            tables = (self.down.weight, self.up.weight)
            grads = self.grad_mode()
            impl = self.resolved_impl(x)
            if self.tables_group is not None:  # this rank holds some columns of the tables (memory parallel)
                y = peer_experts_sharded(x, indices, weights, *map(local_columns, tables), self.act,
                                         self.chunk_tokens, self.tables_group)
            elif impl == "triton":
                from peerlab.mixers.peer_triton import experts_triton  # imports Triton only when used

                y = experts_triton(x, indices, weights, *tables, self.activation, grads)
            elif impl == "chunked":
                y = experts_chunked(x, indices, weights, *tables, self.act, self.chunk_tokens, grads)
            else:
                y = experts_torch(x, indices, weights, *tables, self.act, grads)
        return y.to(dtype).view(shape)

    def grad_mode(self) -> GradMode:
        """The tables' gradient kind under the current process group (``sparse_grads.py``)."""
        return resolve(self.sparse_grads, *(self._group or process_group()), sharded=self._sharded)

    def prepare_for_backend(self, sharded: bool = False, group: tuple[str | None, int] | None = None) -> None:
        self._sharded, self._group = sharded, group
        mode = self.grad_mode()  # raises for sparse_grads=true under NCCL or FSDP
        self.down.sparse = self.up.sparse = mode is not False

    def resolved_impl(self, x: torch.Tensor) -> str:
        """``auto``: the fused Triton kernels on CUDA tensors when Triton is installed, else ``chunked``."""
        if self.impl != "auto":
            return self.impl
        triton_ok = self.activation in TRITON_ACTIVATIONS and triton_available()
        return "triton" if x.is_cuda and triton_ok else "chunked"

    # ------------------------------------------------------------------ Mixer contract
    def flops_per_token(self) -> int:
        # Retrieval, then per retrieved expert one dot product (u.x) and one scaled row (g act v).
        return self.router.flops_per_token() + 2 * 2 * self.d_model * self.heads * self.k

    def active_params(self) -> int:
        return self.router.num_params() + 2 * self.heads * self.k * self.d_model

    def activation_memory(self, tokens: int, precision: Precision, device_type: str = "cuda") -> ActivationMemory:
        """The router's, plus the retrieved indices and the experts' pre-activations (``torch``: also the gathered
        down rows, tokens x h*k x d_model). Backward holds the activation gradients, the occurrences sorted by row
        and, when the table gradients are dense, the used rows' sums before they are scattered into N rows (two
        such buffers at once in ``triton``); a sparse gradient is those sums itself (``peerlab.parallel.memory`` counts it)."""
        f, hk, d = precision.float_bytes, self.heads * self.k, self.d_model
        router = self.router.activation_memory(tokens, f)
        # auto on CUDA is Triton's kernels: planned as such whether or not the planning machine has Triton (torch's
        # CUDA wheels bring it), so a plan does not change with where it is made
        impl = self.impl if self.impl != "auto" else ("triton" if device_type == "cuda"
                                                      and self.activation in TRITON_ACTIVATIONS else "chunked")
        saved = tokens * (8 * hk + f * hk)  # indices, pre-activations
        gathered = tokens * hk * d * f  # torch: the down rows, kept; chunked: in chunk_tokens slices
        if impl == "torch":
            saved += gathered + tokens * (2 * f * hk + 24)  # rows, activation, weighted activation, bag offsets
        rows = expected_rows(tokens * hk, self.n_experts)
        # the resolved mode (FSDP and NCCL make "auto" dense); "auto" in one process is dense only when every row is
        # used, and then rows = N anyway
        dense = self.grad_mode() is False
        sums = (2 if impl == "triton" else 1) * rows * d * f if dense or impl == "triton" else 0
        experts_backward = tokens * (2 * f * d + 4 * f * hk + 24 * hk) + 32 * rows + sums
        if impl == "chunked":
            experts_backward += min(self.chunk_tokens, tokens) * hk * d * f
        elif impl == "torch":
            experts_backward += gathered
        forward = max(router.forward_peak, tokens * (f * hk + f * d)
                      + (min(self.chunk_tokens, tokens) * hk * d * f if impl == "chunked" else 0))
        return ActivationMemory(saved=router.saved + saved, forward_peak=forward,
                                backward_peak=max(router.backward_peak, experts_backward))

    def reset_usage(self) -> None:
        self.router.reset_usage()

    def usage_stats(self) -> dict[str, float]:
        return self.router.usage_stats()

    def usage_tensors(self) -> list[torch.Tensor]:
        return self.router.usage_tensors()

    def expert_tables(self) -> dict[str, nn.Parameter]:
        return {"down.weight": self.down.weight, "up.weight": self.up.weight}

    def rows_per_token(self) -> int:
        return self.heads * self.k

    def split_activation_memory(self, tokens: int, precision: Precision, m: int,
                                device_type: str = "cuda") -> ActivationMemory:
        """The router's, and the split experts' (``column_shards.split_activation_memory``)."""
        return split_activation_memory("peer", self.router.activation_memory(tokens, precision.float_bytes), tokens, m,
                                       self.d_model, self.heads * self.k, self.n_experts, precision.float_bytes, self.chunk_tokens)

    def split_bytes_per_token(self, m: int, float_bytes: int = 4) -> dict[str, float]:
        return bytes_per_token("peer", self.d_model, self.heads * self.k, m, float_bytes)

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"peer_experts": [self.down.weight, self.up.weight], "product_keys": [self.router.keys]}
