"""The memory one device needs for a training step: model states, saved activations and the transients on top.

Everything is counted from the model itself, built on the meta device: parameter counts from ``model.py``, each
mixer's activations from its own :meth:`~peerlab.mixers.base.Mixer.activation_memory`, the dense parts
(embeddings, attention, LayerNorms, the LM head) below. Bytes, per device:

- **model states**: float32 (or float64) weights, their gradients, AdamW's two moments, held all step long. DDP
  keeps the gradients in its all-reduce buckets (``gradient_as_bucket_view``, so no second copy); a table with
  sparse row gradients (PEER under gloo or in one process) holds the rows a step used. FSDP keeps 1/W of each.
- **activations**: what autograd saves from the forward pass for the backward pass, at the end of the forward
  pass, for one micro-batch (``data.batch_size`` sequences): per block its LayerNorm inputs and statistics,
  attention's projections, outputs and log-sum-exps, the mixer's own; the LM head's log-probabilities (or, with
  the chunked loss, the gradients it has already computed); 16-bit copies that autocast makes of matmul weights.
  With activation checkpointing only each block's input is kept, and one block is recomputed during the backward.
- **transients**: the most held on top of that at one moment: the LM head's logits and their gradients, a block's
  activation gradients, a parameter's new gradient before it is added into ``.grad`` (every micro-batch under DDP,
  whose gradients live in its buckets, and from the second one with accumulation), FSDP's gathered units and their
  unsharded gradients, the optimizer's temporaries (torch's foreach AdamW on the CPU; CUDA's fused kernel has none).

Left out: the CUDA context and NCCL's buffers (about 1-3 GB), the caching allocator's fragmentation, the data
loader's batches. The planner keeps 10% headroom for them. tests/test_memory.py holds each part against what this
CPU measures: parameter and optimizer bytes exactly, saved activations against torch's saved-tensor hooks, the
peak of a real step against the profiler's allocation trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from peerlab.config import PRECISIONS, precision_name
from peerlab.mixers.base import ActivationMemory, Precision
from peerlab.mixers.sparse_grads import expected_rows
from peerlab.model import Transformer
from peerlab.parallel.fsdp import blocks_dtype
from peerlab.parallel.fsdp import units as fsdp_units


def _bytes(precision: str) -> Precision:
    """Bytes of weights/full-precision activations and of matmul outputs under a Lightning precision setting: 8 for
    ``64-true``, 4 otherwise, and 2 for a ``*-mixed`` setting's matmuls (autocast)."""
    full = 8 if precision.startswith("64") else 4
    return Precision(full, 2 if precision.endswith("-mixed") else full)


# every precision the schema accepts (peerlab.config.PRECISIONS, the one list), with its bytes
BYTES = {name: _bytes(name) for name in PRECISIONS}
STRATEGIES = ("single", "ddp", "fsdp")
ADAMW_MOMENTS = 2
STEP_BYTES = 4  # AdamW's step count per parameter tensor: a float32 scalar tensor
INT64 = 8
LOGPROB_BYTES = 4  # the loss takes log-softmax in float32 (``logits.float()``), whatever the model's precision


