"""Plan a run or a sweep before launching it: per point the model's size, the budget's steps and tokens, the peak
memory and the bytes sent per device per step, with the smallest change that makes a point fit; with ``--gpu``, the
step time and the budget's GPU-hours on that card.

    python -m peerlab.plan layer=peer model=d12 budget=6e18 trainer=ddp trainer.devices=8 --device-gb 40
    python -m peerlab.plan -cd experiments -cn isoflop_paper --device-gb 40        # every point of a sweep file
    python -m peerlab.plan -cd experiments -cn isoflop_paper --json                # a list of objects, one per point
    python -m peerlab.plan -cd experiments -cn isoflop_paper --gpu a100-40         # time and GPU-hours, estimated

It takes ``train.py``'s arguments (a sweep file, sweeps on the command line) and composes each point exactly as
``train.py -m`` would; nothing is trained and nothing is allocated (models are built on the meta device). Memory
is :mod:`peerlab.parallel.memory`'s model for CUDA unless ``trainer.accelerator=cpu`` (or ``--device cpu``), traffic
:mod:`peerlab.parallel.traffic`'s, time :mod:`peerlab.parallel.step_time`'s (an estimate until a card is measured).
A point fits when its peak plus the CUDA context and NCCL's buffers (:mod:`peerlab.parallel.cuda_overhead`, measured
figures with their sources) stays under 90% of ``--device-gb`` (GiB; default: the ``--gpu`` card's, the visible
GPU's memory, else 80): the rest is left for the caching allocator's fragmentation. For a point that does not fit, the first of these that does is shown, as overrides to add: the
chunked LM loss; expert tables split by columns (``trainer.memory_parallel``, the size that moves fewest bytes
first); a smaller micro-batch with more accumulation (the same tokens per step); FSDP (``trainer=fsdp``); activation
checkpointing; their combinations.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig

from peerlab.builders import build_model
from peerlab.config import ConfigError, human_count, precision_name, validate, written_as
from peerlab.flops import BudgetTooSmall, flops_breakdown, plan_budget, tokens_per_step
from peerlab.parallel import cuda_overhead, micro_batch
from peerlab.parallel.distributed import world_size
from peerlab.parallel.memory import Estimate, Execution
from peerlab.parallel.memory import estimate as memory_estimate
from peerlab.parallel.memory_parallel import AUTO, choose, ranked
from peerlab.parallel.step_time import GPU, GPUS, step_time
from peerlab.parallel.traffic import comm_bytes

log = logging.getLogger(__name__)
GIB = 2**30
GB = 1e9  # traffic is given in decimal gigabytes, as link speeds are
HEADROOM = 0.9  # a point fits when its peak is at most this share of the device
GPT2_VOCAB = 50257
DEFAULT_DEVICE_GIB = 80.0
CHUNK_TOKENS = 8192  # the chunked loss a suggestion turns on


def vocab_size(cfg: DictConfig) -> int:
    """The vocabulary the run will have: GPT-2's, or the BPE's configured size (its upper bound)."""
    return GPT2_VOCAB if cfg.tokenizer.kind == "gpt2" else int(cfg.tokenizer.vocab_size)


def device_type(cfg: DictConfig, for_a_gpu: bool = False) -> str:
    """Where the point runs: ``trainer.accelerator`` when it names one; ``auto`` is a GPU when one is visible here or
    the plan is for a card (``--device-gb``), else this machine's CPU, as Lightning would choose."""
    accelerator = cfg.trainer.accelerator
    if accelerator in ("cpu", "gpu", "cuda"):
        return "cpu" if accelerator == "cpu" else "cuda"
    return "cuda" if for_a_gpu or torch.cuda.is_available() else "cpu"


def execution(cfg: DictConfig, device: str, world: int, model=None) -> Execution:
    """How ``cfg`` runs on ``world`` devices of ``device``; ``trainer.memory_parallel=auto`` is settled for ``model``
    (the meta model: :func:`peerlab.parallel.memory_parallel.choose`)."""
    tr = cfg.trainer
    strategy = "fsdp" if tr.strategy == "fsdp" else ("ddp" if world > 1 else "single")
    precision = precision_name(tr.precision)
    ex = Execution(device_type=device, precision=precision, strategy=strategy, world=world,
                   micro_batch=int(cfg.data.batch_size), seq_len=int(cfg.data.seq_len),
                   accumulate=int(tr.accumulate_grad_batches),
                   activation_checkpointing=bool(tr.get("activation_checkpointing", False)),
                   loss_chunk_tokens=int(tr.get("loss_chunk_tokens", 0)))
    setting = tr.get("memory_parallel", 1)
    if setting == AUTO:
        return replace(ex, memory_parallel=choose(model if model is not None else _meta_model(cfg), ex))
    return replace(ex, memory_parallel=int(setting))


