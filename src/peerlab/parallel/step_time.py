"""How long a training step takes on a kind of GPU, from the plan's counts: an estimate with stated assumptions, not
a measurement (nothing here has been checked against a GPU run yet; ``benchmarks/gpu_scale.py`` is where it will be).

A step of ``W`` GPUs has three kinds of work per GPU:

- **matmul FLOPs**: the exact training FLOPs of the step's tokens on this GPU (``peerlab.flops``), at a share of the
  card's dense bf16 (or TF32) peak. The share is a range, :data:`MATMUL_EFFICIENCY`: torchtitan reports 33-39% MFU
  for Llama 3.1 8B under FSDP2 on 8 H100s and 57-58% for Llama 3 8B on 64 A100s (``docs/performance.md``); the
  grid's models are 10-60 times smaller, with narrower matmuls, so the range runs lower;
- **memory-bound table work** at the card's HBM bandwidth: each retrieved row of PEER's or PKM's tables read in the
  forward pass and twice in the backward pass, each gradient row written, and the optimizer step over this GPU's
  share of every parameter (AdamW reads weight, gradient and two moments and writes three: 28 bytes per fp32
  element);
- **communication**: the plan's bytes per GPU per step (``peerlab.parallel.traffic``) at the NCCL bus bandwidth
  that nccl-tests measures on the card's NVLink fabric (one node; across nodes, InfiniBand is slower).

The step takes at least the longest of matmuls + tables and communication (all of it hidden behind compute) and at
most their sum (none hidden): both are given. GPU-hours = steps x step time x W / 3600.
"""

from __future__ import annotations

from dataclasses import dataclass

from peerlab.model import Transformer
from peerlab.parallel.memory import Execution, held_elements
from peerlab.parallel.traffic import comm_bytes


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bf16_tflops: float  # dense (no 2:4 sparsity) tensor-core peak
    tf32_tflops: float
    hbm_tbs: float  # HBM bandwidth, TB/s
    nccl_busbw_gbs: float  # all-reduce bus bandwidth that nccl-tests measures on 8 GPUs of one node, GB/s
    source: str


GPUS = {
    "a100-40": GPU("NVIDIA A100 40GB SXM4", 40, 312, 156, 1.555, 240,
                   "NVIDIA A100 datasheet (312 TFLOPS bf16 dense, 156 TF32, 1,555 GB/s HBM2, NVLink 3 600 GB/s); "
                   "nccl-tests busbw 230-250 GB/s on 8 x A100 SXM4 (Alaya NeW, 'NCCL-tests in practice', 2026)"),
    "a100-80": GPU("NVIDIA A100 80GB SXM4", 80, 312, 156, 2.039, 240,
                   "NVIDIA A100 datasheet (2,039 GB/s HBM2e); as a100-40 otherwise"),
    "h100": GPU("NVIDIA H100 80GB SXM5", 80, 989.4, 494.7, 3.35, 470,
                "NVIDIA H100 datasheet, via glennklockwood.com/garden/processors/h100 (989.4 TFLOPS bf16 dense, "
                "494.7 TF32, 3.35 TB/s HBM3, NVLink 4 900 GB/s); nccl-tests busbw 460-480 GB/s on 8 x H100 SXM5"),
    "h200": GPU("NVIDIA H200 141GB SXM", 141, 989.4, 494.7, 4.8, 470,
                "NVIDIA H200 datasheet (the H100's compute and NVLink, 141 GB HBM3e at 4.8 TB/s); busbw as h100"),
}
MATMUL_EFFICIENCY = (0.25, 0.45)  # share of the dense peak the matmuls reach: (pessimistic, optimistic)
ADAMW_BYTES = 28  # per fp32 element: read weight, gradient, two moments; write weight and two moments


@dataclass(frozen=True)
class StepTime:
    matmul_s: tuple[float, float]  # (optimistic, pessimistic)
    tables_s: float
    comm_s: float

    @property
    def step_s(self) -> tuple[float, float]:
        """(fastest, slowest): communication all hidden behind compute, or none of it."""
        fast = max(self.matmul_s[0] + self.tables_s, self.comm_s)
        return fast, self.matmul_s[1] + self.tables_s + self.comm_s


def step_time(model: Transformer, ex: Execution, train_flops_per_token: int, gpu: GPU) -> StepTime:
    """The time of one optimizer step of ``model`` run as ``ex`` on ``ex.world`` GPUs of kind ``gpu``."""
    tokens = ex.tokens * ex.accumulate  # this GPU's tokens per step
    peak = (gpu.bf16_tflops if ex.bytes.autocast else gpu.tf32_tflops) * 1e12
    flops = train_flops_per_token * tokens
    matmul = (flops / (peak * MATMUL_EFFICIENCY[1]), flops / (peak * MATMUL_EFFICIENCY[0]))
    f = ex.bytes.float_bytes
    # each retrieved row of each table: read forward, read again backward, its gradient read and written. Split by
    # columns, a GPU touches 1/M of each row for M times the tokens: the same bytes.
    table_bytes = tokens * sum(len(m.expert_tables()) * m.rows_per_token() * m.d_model * f * 4 for m in model.mixers)
    held = held_elements(model, ex)  # this GPU's share of every parameter, as the memory model counts it
    optimizer_bytes = held * ADAMW_BYTES * f / 4
    tables_s = (table_bytes + optimizer_bytes) / (gpu.hbm_tbs * 1e12)
    comm_s = sum(comm_bytes(model, ex).values()) / (gpu.nccl_busbw_gbs * 1e9)
    return StepTime(matmul_s=matmul, tables_s=tables_s, comm_s=comm_s)


def constants_table() -> str:
    """The cards ``--gpu`` knows, as a markdown table (docs/scale-out.md's, written by python -m peerlab.doc_tables)."""
    lines = ["| `--gpu` | card | memory GiB | bf16 / TF32 dense TFLOPS | HBM TB/s | NCCL bus GB/s (8 GPUs) | sources |",
             "|---|---|---|---|---|---|---|"]
    for key, g in GPUS.items():
        lines.append(f"| `{key}` | {g.name} | {g.memory_gib:g} | {g.bf16_tflops:g} / {g.tf32_tflops:g} | "
                     f"{g.hbm_tbs:g} | {g.nccl_busbw_gbs:g} | {g.source} |")
    lo, hi = MATMUL_EFFICIENCY
    lines.append(f"\nMatmul efficiency assumed: {lo:.0%} to {hi:.0%} of the dense peak; AdamW: {ADAMW_BYTES} bytes "
                 "per fp32 element per step.")
    return "\n".join(lines)