@dataclass(frozen=True)
class Execution:
    """How a step runs on each device: the settings of ``trainer`` and ``data`` that change memory, not results."""

    device_type: str = "cuda"
    precision: str = "bf16-mixed"
    strategy: str = "ddp"  # single | ddp | fsdp
    world: int = 1
    micro_batch: int = 16  # sequences per device per forward pass (data.batch_size)
    seq_len: int = 2048
    accumulate: int = 1
    activation_checkpointing: bool = False
    loss_chunk_tokens: int = 0  # 0: the whole micro-batch's logits at once
    ddp_bucket_view: bool = True  # DDP keeps gradients in its buckets (peerlab.parallel.strategies); False: a second copy
    memory_parallel: int = 1  # trainer.memory_parallel: expert tables split by columns over this many ranks

    def __post_init__(self) -> None:
        if precision_name(self.precision) not in BYTES:
            raise ValueError(f"trainer.precision={self.precision!r}: allowed: {', '.join(BYTES)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r}: allowed: {', '.join(STRATEGIES)}")

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len

    @property
    def bytes(self) -> Precision:
        return BYTES[precision_name(self.precision)]

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp" and self.world > 1

    @property
    def fsdp_16bit_params(self) -> bool:
        """FSDP gathers the blocks' weights in 16 bits (its mixed-precision policy, ``peerlab.parallel.fsdp.blocks_dtype``)."""
        return self.strategy == "fsdp" and blocks_dtype(self.device_type, precision_name(self.precision)) is not None

    @property
    def split_tables(self) -> bool:
        """Expert tables split by columns over memory-parallel groups (``peerlab.parallel.memory_parallel``)."""
        return self.memory_parallel > 1 and self.sharded

    @property
    def chunked_loss(self) -> bool:
        return 0 < self.loss_chunk_tokens < self.tokens


@dataclass(frozen=True)
class Estimate:
    """Bytes per device. ``peak`` is the most held at once in a step: at ``phase``, the parameters and optimizer
    moments, the gradients that exist then (all of them once a step is under way with accumulation or DDP's buckets;
    otherwise those its backward has made so far), the saved activations still held, and the transients on top.
    ``activations`` is what the forward pass saves in all (its end)."""

    params: int
    grads: int
    optimizer: int
    activations: int
    phase: str
    live_grads: int
    live_activations: int
    transients: int
    notes: tuple[str, ...] = field(default=())
    optimizer_buffers: int = 0  # LazyAdamW's row buffers (sparse tables): made at the first step, kept after it

    @property
    def model_states(self) -> int:
        return self.params + self.grads + self.optimizer + self.optimizer_buffers

    @property
    def peak(self) -> int:
        return (self.params + self.optimizer + self.optimizer_buffers + self.live_grads + self.live_activations
                + self.transients)


@dataclass(frozen=True)
class _Part:
    """One piece of the forward order (embeddings, a block, the head): its saved bytes and what its forward and
    backward hold on top, and the parameters whose gradients its backward makes."""

    name: str
    saved: int
    forward: int
    backward: int
    params: int  # parameters (elements) whose gradients this part's backward produces
    new_grad: int  # bytes of the largest new gradient (float, and autocast's 16-bit one) before it lands in .grad


def sparse_tables(model: Transformer) -> dict[int, int]:
    """``{id(param): rows a step uses}`` of tables with sparse row gradients in this process (a mixer's
    ``nn.Embedding(sparse=True)``), after ``prepare_for_backend`` settled them."""
    out = {}
    for mixer in model.mixers:
        for sub in mixer.modules():
            if isinstance(sub, torch.nn.Embedding) and sub.sparse:
                out[id(sub.weight)] = sub.weight.shape[0]
    return out


def rows_used(model: Transformer, tokens: int) -> dict[int, int]:
    """Rows of each sparse table one micro-batch retrieves (uniform retrieval assumed)."""
    out = {}
    for mixer in model.mixers:
        draws = tokens * mixer.rows_per_token()
        for sub in mixer.modules():
            if isinstance(sub, torch.nn.Embedding) and sub.sparse:
                out[id(sub.weight)] = expected_rows(draws, sub.weight.shape[0])
    return out