def prepare(model, ex: Execution) -> None:
    """Settle backend-dependent gradients as the run's process group will (NCCL on CUDA, gloo on the CPU)."""
    backend = None if ex.world == 1 and ex.strategy != "fsdp" else ("nccl" if ex.device_type == "cuda" else "gloo")
    for mixer in model.mixers:
        mixer.prepare_for_backend(sharded=ex.strategy == "fsdp", group=(backend, ex.world))


def estimate(model, ex: Execution) -> Estimate:
    prepare(model, ex)
    return memory_estimate(model, ex)


@dataclass(frozen=True)
class Change:
    """Overrides that change how a point runs, and the estimate under them."""

    overrides: tuple[str, ...]
    estimate: Estimate
    execution: Execution | None = None


def _candidates(ex: Execution, splits: list[int] = ()) -> list[tuple[tuple[str, ...], Execution]]:
    """Changes in the order they are tried: the cheapest first (the chunked loss costs nothing; a smaller micro-batch
    costs some throughput; FSDP costs communication; checkpointing costs a third more compute). ``splits``: the
    memory-parallel sizes of a model with expert tables, fewest bytes first; each is tried first of all (after the
    free chunked loss), since it both holds less and moves less than gathering the tables, whatever the micro-batch."""
    out = []
    base, base_args = ex, ()
    if not ex.chunked_loss and ex.tokens > CHUNK_TOKENS:
        base = replace(ex, loss_chunk_tokens=CHUNK_TOKENS)
        base_args = (f"trainer.loss_chunk_tokens={CHUNK_TOKENS}",)
        out.append((base_args, base))
    micro = [m for m in range(ex.micro_batch - 1, 0, -1) if ex.micro_batch % m == 0]

    def with_micro(args, e):
        yield args, e
        for m in micro:
            acc = ex.accumulate * ex.micro_batch // m
            yield (*args, f"data.batch_size={m}", f"trainer.accumulate_grad_batches={acc}"), replace(e, micro_batch=m, accumulate=acc)

    fsdp_args = () if ex.strategy == "fsdp" else ("trainer=fsdp",)
    split = [(fsdp_args + (f"trainer.memory_parallel={m}",), m) for m in splits if m != ex.memory_parallel and m > 1]
    for args, m in split:  # tables split: less held and less moved, at the same micro-batch
        out += with_micro((*base_args, *args), replace(base, strategy="fsdp", memory_parallel=m))
    out += list(with_micro(base_args, base))[1:]
    sharded = list(split)
    if ex.strategy != "fsdp" and ex.world > 1:
        sharded.append((fsdp_args, 1))
        out += with_micro((*base_args, *fsdp_args), replace(base, strategy="fsdp", memory_parallel=1))
    if not ex.activation_checkpointing:
        ac = ("trainer.activation_checkpointing=true",)
        out += with_micro((*base_args, *ac), replace(base, activation_checkpointing=True))
        for args, m in sharded:
            out += with_micro((*base_args, *args, *ac), replace(base, strategy="fsdp", memory_parallel=m,
                                                               activation_checkpointing=True))
    return out


def what_fits(build, ex: Execution, limit: float, variants=(), outside=None) -> tuple[Change | None, Change | None]:
    """The first change (in :func:`_candidates`' order) whose peak plus ``outside(execution)`` (bytes outside
    PyTorch's allocator; default :func:`peerlab.parallel.cuda_overhead.of`) is at most ``limit`` bytes, and the
    change with the lowest peak of all (what the point needs at least). ``build()`` makes the model on the meta
    device; ``variants``, ``(overrides, build)`` of other models (PEER's chunked path), are tried after every change
    of how the step runs has failed, alone and then with each of those changes."""
    outside = outside or cuda_overhead.total
    lowest = None
    model = build()
    splits = ranked(model, ex) if ex.world > 1 and any(m.expert_tables() for m in model.mixers) else []
    for model_args, make in (((), build), *variants):
        for args, candidate in ([((), ex)] if model_args else []) + _candidates(ex, splits):
            est = estimate(make(), candidate)
            change = Change((*model_args, *args), est, candidate)
            if est.peak + outside(candidate) <= limit:
                return change, change
            if lowest is None or est.peak < lowest.estimate.peak:
                lowest = change
    return None, lowest


