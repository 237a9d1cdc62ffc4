"""``run(cfg)``: data -> model -> FLOP budget -> Lightning Trainer -> final evaluation -> ``results.json``."""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from peerlab import __version__, run_folder, saved_settings
from peerlab.builders import build_datamodule, dense_backbone_params
from peerlab.checkpointing import LAST, AtomicCheckpointIO, LastCheckpoint, load_checkpoint_dict
from peerlab.config import sci, validate
from peerlab.console import one_log_per_rank, quiet_third_party
from peerlab.flops import flops_breakdown, plan_budget, tokens_per_step
from peerlab.lit_module import LanguageModel
from peerlab.loggers import build_loggers, finish_loggers, run_folders, sync_command, wandb_summary
from peerlab.parallel import sharded_checkpoint
from peerlab.parallel.distributed import global_rank, world_size
from peerlab.parallel.plan import check_run
from peerlab.parallel.strategies import ShardedStrategy, build_strategy, strategy_name
from peerlab.preemption import Preempted, Preemption
from peerlab.progress import BudgetProgressBar
from peerlab.run_folder import RESULTS, write_results
from peerlab.run_lock import RunLock

log = logging.getLogger(__name__)

def output_dir(cfg: DictConfig) -> Path:
    """Hydra's output directory when running under ``@hydra.main``, else ``out_dir/run_name``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.out_dir).expanduser() / cfg.run_name


def checkpoint_step(path: Path) -> int:
    """The step a resumed run starts from, once the checkpoint and the settings saved in it are checked as data
    (a sharded checkpoint's folder: its metadata's tensor shapes stand for the weights)."""
    if sharded_checkpoint.is_sharded(path):
        ckpt = load_checkpoint_dict(path / sharded_checkpoint.META, key="resume")
        shapes = {name: torch.empty(shape, device="meta")
                  for name, shape in sharded_checkpoint.tensor_shapes(path).items()}
    else:
        ckpt = load_checkpoint_dict(path, key="resume", mmap=True)
        shapes = ckpt.get("state_dict")
    saved_settings.check(ckpt.get("hyper_parameters"), f"resume={str(path)!r}", shapes, ckpt.get("peerlab_config"))
    return int(ckpt["global_step"])


def failure_status(exc: BaseException) -> str:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exc, FloatingPointError):
        return "diverged"
    if isinstance(exc, Preempted | SIGTERMException | KeyboardInterrupt | SystemExit):
        return "interrupted"
    return "failed"


def check_mixer(cfg: DictConfig) -> None:
    """Build the chosen mixer on the meta device: impossible layer sizes, and a memory-parallel size that cannot
    split its tables, fail now, not after data preparation."""
    from peerlab.builders import mixer_factory
    from peerlab.config import model_dims
    from peerlab.parallel.memory_parallel import check_layout

    d_model, n_layer, _ = model_dims(cfg.model)
    with torch.device("meta"):
        mixer = mixer_factory(cfg.layer)(d_model=d_model, n_layer=n_layer)
    check_layout(cfg.trainer.get("memory_parallel", 1), world_size(cfg.trainer), [mixer], d_model)


def set_matmul_precision(setting: str, cuda: bool) -> str | None:
    """Apply ``trainer.matmul_precision``; returns what was set, or None when torch's own setting stands. ``auto``
    takes TF32 ("high") on CUDA, as Lightning advises on every A100/H100, unless the user already chose in torch."""
    if setting == "auto":
        if not cuda or torch.get_float32_matmul_precision() != "highest":
            return None
        setting = "high"
    torch.set_float32_matmul_precision(setting)
    return setting


def log_startup(cfg: DictConfig, run_dir: Path, module: LanguageModel, plan) -> None:
    """The run's facts, each once: where it writes, what it trains, and how the budget becomes steps."""
    model = module.model
    log.info("run dir: %s", run_dir)
    log.info("model: %s, layer %s in block(s) %s | params %.3gM (active %.3gM) | %.3g train FLOPs/token",
             cfg.model.name, cfg.layer.name, model.sparse_blocks or "-", model.num_params() / 1e6,
             model.active_params() / 1e6, module.flops.train)
    log.info("budget: %.4g FLOPs = %d steps x %d tokens (%.4g FLOPs, %.1f%% of the budget)", plan.budget,
             plan.max_steps, plan.tokens_per_step, plan.flops, 100 * plan.flops / plan.budget)