def _parts(model: Transformer, ex: Execution) -> list[_Part]:
    """The forward order with each part's bytes (dense parts here, mixers from their own accounting)."""
    s, p = model.shape, ex.bytes
    n, d, f, c, V = ex.tokens, s.d_model, p.float_bytes, p.matmul_bytes, s.vocab_size
    casts_on = p.autocast and not ex.fsdp_16bit_params  # FSDP's 16-bit blocks need no autocast copies
    sparse = rows_used(model, n)

    def largest_grad(params) -> int:  # a backward makes one parameter's gradient at a time and adds it to .grad
        return max(sparse[id(q)] * q.shape[1] * f if id(q) in sparse else q.numel() * f for q in params)

    def count(params) -> int:
        return sum(q.numel() for q in params)

    emb = _part_params(model)[0]
    parts = [_Part("embeddings", saved=n * INT64, forward=n * f * d, backward=0, params=count(emb),
                   new_grad=largest_grad(emb))]
    layer_norm = n * (f * d + 2 * f)  # input (the float residual stream) and per-token mean and inverse std
    # FSDP's 16-bit blocks cast their input to 16 bits (MixedPrecisionPolicy's cast_forward_inputs), so a block's
    # LayerNorms save 16-bit inputs (torch's FSDPMemTracker: 4 bytes x d_model per token per block fewer)
    block_norm = n * (2 * d + 2 * f) if ex.fsdp_16bit_params else layer_norm
    attention_params = 4 * d * d
    # input copy, q|k|v, output, and the output's log-sum-exp per head (float32)
    attention = block_norm + n * (c * d + 3 * c * d + c * d + 4 * s.n_head)
    for i, block in enumerate(model.blocks):
        split = ex.split_tables and block.mixer.expert_tables()
        mixer: ActivationMemory = (block.mixer.split_activation_memory(n, p, ex.memory_parallel, ex.device_type)
                                   if split else block.mixer.activation_memory(n, p, ex.device_type))
        if ex.fsdp_16bit_params and not block.mixer.full_precision:
            mixer = replace(mixer, autocast_params=0)
        saved = attention + block_norm + mixer.saved
        attention_backward = n * (3 * c * d + 2 * c * d + 2 * f * d)  # dq, dk, dv, the output's, the stream's
        casts = (attention_params if casts_on else 0) + (mixer.autocast_params if p.autocast else 0)
        matrices = [q.numel() for q in block.mixer.parameters() if q.ndim >= 2]
        largest_cast = max(3 * d * d if casts_on else 0, min(max(matrices, default=0), mixer.autocast_params))
        parts.append(_Part(f"block {i}", saved=saved + 2 * casts, forward=max(mixer.forward_peak, n * 3 * c * d),
                           backward=max(mixer.backward_peak, attention_backward) + 2 * n * f * d,
                           params=count(block.parameters()), new_grad=largest_grad(block.parameters()) + 2 * largest_cast))
    head = _part_params(model)[-1]
    head_cast = V * d if casts_on else 0
    if ex.chunked_loss:
        m = ex.loss_chunk_tokens
        # kept: the final LayerNorm's input, and the gradients the forward pass already computed (input, head)
        saved = layer_norm + n * f * d + f * V * d
        # one chunk's log-probabilities, their gradient and log-softmax's input gradient, in float32; the 16-bit
        # logits are freed once copied to float32, before those exist (torch's FSDPMemTracker, at_scale.md)
        forward = m * V * 3 * LOGPROB_BYTES + (2 * V * d if p.autocast else 0)
        backward = n * f * d
        head_cast = 0  # made and dropped inside each chunk's forward
    else:
        saved = layer_norm + n * (c * d + LOGPROB_BYTES * V + INT64)
        forward = n * V * (c + (LOGPROB_BYTES if c != LOGPROB_BYTES else 0))  # logits, their float32 copy
        backward = n * V * 2 * LOGPROB_BYTES  # log-softmax's input and output gradients
    parts.append(_Part("LM head", saved=saved + 2 * head_cast, forward=forward, backward=backward,
                       params=count(head), new_grad=largest_grad(head) + 2 * head_cast))
    return parts


def fsdp_unsharded_grad_bytes(elements: int, param_bytes: int) -> int:
    """A gathered unit's gradients before its reduce-scatter: in the parameters' dtype, plus a float32 copy when that
    dtype is 16-bit (FSDP2 reduces in float32, ``MixedPrecisionPolicy(reduce_dtype=float32)``)."""
    return elements * (param_bytes + (4 if param_bytes < 4 else 0))