def model_variants(cfg: DictConfig, device: str) -> list:
    """Models a suggestion may switch to: PEER's chunked path on CUDA (its Triton kernels keep two buffers of the
    used rows' sums; the chunked path, slower, keeps one)."""
    from omegaconf import OmegaConf

    if device != "cuda" or cfg.layer.get("impl") not in ("auto", "triton"):
        return []
    chunked = OmegaConf.merge(cfg, {"layer": {"impl": "chunked"}})
    return [(("layer.impl=chunked",), lambda: _meta_model(chunked))]


def _meta_model(cfg: DictConfig):
    with torch.device("meta"):
        return build_model(cfg.model, cfg.layer, vocab_size(cfg), cfg.data.seq_len)


def gib(x: float) -> float:
    return x / GIB


def gb(x: float) -> str:
    """GiB with three significant digits below 10 (a tiny model's 0.0123, not 0.0), one decimal above."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def plan_point(cfg: DictConfig, overrides: list[str], device_gib: float, device: str | None = None,
               for_a_gpu: bool = False, gpu: GPU | None = None) -> dict:
    """One row of the plan: size, budget, memory per device, traffic, whether it fits and what would; with ``gpu``,
    the step time and the budget's GPU-hours on that card (``peerlab.parallel.step_time``)."""
    validate(cfg)
    device = device or device_type(cfg, for_a_gpu)
    world = world_size(cfg.trainer)  # devices x nodes; "auto" counts the GPUs visible here (one without)
    limit = HEADROOM * device_gib * GIB
    auto_micro = micro_batch.is_auto(cfg)
    try:
        cfg = micro_batch.settle(cfg, world, device, limit)  # data.batch_size=auto: what fits
    except micro_batch.NothingFits:  # shown as a point that does not fit, with what would
        cfg = micro_batch.with_micro_batch(cfg, 1, micro_batch.per_device_sequences(cfg, world))
    model = _meta_model(cfg)
    ex = execution(cfg, device, world, model)
    flops = flops_breakdown(model)
    step_tokens = tokens_per_step(ex.micro_batch, ex.seq_len, ex.accumulate, world)
    row: dict = {"overrides": overrides, "params": model.num_params(), "params_active": model.active_params(),
                 "flops_per_token": flops.train, "strategy": ex.strategy, "world": world, "precision": ex.precision,
                 "micro_batch": ex.micro_batch, "micro_batch_auto": auto_micro, "accumulate": ex.accumulate, "tokens_per_step": step_tokens,
                 "activation_checkpointing": ex.activation_checkpointing, "loss_chunk_tokens": ex.loss_chunk_tokens,
                 "memory_parallel": ex.memory_parallel, "device": device, "device_gb": device_gib}
    try:
        budget = plan_budget(float(cfg.budget), flops.train, step_tokens, cfg.min_steps)
        row.update(steps=budget.max_steps, tokens=budget.tokens, flops=budget.flops)
    except BudgetTooSmall as exc:
        row.update(steps=None, tokens=None, flops=None, error=str(exc))
    est = estimate(model, ex)
    comm = comm_bytes(model, ex)
    row.update(comm_gb_per_step=sum(comm.values()) / GB, comm_gb={k: v / GB for k, v in comm.items()})
    if gpu is not None and device == "cuda":
        timing = step_time(model, ex, flops.train, gpu)
        fast, slow = timing.step_s
        row.update(gpu=gpu.name, step_s=[fast, slow], tokens_per_s=[step_tokens / slow, step_tokens / fast],
                   step_parts_s={"matmuls": list(timing.matmul_s), "tables and optimizer": timing.tables_s,
                                 "communication": timing.comm_s})
        if row.get("steps"):
            row["gpu_hours"] = [row["steps"] * t * world / 3600 for t in (fast, slow)]
    outside = cuda_overhead.of(ex)
    row.update(estimate_gb=gib(est.peak), states_gb=gib(est.model_states), activations_gb=gib(est.activations),
               transients_gb=gib(est.transients), phase=est.phase, overhead_gb=gib(sum(outside.values())),
               overhead={k: gib(v) for k, v in outside.items()}, fits=est.peak + sum(outside.values()) <= limit,
               notes=list(est.notes))
    row["suggestion"] = None
    if not row["fits"]:
        change, lowest = what_fits(lambda: _meta_model(cfg), ex, limit, model_variants(cfg, device))
        if change is not None:
            row["suggestion"] = {"overrides": list(change.overrides), "estimate_gb": gib(change.estimate.peak),
                                 "comm_gb_per_step": sum(comm_bytes(model, change.execution).values()) / GB}
        else:
            row["needs_gb"] = gib(lowest.estimate.peak + cuda_overhead.total(lowest.execution)) / HEADROOM
            row["lowest"] = {"overrides": list(lowest.overrides), "estimate_gb": gib(lowest.estimate.peak)}
    return row


