"""The bytes each device sends per optimizer step, by collective: what a plan's ``comm_gb_per_step`` adds up.

Counted as the ring algorithms send them (the "bus bytes" of nccl-tests), for a group of ``n`` ranks and a tensor
of ``S`` bytes in all: an all-gather or a reduce-scatter sends ``S (n - 1) / n`` per rank, an all-reduce twice that,
an all-to-all ``(n - 1) / n`` of each rank's input. ``tests/test_memory_parallel.py`` holds these sums against the
bytes that pass through a gloo process group in a real step.

- **FSDP** (``trainer=fsdp``; units as :func:`peerlab.parallel.fsdp.units` cuts them): every micro-batch gathers each unit
  before its forward and again before its backward (the root once: it stays gathered), in the dtype the unit is
  gathered in, and reduce-scatters its gradients in float32. Lightning does not skip the reduce-scatter while
  gradients accumulate, so all of it is paid ``trainer.accumulate_grad_batches`` times a step.
- **Memory parallel** (``trainer.memory_parallel=M``): per token of each micro-batch, each split layer's
  collectives (``Mixer.split_bytes_per_token``: :func:`peerlab.mixers.column_shards.bytes_per_token`); once a step, the table shards' gradients
  all-reduced over the ``W / M`` replicas.
- **DDP**: once a step (its ``no_sync`` while accumulating), an all-reduce of every dense gradient; a table with
  sparse row gradients all-gathers the rows each rank used (``peerlab.parallel.sparse_allreduce``).

Left out: the loss and metric reductions (a few scalars), validation, checkpoints.
"""

from __future__ import annotations

from peerlab.model import Transformer
from peerlab.parallel.fsdp import units as fsdp_units
from peerlab.parallel.memory import Execution, rows_used, sparse_tables, split_tables

REDUCE_BYTES = 4  # FSDP reduces gradients in float32 (MixedPrecisionPolicy(reduce_dtype=float32)), DDP in theirs


def comm_bytes(model: Transformer, ex: Execution) -> dict[str, float]:
    """Bytes one device sends per optimizer step of ``model`` run as ``ex``, by collective (empty in one process)."""
    w, a, f = ex.world, ex.accumulate, ex.bytes.float_bytes
    out: dict[str, float] = {}
    if w <= 1:
        return out
    if ex.sharded:
        split = split_tables(model, ex)
        gather = reduce = 0.0
        for unit in fsdp_units(model, split):
            size = 2 if ex.fsdp_16bit_params and not unit.full_precision else f
            times = 1 if unit.name == "root" else 2  # the root stays gathered from its forward to its backward
            gather += times * unit.elements * size
            reduce += unit.elements * max(REDUCE_BYTES, f)
        out["FSDP all-gathers"] = a * gather * (w - 1) / w
        out["FSDP reduce-scatters"] = a * reduce * (w - 1) / w
        if split:
            m, replicas = ex.memory_parallel, w // ex.memory_parallel
            for mixer in model.mixers:
                for name, b in mixer.split_bytes_per_token(m, f).items():
                    key = f"memory parallel: {name}"
                    out[key] = out.get(key, 0.0) + a * ex.tokens * b
            if replicas > 1:
                table_elements = sum(q.numel() for q in split)
                out["memory parallel: table gradients over replicas (all-reduce)"] = \
                    2 * (replicas - 1) / replicas * f * table_elements / m
    elif ex.strategy == "ddp":
        sparse = sparse_tables(model)
        dense = sum(q.numel() for q in model.parameters() if id(q) not in sparse)
        out["DDP all-reduce"] = 2 * (w - 1) / w * f * dense
        if sparse:
            rows = rows_used(model, ex.tokens * a)
            out["DDP sparse table rows (all-gather)"] = sum(
                rows[id(q)] * (q.shape[1] * f + 8) * (w - 1) for q in model.parameters() if id(q) in sparse)
    return out