def split_tables(model: Transformer, ex: Execution) -> set[torch.nn.Parameter]:
    """The expert tables split by columns under ``ex`` (none unless ``ex.split_tables``): FSDP leaves them."""
    if not ex.split_tables:
        return set()
    return {q for mixer in model.mixers for q in mixer.expert_tables().values()}


def held(q: torch.nn.Parameter, split: set[torch.nn.Parameter], ex: Execution) -> int:
    """Elements of ``q`` one device holds: 1/M of a table in ``split``, 1/W under FSDP (each shard padded to a whole
    row count, as ``fully_shard`` pads), all of it otherwise."""
    return math.ceil(q.numel() / (ex.memory_parallel if q in split else ex.world if ex.sharded else 1))


def held_elements(model: Transformer, ex: Execution) -> int:
    """Elements of every parameter one device holds between steps (:func:`held`)."""
    split = split_tables(model, ex)
    return sum(held(q, split, ex) for q in model.parameters())


def _fsdp_units(model: Transformer, ex: Execution) -> tuple[list[tuple[str, int, int]], int]:
    """``(name, elements, bytes per gathered element)`` of each ``fully_shard`` unit but the root, in forward order,
    as ``peerlab.parallel.fsdp.units`` cuts them (split tables are no unit's), and the root's elements."""
    f = ex.bytes.float_bytes
    block_bytes = 2 if ex.fsdp_16bit_params else f
    *inner, root = fsdp_units(model, split_tables(model, ex))
    cut = [(u.name, u.elements, f if u.full_precision else block_bytes) for u in inner]
    # in forward order: a block's own unit is gathered first, its mixer's inside it
    return sorted(cut, key=lambda u: (int(u[0].split()[1]), u[0].endswith("mixer"))), root.elements