def check_run(build, cfg: DictConfig, world: int, cuda: bool) -> tuple[Estimate, Execution]:
    """A training run's own plan, logged at its start, and how it runs (``trainer.memory_parallel=auto`` settled). On
    CUDA (``trainer.check_memory``) a run whose planned peak exceeds the GPU is refused before anything is
    allocated, in one line that names what would fit."""
    model = build()
    ex = execution(cfg, "cuda" if cuda else "cpu", world, model)
    est = estimate(model, ex)
    log.info("memory: planned peak %.3g GiB per device (model states %.3g, activations %.3g, transients %.3g, at "
             "%s; python -m peerlab.plan)", gib(est.peak), gib(est.model_states), gib(est.activations),
             gib(est.transients), est.phase)
    if world > 1:
        log.info("communication: about %.3g GB sent per device per step%s", sum(comm_bytes(model, ex).values()) / GB,
                 f"; expert tables split by columns over {ex.memory_parallel} ranks" if ex.memory_parallel > 1 else "")
    if cuda and cfg.trainer.get("check_memory", True):
        free, total = torch.cuda.mem_get_info()  # what this process can still have, not the card's size
        limit = HEADROOM * free  # the same threshold as the plan's "fits"
        # this process's CUDA context exists now (free memory excludes it); NCCL's buffers come at the first collective
        nccl = lambda e: sum(v for k, v in cuda_overhead.of(e).items() if k != "CUDA context")  # noqa: E731
        if est.peak + nccl(ex) > limit:
            change, _ = what_fits(build, ex, limit, outside=nccl)
            fix = (f"add {' '.join(change.overrides)} ({gib(change.estimate.peak):.3g} GiB)" if change else
                   "no setting of micro-batch, FSDP and activation checkpointing fits it")
            raise ConfigError(f"trainer: this run needs about {gib(est.peak + nccl(ex)):.3g} GiB per GPU, more than "
                              f"{HEADROOM:.0%} of the {gib(free):.3g} GiB free of {gib(total):.3g} GiB on "
                              f"{torch.cuda.get_device_name()}; {fix}; or trainer.check_memory=false to try anyway")
    return est, ex


def verdict(row: dict) -> str:
    if row["fits"]:
        return "fits"
    if row["suggestion"]:
        s = row["suggestion"]
        return f"add {' '.join(s['overrides'])} ({gb(s['estimate_gb'])})"
    low = row["lowest"]
    return f"does not fit: at least {row['needs_gb']:.0f} GiB with {' '.join(low['overrides'])} ({gb(low['estimate_gb'])})"


def timing_cells(row: dict) -> str:
    """``step s | GPU-hours | `` cells: each a range, communication hidden or not."""
    if "step_s" not in row:
        return "- | - | "
    step = "{:.3g}-{:.3g}".format(*row["step_s"])
    hours = "{:,.0f}-{:,.0f}".format(*row["gpu_hours"]) if row.get("gpu_hours") else "-"
    return f"{step} | {hours} | "


