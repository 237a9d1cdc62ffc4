"""A real training step at full scale, measured without a GPU: torch's fake tensors and torch's own memory tracker.

The step is peerlab's: the model ``train.py`` builds, cut as ``trainer=fsdp`` cuts it
(:func:`peerlab.parallel.fsdp.shard_for_training`, which the LightningModule calls too: the FSDP units, and the
expert tables split by columns when ``trainer.memory_parallel`` is above 1, the group's collectives as in training),
LazyAdamW with the LightningModule's parameter groups, ``accumulate`` micro-batches of ``data.batch_size``
sequences, forward, backward and the optimizer step. It runs in one process on a fake process group of ``world``
ranks (``init_process_group("fake")``: collectives do nothing) under ``FakeTensorMode`` (tensors have shapes and no
storage), inside ``torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker``, which counts every tensor a rank
would hold by category (parameters, gradients, optimizer states, activations, backward temporaries, FSDP's
all-gather and reduce-scatter buffers). A d24 step takes seconds.

What it stands in for, and how:

- **CUDA**: nothing here needs one. Where the step would differ on a GPU it is made to run as it would there:
  the blocks gathered in bfloat16 by FSDP's ``MixedPrecisionPolicy`` under ``bf16-mixed`` (as on CUDA), AdamW's
  fused kernel (CUDA's default; no temporaries). CUDA's autocast is off without CUDA, so the CPU's autocast casts
  the matmuls instead: the same ops run in bfloat16 on both (linear, matmul, attention).
- **Data-dependent shapes**: retrieval's indices have no values on fake tensors, so the number of distinct table
  rows a backward touches is taken to be uniform retrieval's (``RowGroups``; the memory model assumes the same).
- **A tracker artefact**: DTensor (FSDP2's sharded parameters, the split tables) works out each op's output shape
  by running the op on global-shape fake tensors in the active fake mode; the tracker, entered in that same mode,
  counts those as if a rank held them, whole tables included (3 GiB of "optimizer" memory at d12/pkm). The step
  gives DTensor a fake mode of its own (:func:`_own_propagation_mode`), which the tracker leaves out, as it does
  in eager mode.

Not measured: the CUDA context, NCCL's buffers and the caching allocator's fragmentation (no CUDA here), the
data loader's batches, gradient clipping's per-tensor norms.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

# the tracker's categories, grouped as the memory model's terms
CATEGORIES = {
    "parameters": ("SHARDED_PARAM", "UNSHARDED_PARAM", "BUFFER"),
    "gradients": ("SHARDED_GRAD", "UNSHARDED_GRAD"),
    "optimizer": ("OPT",),
    "activations": ("ACT", "INP"),
    "backward temporaries": ("TEMP",),
    "FSDP buffers": ("ALL_GATHER", "REDUCE_SCATTER"),
}


@dataclass(frozen=True)
class TrackedStep:
    """The peak of one rank during the step, in bytes, by the tracker's categories."""

    peak: int
    categories: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def grouped(self) -> dict[str, int]:
        return {name: sum(self.categories.get(c, 0) for c in cats) for name, cats in CATEGORIES.items()}


@contextlib.contextmanager
def fake_process_group(world: int):
    """A fake process group of ``world`` ranks, this process rank 0; any existing group is left alone."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("peerlab.parallel.fake_step: a process group already exists in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _own_propagation_mode():
    """Give DTensor's shape propagation a fake mode other than the tracked one (see the module's docstring)."""
    import torch.distributed.tensor._sharding_prop as sharding_prop
    from torch._subclasses.fake_tensor import FakeTensorMode

    own = FakeTensorMode()
    original = sharding_prop.detect_fake_mode
    sharding_prop.detect_fake_mode = lambda *args, **kwargs: own
    try:
        yield
    finally:
        sharding_prop.detect_fake_mode = original


def _autocast(precision: str):
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()


def tracked_step(cfg: DictConfig, world: int, vocab_size: int, memory_parallel: int = 1,
                 fused_adamw: bool = True) -> TrackedStep:
    """Run ``cfg``'s training step (FSDP over ``world`` fake ranks, tables split over ``memory_parallel``) on fake
    tensors and return the tracker's peak. Needs ``trainer=fsdp``: what the grids at scale use. ``fused_adamw``:
    CUDA's fused AdamW kernel (the default there), else the foreach kernels a CPU run takes."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.device_mesh import init_device_mesh

    from peerlab.config import precision_name
    from peerlab.flops import tokens_per_step
    from peerlab.lit_module import LanguageModel
    from peerlab.parallel.fsdp import shard_for_training
    from peerlab.parallel.memory_parallel import build_mesh, reduce_table_grads, table_params

    if cfg.trainer.strategy != "fsdp":
        raise ValueError(f"trainer.strategy={cfg.trainer.strategy!r}: the tracked step runs trainer=fsdp only")
    precision = precision_name(cfg.trainer.precision)
    data, tr = cfg.data, cfg.trainer
    micro, accumulate = int(data.batch_size), int(tr.accumulate_grad_batches)
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    start = time.perf_counter()
    with fake_process_group(world), _own_propagation_mode():
        # meshes outside the fake mode: their set-up reads values
        data_mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data_parallel",))
        tables_mesh = build_mesh(world, memory_parallel, "cpu") if memory_parallel > 1 else None
        with FakeTensorMode():
            module = LanguageModel(plain(cfg.model), plain(cfg.layer), plain(cfg.optim), vocab_size, int(data.seq_len),
                                   tokens_per_step(micro, int(data.seq_len), accumulate, world), 1000, float(cfg.budget))
            module.configure_execution(int(tr.get("loss_chunk_tokens", 0)), bool(tr.get("activation_checkpointing", False)))
            model = module.model
            for mixer in model.mixers:  # as under NCCL: PEER's tables take dense gradients
                mixer.prepare_for_backend(sharded=True, group=("nccl", world))
            tables = shard_for_training(model, data_mesh, tables_mesh, "cuda", precision)  # as on CUDA
            optimizer = module.configure_optimizers()["optimizer"]
            for group in optimizer.param_groups:
                group["fused"] = fused_adamw
            x = torch.randint(0, vocab_size, (micro, int(data.seq_len)))
            y = torch.randint(0, vocab_size, (micro, int(data.seq_len)))
            tracker = FSDPMemTracker(model, optimizer)
            tracker.track_inputs((x, y))
            with tracker:
                # two optimizer steps (the second with AdamW's moments in place), each of up to two micro-batches
                # (the second with gradients already held): every later micro-batch repeats one of these
                for _ in range(2):
                    for _ in range(min(accumulate, 2)):
                        with _autocast(precision):
                            loss = model.loss(x, y)
                            for term in model.aux_losses().values():
                                loss = loss + term
                        loss.backward()
                        tracker.reset_mod_stats()  # the tracker follows one forward and backward at a time
                    if tables:
                        reduce_table_grads(table_params(model), tables_mesh, world)
                    optimizer.step()
                    optimizer.zero_grad()
            snapshot = tracker.get_tracker_snapshot("peak")
    (device_snapshot,) = snapshot.values()
    categories = {str(k).rsplit(".", 1)[-1]: int(v) for k, v in device_snapshot.items() if str(k) != "Total"}
    return TrackedStep(peak=int(device_snapshot["Total"]), categories=categories,
                       seconds=time.perf_counter() - start)
