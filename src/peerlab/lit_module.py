"""The one LightningModule: next-token loss, optimizer groups and schedule, FLOP/token/usage logging."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
import torch

from peerlab.builders import build_model
from peerlab.flops import flops_breakdown
from peerlab.lm_loss import IGNORE
from peerlab.mixers.sparse_grads import process_group
from peerlab.optim import LazyAdamW, clip_grad_norm
from peerlab.parallel.sparse_allreduce import (
    all_reduce_sparse_mean,
    broadcast_from_rank0,
    ignore_in_ddp,
    sparse_grad_params,
)

log = logging.getLogger(__name__)
# How PEER's tables get gradients (mixers/sparse_grads.py), as results.json and the start-up log name it.
GRAD_NAMES = {True: "sparse row gradients", False: "dense gradients",
              "auto": "sparse row gradients (dense in a step that retrieves all N rows)"}


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float, schedule: str = "cosine"):
    """Linear warmup then cosine decay to ``min_ratio`` at ``total_steps`` (or constant after warmup)."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class LanguageModel(L.LightningModule):
    def __init__(
        self,
        model: dict,
        layer: dict,
        optim: dict,
        vocab_size: int,
        seq_len: int,
        tokens_per_step: int,
        max_steps: int,
        budget: float,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model, layer, vocab_size, seq_len)
        self.optim_cfg = optim
        self.tokens_per_step = tokens_per_step
        self.max_steps = max_steps
        self.budget = budget
        self.flops = flops_breakdown(self.model)
        self.tokenizer_json: str | None = None  # stored with every checkpoint
        self.run_config: dict | None = None  # the full run config (data included), for eval.py
        self._t_last: float | None = None
        self._tok_per_s = 0.0
        self._val_sum = 0.0
        self._val_count = 0
        self.expert_grads: dict[str, str] = {}  # resolved in setup(), once the process group exists
        self._reduced_here: list[torch.nn.Parameter] = []  # sparse-gradient tables DDP leaves to us (setup())
        # (step, loss) of the first non-finite training loss, -1 while there is none. Kept on the device and read
        # at logging steps and before every checkpoint, so that no step waits on a host synchronisation.
        self._first_nonfinite: torch.Tensor | None = None

    def configure_execution(self, loss_chunk_tokens: int = 0, activation_checkpointing: bool = False) -> None:
        """Memory settings that leave the values computed as they are (``trainer.loss_chunk_tokens``,
        ``trainer.activation_checkpointing``); not hyper-parameters, so checkpoints do not depend on them."""
        self.model.loss_chunk_tokens = loss_chunk_tokens
        self.model.set_activation_checkpointing(activation_checkpointing)

    @property
    def sharded(self) -> bool:
        """Trained with ``trainer=fsdp`` (peerlab.parallel.strategies.ShardedStrategy)."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        return self._trainer is not None and isinstance(self._trainer.strategy, ModelParallelStrategy)

    def setup(self, stage: str) -> None:
        # The process group exists now and DDP has not wrapped the model yet: mixers settle backend-dependent
        # gradients (PEER's sparse tables are dense under NCCL).
        for mixer in self.model.mixers:
            mixer.prepare_for_backend(sharded=self.sharded)
        self.expert_grads = {f"block{i}": GRAD_NAMES[m.grad_mode()] for i, m in enumerate(self.model.mixers)
                             if hasattr(m, "grad_mode")}
        if self.expert_grads and self._trainer is not None and self._trainer.is_global_zero:
            log.info("expert tables: %s", ", ".join(sorted(set(self.expert_grads.values()))))
        # Tables with sparse gradients stay out of DDP's reducer: we average them ourselves, before each optimizer
        # step, on the main thread (sparse_allreduce.py says why).
        sparse = sparse_grad_params(self) if process_group()[0] is not None else {}
        if sparse:
            ignore_in_ddp(self, sparse)
        self._reduced_here = list(sparse.values())

    def configure_model(self) -> None:
        """Under ``trainer=fsdp``: cut the model into FSDP units (``peerlab.parallel.fsdp``), once."""
        from peerlab.parallel.fsdp import is_sharded, shard_for_training

        if not self.sharded or is_sharded(self.model):
            return
        strategy = self.trainer.strategy
        shard_for_training(self.model, self.device_mesh["data_parallel"], getattr(strategy, "tables_mesh", None),
                           strategy.root_device.type, str(self.trainer.precision))

    def on_fit_start(self) -> None:
        if self._reduced_here:  # DDP broadcasts rank 0's weights at wrap time, but not those it ignores
            broadcast_from_rank0(self._reduced_here)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Called once per optimizer step, after the last accumulated backward and before gradient clipping.
        if self._reduced_here:
            all_reduce_sparse_mean(self._reduced_here)
        tables_mesh = getattr(self.trainer.strategy, "tables_mesh", None)
        if tables_mesh is not None:  # memory-parallel tables: FSDP left their gradients to us
            from peerlab.parallel.memory_parallel import reduce_table_grads, table_params

            reduce_table_grads(table_params(self.model), tables_mesh, self.trainer.world_size)

    # ------------------------------------------------------------------ progress counters
    def flops_done(self, steps: int | None = None) -> int:
        steps = self.global_step if steps is None else steps
        return steps * self.flops.train * self.tokens_per_step

    def tokens_done(self, steps: int | None = None) -> int:
        steps = self.global_step if steps is None else steps
        return steps * self.tokens_per_step

    # ------------------------------------------------------------------ training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.model.loss(x, y)
        self._note_nonfinite(loss)
        total = loss
        for name, term in self.model.aux_losses().items():
            total = total + term
            self.log(f"train/aux/{name}", term.detach(), on_step=True)
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True)
        return total

    def _note_nonfinite(self, loss: torch.Tensor) -> None:
        if self._first_nonfinite is None or self._first_nonfinite.device != loss.device:
            self._first_nonfinite = torch.tensor([-1.0, 0.0], dtype=torch.float64, device=loss.device)
        first = self._first_nonfinite
        new = (first[0] < 0) & ~torch.isfinite(loss.detach())
        here = torch.stack([torch.full_like(first[0], self.global_step), loss.detach().to(first.dtype)])
        first.copy_(torch.where(new, here, first))

    def raise_if_diverged(self) -> None:
        """Raise :class:`FloatingPointError` naming the first step whose training loss was not finite."""
        if self._first_nonfinite is None:
            return
        step, value = self._first_nonfinite.tolist()
        if step >= 0:
            raise FloatingPointError(f"non-finite training loss ({value}) at step {int(step)}")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps == 0 or self.global_step >= self.max_steps:
            self.raise_if_diverged()
        now = time.perf_counter()
        if self._t_last is not None:
            rate = batch[0].numel() * self.trainer.world_size / (now - self._t_last)
            self._tok_per_s = rate if self._tok_per_s == 0 else 0.9 * self._tok_per_s + 0.1 * rate
        self._t_last = now
        # global_step counts optimizer steps already taken, so these are totals after this step.
        self.log("flops", float(self.flops_done()), on_step=True)
        self.log("tokens", float(self.tokens_done()), on_step=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        self.log("tok/s", self._tok_per_s, on_step=True, prog_bar=True)
        self.log("budget%", 100.0 * self.flops_done() / self.budget, on_step=True, prog_bar=True)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_sum, self._val_count = 0.0, 0
        for mixer in self.model.mixers:
            mixer.reset_usage()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss_sum, count = self.score_batch(*batch)
        self._val_sum += loss_sum
        self._val_count += count

    def score_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """``(summed loss, scored tokens)`` of a validation batch. A padding batch (targets all ``IGNORE``: a rank
        with fewer batches than another, see ``data/sharding.py``) still runs the forward pass, which sharded and
        DDP models need on every rank, but counts nothing, usage statistics included."""
        count = int((y != IGNORE).sum())
        if count == 0:
            with self.model.usage_paused():
                self.model(x)
            return 0.0, 0
        return self.model.loss(x, y).item() * count, count

    def sum_over_ranks(self, loss_sum: float, count: int) -> torch.Tensor:
        """``[summed loss, scored tokens]`` (float64) over the data-parallel ranks, which each scored their own share
        of the batches (``data/sharding.py``); the mixers' usage accumulators are summed over them too."""
        totals = torch.tensor([loss_sum, float(count)], dtype=torch.float64, device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(totals)
            for mixer in self.model.mixers:
                for t in mixer.usage_tensors():
                    torch.distributed.all_reduce(t.to_local() if hasattr(t, "to_local") else t)
        return totals

    def on_validation_epoch_end(self) -> None:
        totals = self.sum_over_ranks(self._val_sum, self._val_count)
        if totals[1] == 0:
            return
        val_loss = (totals[0] / totals[1]).item()
        self.log("val/loss", val_loss, sync_dist=False, prog_bar=True)
        self.log("val/ppl", math.exp(min(val_loss, 50.0)))
        self.log("flops", float(self.flops_done()))
        self.log("tokens", float(self.tokens_done()))
        for name, value in self.usage_stats().items():
            self.log(name, value)

    def usage_stats(self) -> dict[str, float]:
        stats = {}
        for i, mixer in enumerate(self.model.mixers):
            for key, value in mixer.usage_stats().items():
                stats[f"val/{key}" if len(self.model.sparse_blocks) <= 1 else f"val/block{i}/{key}"] = value
        return stats

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        cfg = self.optim_cfg
        special = {name: params for m in self.model.mixers for name, params in m.optimizer_groups().items()}
        special_ids = {id(p) for params in special.values() for p in params}
        decay, no_decay = [], []
        for p in self.model.parameters():
            if id(p) in special_ids or not p.requires_grad:
                continue
            (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": cfg["weight_decay"], "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]
        schedules = ["cosine", "cosine"]
        overrides = cfg.get("groups") or {}
        for name in sorted(special):
            params = list({id(p): p for p in special[name]}.values())
            o = overrides.get(name, {})
            groups.append({"params": params, "weight_decay": o.get("weight_decay", cfg["weight_decay"]),
                           "lr": o.get("lr", cfg["lr"]), "name": name})
            schedules.append(o.get("schedule", "cosine"))
        kept = [(g, s) for g, s in zip(groups, schedules, strict=True) if g["params"]]
        groups, schedules = [g for g, _ in kept], [s for _, s in kept]
        # AdamW; expert tables with sparse (row-wise) gradients update only the rows a batch retrieved.
        optimizer = LazyAdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"])
        warmup = max(1, round(cfg["warmup_fraction"] * self.max_steps)) if cfg["warmup_fraction"] > 0 else 0
        lambdas = [lr_lambda(warmup, self.max_steps, cfg["min_lr_ratio"], s) for s in schedules]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # torch's clip_grad_norm_ rejects sparse gradients (PEER's expert tables); ours coalesces and includes them.
        if gradient_clip_val:
            clip_grad_norm(self.parameters(), gradient_clip_val)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer"] = self.tokenizer_json
        checkpoint["peerlab_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokenizer_json = checkpoint.get("tokenizer")
        self.run_config = checkpoint.get("peerlab_config")