def table(rows: list[dict]) -> str:
    """A markdown table, one row per point, GiB per device."""
    timed = any("step_s" in r for r in rows)
    head = ("| point | params (active) | steps | tokens | FLOPs | strategy | micro x acc | states | activations "
            "| transients | peak GiB | + CUDA, NCCL | comm GB/step | " + ("step s | GPU-hours | " if timed else "")
            + "with 10% headroom |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        name = " ".join(written_as(o) for o in r["overrides"]) or "(defaults)"
        steps = f"{r['steps']:,}" if r.get("steps") else "budget too small"
        tokens = f"{r['tokens']:.3g}" if r.get("tokens") else "-"
        flops = f"{r['flops']:.3g}" if r.get("flops") else "-"
        strategy = (f"{r['strategy']} x{r['world']}" + (f" M{r['memory_parallel']}" if r["memory_parallel"] > 1 else "")
                    + (" +ckpt" if r["activation_checkpointing"] else ""))
        lines.append(f"| {name} | {human_count(r['params'])} ({human_count(r['params_active'])}) | {steps} | {tokens} | "
                     f"{flops} | {strategy} | {r['micro_batch']} x {r['accumulate']}{' (auto)' if r.get('micro_batch_auto') else ''} | {gb(r['states_gb'])} | "
                     f"{gb(r['activations_gb'])} | {gb(r['transients_gb'])} | {gb(r['estimate_gb'])} | "
                     f"{gb(r['overhead_gb']) if r['overhead_gb'] else '-'} | "
                     f"{gb(r['comm_gb_per_step'])} | " + (timing_cells(r) if timed else "") + f"{verdict(r)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from peerlab.cli import ArgumentParser, fail
    from peerlab.errors import USER_ERRORS
    from peerlab.overrides import check_group_overrides
    from peerlab.sweeps.expand import CONFIGS, compose_point, grid

    ap = ArgumentParser(prog="python -m peerlab.plan", description=__doc__.splitlines()[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("-cd", "--config-dir", type=Path, default=CONFIGS, help="folder of the sweep file (as train.py)")
    ap.add_argument("-cn", "--config-name", default="train", help="config or sweep file name (as train.py)")
    ap.add_argument("-m", "--multirun", action="store_true", help="accepted for train.py's command lines; every "
                                                                   "comma list is swept anyway")
    ap.add_argument("--device-gb", type=float, default=None, help="GiB per device (default: the visible GPU's, else 80)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="plan for this device (default: cuda unless "
                                                                             "trainer.accelerator=cpu)")
    ap.add_argument("--gpu", choices=sorted(GPUS), default=None,
                    help="estimate step time and GPU-hours on this card (its memory unless --device-gb); "
                         "constants and sources: docs/scale-out.md, 'Time and cost'")
    ap.add_argument("--json", action="store_true", help="print a JSON list, one object per point")
    ap.add_argument("overrides", nargs="*", help="train.py overrides (key=value, sweeps as a,b,c)")
    args = ap.parse_args(argv)
    if args.device_gb is not None and not args.device_gb > 0:
        fail(f"--device-gb={args.device_gb:g}: must be > 0 (GiB per device)")
    if not (args.config_dir / f"{args.config_name}.yaml").is_file():
        fail(f"-cn {args.config_name}: no {args.config_name}.yaml in {args.config_dir}")
    problem = check_group_overrides(args.overrides, CONFIGS)
    if problem:
        fail(problem)
    gpu = GPUS[args.gpu] if args.gpu else None
    device_gib = args.device_gb or (gpu.memory_gib if gpu else None) or (
        torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() else DEFAULT_DEVICE_GIB)
    try:
        points = grid(args.config_dir, args.config_name, args.overrides)
        swept = {o.split("=")[0] for p in points for o in p} if len(points) > 1 else set()
        rows = []
        for point in points:
            cfg = compose_point(args.config_dir, args.config_name, point)
            shown = [o for o in point if o.split("=")[0] in swept] if swept else point
            rows.append(plan_point(cfg, shown, device_gib, args.device,
                                   for_a_gpu=args.device_gb is not None or gpu is not None, gpu=gpu))
    except (*USER_ERRORS, HydraException, OmegaConfBaseException) as exc:
        fail(str(exc).strip().splitlines()[0])
    if gpu is not None:  # the whole sweep's cost, in every row of --json too
        total = [sum(r["gpu_hours"][i] for r in rows if r.get("gpu_hours")) for i in (0, 1)]
        for r in rows:
            r["sweep_gpu_hours"] = total
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        fitting = sum(r["fits"] for r in rows)
        print(table(rows))
        print(f"\n{fitting} of {len(rows)} point(s) fit {device_gib:g} GiB per device with 10% headroom: peak plus "
              f"the CUDA context and NCCL's buffers (peerlab.parallel.cuda_overhead) under 90% (GiB per device, "
              f"{rows[0]['device'] if rows else 'cuda'}; python -m peerlab.plan --help)")
        if gpu is not None:
            hours = rows[0]["sweep_gpu_hours"] if rows else [0.0, 0.0]
            print(f"on {gpu.name}: {hours[0]:,.0f}-{hours[1]:,.0f} GPU-hours in all, an estimate (step s: "
                  "communication hidden behind compute, or not at all; peerlab.parallel.step_time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
