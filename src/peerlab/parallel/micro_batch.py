"""``data.batch_size=auto``: the largest micro-batch that fits, with the step's sequences unchanged.

With ``data.batch_size=auto``, ``data.sequences_per_step`` (over all processes, e.g. the paper's 128) fixes the
optimizer step; each process then runs ``micro x accumulate = sequences_per_step / processes``, and the micro-batch
is the largest divisor of that whose planned peak plus the CUDA context and NCCL's buffers
(:mod:`peerlab.parallel.memory`, :mod:`peerlab.parallel.cuda_overhead`) stays under 90% of the device. Larger
micro-batches run larger matmuls and fewer FSDP gathers per step: the fastest setting that fits.

A micro-batch is also what PEER/PKM's query BatchNorm normalises over and what MoE's expert choice routes within, so
the choice is part of what is trained: it is written into the run's config (``data.batch_size``,
``trainer.accumulate_grad_batches``) and logged; a resumed run takes the choice its folder recorded, whatever the
device it resumes on. The device's size, not its free memory, decides, so that every rank of a job chooses the
same: the card's total memory on CUDA, the machine's memory shared by its processes on the CPU.
"""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig, OmegaConf, open_dict

from peerlab.config import ConfigError

log = logging.getLogger(__name__)
AUTO = "auto"


class NothingFits(ConfigError):
    """Not even one sequence per micro-batch fits the device."""


def per_device_sequences(cfg: DictConfig, world: int) -> int:
    """``data.sequences_per_step / world`` (its value checked by ``peerlab.config.validate``), refused in one line
    unless it divides."""
    total = int(cfg.data.sequences_per_step)
    if total % world:
        raise ConfigError(f"data.sequences_per_step={total}: must be a multiple of the {world} processes, so that each "
                          "runs the same micro-batches")
    return total // world


def check_consistent(cfg: DictConfig, world: int) -> None:
    """With a fixed micro-batch, ``data.sequences_per_step`` (when set) must be what the step is."""
    total = cfg.data.get("sequences_per_step")
    made = int(cfg.data.batch_size) * int(cfg.trainer.accumulate_grad_batches) * world
    if total is not None and total != made:
        raise ConfigError(f"data.sequences_per_step={total}: data.batch_size={cfg.data.batch_size} x "
                          f"trainer.accumulate_grad_batches={cfg.trainer.accumulate_grad_batches} x {world} processes "
                          f"make {made}; set data.batch_size=auto, or make them agree")


def with_micro_batch(cfg: DictConfig, micro: int, accumulate: int) -> DictConfig:
    out = cfg.copy()
    with open_dict(out):
        out.data.batch_size = micro
        out.trainer.accumulate_grad_batches = accumulate
    return out


def choose(cfg: DictConfig, world: int, device: str, limit_bytes: float) -> tuple[int, int, float]:
    """``(micro, accumulate, planned bytes)``: the largest micro-batch whose peak plus what lies outside PyTorch's
    allocator is at most ``limit_bytes``; refused in one line when even one sequence does not fit."""
    from peerlab.parallel import cuda_overhead
    from peerlab.parallel.plan import _meta_model, estimate, execution

    per_device = per_device_sequences(cfg, world)
    model = _meta_model(cfg)
    need = None
    for micro in sorted((m for m in range(1, per_device + 1) if per_device % m == 0), reverse=True):
        ex = execution(with_micro_batch(cfg, micro, per_device // micro), device, world, model)
        need = estimate(model, ex).peak + cuda_overhead.total(ex)
        if need <= limit_bytes:
            return micro, per_device // micro, need
    raise NothingFits(f"data.batch_size=auto: even 1 sequence per micro-batch needs about {need / 2**30:.3g} GiB per "
                      f"device, more than the {limit_bytes / 2**30:.3g} GiB allowed; python -m peerlab.plan says what fits")


def device_limit(device: str, local_processes: int, headroom: float) -> float:
    """Bytes a step may plan for on this machine: ``headroom`` of the card (CUDA) or of the machine's memory shared
    by its processes (CPU). The same on every rank of a job on like machines."""
    import torch

    if device == "cuda":
        return headroom * torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return headroom * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(1, local_processes)


def settle(cfg: DictConfig, world: int, device: str, limit_bytes: float, saved: DictConfig | None = None) -> DictConfig:
    """``cfg`` with ``data.batch_size=auto`` made concrete: the ``saved`` run's choice when it has the same step,
    else :func:`choose`'s. A fixed micro-batch is returned as it is (checked against ``data.sequences_per_step``)."""
    if cfg.data.batch_size != AUTO:
        check_consistent(cfg, world)
        return cfg
    per_device = per_device_sequences(cfg, world)
    if saved is not None and saved.data.get("sequences_per_step") == cfg.data.sequences_per_step \
            and saved.data.get("batch_size") != AUTO:
        micro, accumulate = int(saved.data.batch_size), int(saved.trainer.accumulate_grad_batches)
        if micro * accumulate == per_device:
            log.info("data.batch_size=auto: micro-batch %d x %d accumulated, as this run chose at its start", micro,
                     accumulate)
            return with_micro_batch(cfg, micro, accumulate)
    micro, accumulate, need = choose(cfg, world, device, limit_bytes)
    log.info("data.batch_size=auto: micro-batch %d x %d accumulated per process (%d sequences per step), planned "
             "%.3g GiB of %.3g allowed", micro, accumulate, cfg.data.sequences_per_step, need / 2**30,
             limit_bytes / 2**30)
    return with_micro_batch(cfg, micro, accumulate)


def is_auto(cfg: DictConfig) -> bool:
    return OmegaConf.select(cfg, "data.batch_size") == AUTO