def estimate(model: Transformer, ex: Execution) -> Estimate:
    """Peak bytes per device of a training step of ``model`` (built on any device; the meta device is enough)
    run as ``ex`` says. Mixers' table gradients follow their current ``sparse`` setting (``prepare_for_backend``)."""
    p, W = ex.bytes, ex.world
    f = p.float_bytes
    sparse = sparse_tables(model)
    rows = rows_used(model, ex.tokens * ex.accumulate)
    shard = (lambda x: math.ceil(x / W)) if ex.sharded else (lambda x: x)
    split = split_tables(model, ex)  # split by columns: 1/M of each on every rank, no FSDP
    held_total = held_elements(model, ex)
    params = f * held_total
    tensors = sum(1 for _ in model.parameters())
    optimizer = ADAMW_MOMENTS * f * held_total + STEP_BYTES * tensors  # two moments, and each tensor's step count

    def grad_bytes(params_of) -> int:
        return sum(rows[id(q)] * (q.shape[1] * f + INT64) if id(q) in sparse else f * held(q, split, ex)
                   for q in params_of)

    grads = grad_bytes(model.parameters())
    if ex.strategy == "ddp" and W > 1 and not ex.ddp_bucket_view:  # the buckets beside the gradients
        grads += f * sum(q.numel() for q in model.parameters() if id(q) not in sparse)
    # Gradients exist all step long with accumulation (from the second micro-batch) and under DDP (its buckets);
    # otherwise zero_grad(set_to_none) frees them and each part's backward makes its own.
    persistent = ex.accumulate > 1 or (ex.strategy == "ddp" and W > 1)
    parts = _parts(model, ex)
    part_grads = {part.name: grad_bytes(ps) for part, ps in zip(parts, _part_params(model), strict=True)}

    units, root_elements = _fsdp_units(model, ex) if ex.sharded else ([], 0)
    root = f * root_elements  # embeddings, final norm: gathered all step
    gathered = {name: n * b for name, n, b in units}
    order = [u for u, _, _ in units]

    def fsdp_unit_load(name: str, backward: bool) -> tuple[int, int]:
        """``(while computing, while reducing)``. In forward: a unit's gathered weights and all-gather buffers
        (below). In backward: its gathered weights, the next one's (prefetch) and its unsharded gradients; then what
        its post-backward holds once FSDP2 has freed the gathered weights (and autograd the part's saved tensors):
        the prefetched unit, the unsharded gradients and their float32 copy for the reduce-scatter (16-bit units).
        Measured apart by torch's tracker (peerlab.parallel.fake_step): d24/moe's MoE block peaks at its
        reduce-scatter, with its weights already freed."""
        names = [u for u in order if u == name or u.startswith(name + " ")]
        if not names:
            return 0, 0
        here = sum(gathered[u] for u in names)
        if not backward:
            # no prefetch in forward; the all-gather's flat output outlives the copy into the unit's parameters
            # until the next unit's all-gather ("defer free"): the unit's own and the previous unit's are held
            before = order.index(names[0]) - 1
            return 2 * here + (gathered[order[before]] if before >= 0 else 0), 0
        nxt = order.index(names[0]) - 1
        prefetch = gathered[order[nxt]] if 0 <= nxt < len(order) else 0
        own = [(n, b) for u, n, b in units if u in names]
        return (here + prefetch + sum(n * b for n, b in own),
                prefetch + sum(fsdp_unsharded_grad_bytes(n, b) for n, b in own))

    def kept(part: _Part) -> int:  # saved until the backward pass: a checkpointed block keeps its input only
        if ex.activation_checkpointing and part.name.startswith("block"):
            return ex.tokens * f * model.shape.d_model
        return part.saved

    phases: list[tuple[str, int, int, int]] = []  # (name, gradients, saved activations live, transient)
    live = 0
    for part in parts:
        phases.append((f"forward, {part.name}", grads if persistent else 0, live + part.saved,
                       root + part.forward + fsdp_unit_load(part.name, False)[0]))
        live += kept(part)
    end_of_forward = live
    made = 0  # gradients the backward has made so far (when they do not persist)
    for part in reversed(parts):
        recompute = part.saved if kept(part) != part.saved else 0
        if ex.sharded:  # a block's new gradients are its unit's unsharded ones; the root's land in the head's
            new_grads = f * part.params if part.name in ("LM head", "embeddings") else 0
        else:  # the largest parameter's new gradient (and autocast's 16-bit one) while the part's saved tensors live
            new_grads = part.new_grad
        computing, reducing = fsdp_unit_load(part.name, True)
        phases.append((f"backward, {part.name}", grads if persistent else made, live + recompute,
                       root + part.backward + new_grads + computing))
        made += part_grads[part.name]
        live -= kept(part)
        if reducing:
            phases.append((f"backward, {part.name} reduce-scatter", grads if persistent else made, live,
                           root + reducing))
    # the optimizer's temporaries: on the CPU torch's per-tensor AdamW holds two weight-sized temporaries of the
    # largest tensor at once (the moments' square root, then the scaled update; measured against the profiler's
    # trace); CUDA takes the fused kernel.
    largest = max((q.numel() for q in model.parameters() if id(q) not in sparse), default=0)
    step = 2 * f * shard(largest) if ex.device_type != "cuda" else 0
    phases.append(("optimizer step", grads, 0, step))
    phase, live_grads, live_acts, transient = max(phases, key=lambda ph: ph[1] + ph[2] + ph[3])
    # LazyAdamW keeps one pair of row buffers per row width, sized for the largest sparse update, between steps
    buffers = max((2 * rows[id(q)] * q.shape[1] * f for q in model.parameters() if id(q) in sparse), default=0)
    notes = ("sparse table gradients hold the rows a step retrieves (uniform retrieval assumed)",) if sparse else ()
    return Estimate(params=params, grads=grads, optimizer=optimizer, activations=end_of_forward, phase=phase,
                    live_grads=live_grads, live_activations=live_acts, transients=transient, notes=notes,
                    optimizer_buffers=buffers)


def _part_params(model: Transformer) -> list[list[torch.nn.Parameter]]:
    """The parameters each part of :func:`_parts` makes gradients for, in the same order."""
    head = [model.tok_emb.weight, *model.ln_f.parameters()]
    return [[model.pos_emb.weight], *[list(b.parameters()) for b in model.blocks], head]