def evaluate(module: LanguageModel, loader) -> tuple[float, dict[str, float]]:
    """Token-averaged loss over a whole split in eval mode, plus the mixers' usage statistics. Every rank scores
    its share of the batches (``data/sharding.py``) and the sums are added up across ranks."""
    model = module.model
    was_training = model.training
    model.eval()
    for mixer in model.mixers:
        mixer.reset_usage()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            loss_sum, n = module.score_batch(x.to(module.device), y.to(module.device))
            total, count = total + loss_sum, count + n
    sums = module.sum_over_ranks(total, count)
    stats = module.usage_stats()
    model.train(was_training)
    return (sums[0] / sums[1]).item(), stats


def settle_micro_batch(cfg: DictConfig, run_dir: Path, cuda: bool) -> DictConfig:
    """``data.batch_size=auto`` made concrete before anything reads it (peerlab.parallel.micro_batch): the choice a
    resumed run's folder recorded, else the largest micro-batch that fits this device."""
    from peerlab.parallel import micro_batch
    from peerlab.parallel.plan import HEADROOM

    world = world_size(cfg.trainer)
    if not micro_batch.is_auto(cfg):
        micro_batch.check_consistent(cfg, world)
        return cfg
    saved = run_folder.saved_config(run_dir) if cfg.resume and run_folder.holds_run(run_dir) else None
    device = "cuda" if cuda else "cpu"
    limit = micro_batch.device_limit(device, max(1, world // int(cfg.trainer.num_nodes)), HEADROOM)
    return micro_batch.settle(cfg, world, device, limit, saved)


def run(cfg: DictConfig) -> dict:
    """Train ``cfg``'s run in its folder, which rank 0 holds against any other process until the run ends."""
    t0 = time.time()
    quiet_third_party()
    rank = global_rank()
    one_log_per_rank(rank)
    validate(cfg)
    run_dir = output_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir, key=f"run_name={cfg.run_name!r}")
    if rank == 0:
        lock.acquire()  # refused in one line while another live process holds the folder
    try:
        return _run_in_folder(cfg, run_dir, rank, t0)
    finally:
        lock.release()


def _run_in_folder(cfg: DictConfig, run_dir: Path, rank: int, t0: float) -> dict:
    check_mixer(cfg)
    cuda = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    cfg = settle_micro_batch(cfg, run_dir, cuda)
    done = run_folder.settle(run_dir, cfg, rank)  # refuses another config; resume=false moves the earlier run aside
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg, progress=cfg.trainer.progress_bar)
    dm.prepare_data()
    data_fingerprint = dm.fingerprint()
    run_folder.check_data(run_dir, cfg, data_fingerprint, rank)  # other data is another run, never "already complete"
    if done is not None:
        message = (f"already complete: {run_dir} (final val loss {done.get('final_val_loss', float('nan')):.4f} after "
                   f"{done.get('steps')} steps); nothing to train. resume=false trains it again, moving this run aside")
        log.info("%s", message)
        if rank == 0:
            print(message, flush=True)
        return done

    set_matmul_precision(cfg.trainer.get("matmul_precision", "auto"), cuda)
    data = cfg.data

    n_procs = world_size(cfg.trainer)
    step_tokens = tokens_per_step(data.batch_size, data.seq_len, cfg.trainer.accumulate_grad_batches, n_procs)
    as_dict = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    module_args = dict(
        model=as_dict(cfg.model), layer=as_dict(cfg.layer), optim=as_dict(cfg.optim), vocab_size=dm.vocab_size,
        seq_len=data.seq_len, tokens_per_step=step_tokens, budget=float(cfg.budget),
    )
    with torch.device("meta"):  # FLOPs, memory and traffic need shapes only, not a copy of (huge) expert tables
        meta = LanguageModel(**module_args, max_steps=1).model
    flops = flops_breakdown(meta)
    plan = plan_budget(float(cfg.budget), flops.train, step_tokens, cfg.min_steps)
    memory, ex = check_run(lambda: meta, cfg, n_procs, cuda)  # refuses, before allocating, what cannot fit the GPU
    torch.manual_seed(cfg.seed)  # initial weights depend on the seed only, not on what data preparation drew
    module = LanguageModel(**module_args, max_steps=plan.max_steps)
    module.configure_execution(cfg.trainer.get("loss_chunk_tokens", 0), cfg.trainer.get("activation_checkpointing", False))
    config = as_dict(cfg)
    module.tokenizer_json = dm.tokenizer.to_str()
    module.run_config = config

    ckpt_dir = run_dir / "checkpoints"
    resume_from = ckpt_dir / LAST
    if rank == 0:
        sharded_checkpoint.recover(resume_from)  # a kill between the renames of a checkpoint swap
    ckpt_path = str(resume_from) if cfg.resume and resume_from.exists() else None
    resume_step = checkpoint_step(resume_from) if ckpt_path else 0
    log_startup(cfg, run_dir, module, plan)
    sizes = {"params/total": module.model.num_params(), "params/active": module.model.active_params(),
             "params/dense_backbone": dense_backbone_params(module.model, cfg.model),
             "flops_per_token/train": module.flops.train}
    loggers = build_loggers(cfg, run_dir, cfg.run_name, config, resume_step=resume_step, rank=rank,
                            group=sweep_group(), tags=(cfg.layer.name, cfg.model.name, sci(float(cfg.budget))),
                            extra_config=sizes)
    tr = cfg.trainer
    strategy = build_strategy(tr, n_procs, ex.memory_parallel)  # trainer.memory_parallel=auto settled by the plan
    sharded = isinstance(strategy, ShardedStrategy)
    last_ckpt = LastCheckpoint(ckpt_dir, tr.ckpt_every_steps, tr.ckpt_every_minutes)
    callbacks = [last_ckpt, Preemption(last_ckpt)]
    best_ckpt = None
    if not sharded:  # a sharded run keeps last.ckpt only: a second full sharded copy at every better validation
        best_ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                                    auto_insert_metric_name=False)
        callbacks.insert(1, best_ckpt)
    if tr.progress_bar:
        callbacks.append(BudgetProgressBar(refresh_steps=tr.log_every_steps))
    trainer = L.Trainer(
        accelerator=tr.accelerator, devices=tr.devices, num_nodes=tr.num_nodes, strategy=strategy,
        precision=tr.precision, max_steps=plan.max_steps, max_epochs=-1,
        accumulate_grad_batches=tr.accumulate_grad_batches, gradient_clip_val=cfg.optim.grad_clip or None,
        val_check_interval=min(tr.val_every_steps, plan.max_steps) * tr.accumulate_grad_batches,
        check_val_every_n_epoch=None, limit_val_batches=None, num_sanity_val_steps=0,
        log_every_n_steps=tr.log_every_steps, logger=loggers, callbacks=callbacks,
        enable_progress_bar=tr.progress_bar, enable_model_summary=False, deterministic=tr.deterministic,
        # no ModelCheckpoint of Lightning's own: last.ckpt is LastCheckpoint's, best.ckpt best_ckpt's (unsharded runs)
        enable_checkpointing=best_ckpt is not None,
        default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,
    )
    log.info("device: %s x %d (%s), precision %s, float32 matmuls %s", trainer.strategy.root_device.type, n_procs,
             trainer.strategy.__class__.__name__, trainer.precision, torch.get_float32_matmul_precision())
    if str(trainer.precision) != str(tr.precision):  # Lightning's choice for what the device has (16 on a CPU: bf16)
        log.warning("trainer.precision=%s runs as %s on %s", tr.precision, trainer.precision,
                    trainer.strategy.root_device.type)
    cores = os.cpu_count() or 1
    if trainer.strategy.root_device.type == "cpu" and n_procs > cores:
        log.warning("trainer.devices=%s: %d CPU processes on %d cores share them, each slower than one alone",
                    tr.devices, n_procs, cores)
    if tr.get("activation_checkpointing", False):
        log.info("activation checkpointing: each block's forward runs again in backward (about a third more block "
                 "compute), which the FLOP budget does not charge")
    if ckpt_path:
        log.info("resuming from %s (step %d of %d)", ckpt_path, resume_step, plan.max_steps)

    results: dict[str, Any] = {
        "status": "running", "run_dir": str(run_dir), "config": config, "budget": float(cfg.budget),
        "params_total": sizes["params/total"], "params_active": sizes["params/active"],
        "params_dense_backbone": sizes["params/dense_backbone"],
        "memory_planned_gib": memory.peak / 2**30, "strategy": strategy_name(strategy),
        "memory_parallel": ex.memory_parallel,
        "flops_per_token_forward": module.flops.forward, "flops_per_token_train": module.flops.train,
        "flops_breakdown": {k: getattr(module.flops, k) for k in ("attention_proj", "attention_mix", "mixers", "lm_head")},
        "tokens_per_step": step_tokens, "max_steps": plan.max_steps, "world_size": n_procs,
        "vocab_size": dm.vocab_size, "tokenizer": dict(cfg.tokenizer), "data": data_fingerprint, "train_tokens_available": dm.split_tokens("train"),
        "val_tokens": dm.split_tokens("val"), "versions": {"peerlab": __version__, "torch": torch.__version__,
                                                           "lightning": L.__version__, "python": platform.python_version()},
    }
    def record_failure(exc: BaseException, stage: str) -> None:
        results.update(status=failure_status(exc), error=f"{type(exc).__name__}: {exc}", failed_in=stage,
                       steps=module.global_step, flops=module.flops_done(), wall_time_s=time.time() - t0)
        if isinstance(exc, Preempted):
            results["preempted"] = exc.as_record()
        if trainer.is_global_zero:
            write_results(run_dir, results)
        wandb_summary(loggers, {"status": results["status"], "steps": results["steps"], "flops": results["flops"]})
        finish_loggers(loggers, "failed")

    t_fit = time.time()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    except BaseException as exc:
        record_failure(exc, "training")
        raise
    fit_time = time.time() - t_fit
    try:  # Ctrl-C here is an interrupted run (exit 130, the rerun evaluates it), never a completed one
        if sharded:  # one file with the full weights and optimizer state, which anything loads as any checkpoint
            log.info("consolidating the sharded checkpoint into one file (rank 0 holds the whole model and optimizer "
                     "state meanwhile): %s", resume_from)
            with strategy.consolidated():
                trainer.save_checkpoint(resume_from, weights_only=False)
        loader = dm.eval_dataloader()
        log.info("final evaluation: the whole validation split, %d batches on this rank", len(loader))
        val_loss, usage = evaluate(module, loader)  # every rank scores its share
    except BaseException as exc:
        record_failure(exc, "final evaluation")
        raise
    if not trainer.is_global_zero:
        return results
    final = {"val/loss": val_loss, "val/ppl": math.exp(min(val_loss, 50.0)), **usage,
             "flops": float(module.flops_done()), "tokens": float(module.tokens_done())}
    for logger in loggers:
        logger.log_metrics({f"final/{k}" if k.startswith("val/") else k: v for k, v in final.items()}, step=module.global_step)
        logger.save()
    wandb_run = next((lg.experiment for lg in loggers if isinstance(lg, WandbLogger) and lg._experiment), None)
    wandb_dir = str(Path(wandb_run.dir).parent) if wandb_run is not None else None
    wandb_dirs = [str(f) for f in run_folders(run_dir, wandb_run.id)] if wandb_run is not None else []
    results.update(
        status="completed", steps=module.global_step, tokens=module.tokens_done(), flops=module.flops_done(),
        epochs=module.tokens_done() / dm.split_tokens("train"), final_val_loss=val_loss,
        final_val_ppl=final["val/ppl"], usage=usage, wall_time_s=time.time() - t0, fit_time_s=fit_time,
        train_tokens_per_s=(module.tokens_done() - module.tokens_done(resume_step)) / fit_time if fit_time > 0 else None,
        resumed_from_step=resume_step if ckpt_path else None, expert_grads=module.expert_grads,
        checkpoints={"last": str(resume_from), "best": (best_ckpt.best_model_path or None) if best_ckpt else None},
        csv=str(run_dir / "csv" / "metrics.csv"), wandb_dir=wandb_dir, wandb_dirs=wandb_dirs,
        wandb_sync=sync_command([Path(d) for d in wandb_dirs]) if wandb_dirs and wandb_run.offline
        else None,
    )
    write_results(run_dir, results)
    wandb_summary(loggers, {k: results[k] for k in SUMMARY_KEYS if k in results})
    finish_loggers(loggers, "success")
    print(summary(results), flush=True)
    return results


def summary(results: dict) -> str:
    lines = [
        f"done: {results['steps']} steps, {results['tokens']:.4g} tokens, {results['flops']:.4g} FLOPs "
        f"({results['epochs']:.2f} epochs), final val loss {results['final_val_loss']:.4f} "
        f"(ppl {results['final_val_ppl']:.2f}) in {results['wall_time_s']:.0f} s",
        f"  results:     {results['run_dir']}/{RESULTS}",
        f"  metrics:     {results['csv']}",
        f"  checkpoints: {results['checkpoints']['last']}"
        + (f" (best: {results['checkpoints']['best']})" if results["checkpoints"].get("best") else ""),
        f"  logs:        {results['run_dir']}/train.log",
    ]
    if results.get("wandb_dir"):
        lines.append(f"  W&B run:     {results['wandb_dir']}")
    if results.get("wandb_sync"):
        lines.append(f"  upload:      {results['wandb_sync']}")
    return "\n".join(lines)


# What W&B's summary holds at the end of a run, beside the final metrics: the run table's and the isoFLOP scatter's
# columns (the dense backbone's parameters are the paper's x-axis).
SUMMARY_KEYS = ("status", "budget", "params_total", "params_active", "params_dense_backbone", "tokens", "steps",
                "flops", "flops_per_token_train", "epochs", "final_val_loss", "final_val_ppl", "world_size",
                "train_tokens_per_s")


def sweep_group() -> str | None:
    """A multirun's W&B group: its sweep folder's name. A single run has none (unless logger.wandb.group is set)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(str(HydraConfig.get().sweep.dir)).name
