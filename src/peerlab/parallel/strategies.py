"""The distributed strategy a run trains with (``trainer.strategy``), all of them Lightning's own:

- ``auto``: one process (or Lightning's choice for several devices);
- ``ddp``: :class:`~lightning.pytorch.strategies.DDPStrategy` with ``gradient_as_bucket_view``, so each gradient
  lives once, in DDP's all-reduce bucket (without it a second copy of every gradient stays allocated);
- ``fsdp``: :class:`ShardedStrategy`, Lightning's ``ModelParallelStrategy`` (FSDP2, ``fully_shard``) over a
  data-parallel mesh of every process (its default mesh would put them in a tensor-parallel dimension, where
  ``fully_shard`` neither shards nor averages), with checkpoints written atomically and read as data
  (:mod:`peerlab.parallel.sharded_checkpoint`).

How the model is cut into FSDP units is :mod:`peerlab.parallel.fsdp`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from peerlab.checkpointing import check_checkpoint, fsync_file, load_checkpoint_dict
from peerlab.config import FSDP_PRECISIONS, ConfigError, precision_name
from peerlab.parallel import sharded_checkpoint as sc


def build_strategy(trainer_cfg: Any, world: int, memory_parallel: int = 1):
    """The Lightning strategy for ``trainer.strategy`` in a job of ``world`` processes; ``memory_parallel``: the
    settled ``trainer.memory_parallel`` (``auto`` is the plan's choice, ``peerlab.parallel.plan.execution``)."""
    name = trainer_cfg.strategy
    if name == "fsdp":
        precision = precision_name(trainer_cfg.precision)
        if precision not in FSDP_PRECISIONS:
            raise ConfigError(f"trainer.precision={precision!r}: trainer=fsdp takes {', '.join(FSDP_PRECISIONS)}")
        return ShardedStrategy(world, memory_parallel)
    if name == "ddp" or (name == "auto" and world > 1):
        return DDPStrategy(gradient_as_bucket_view=True)
    return "auto"


def strategy_name(strategy) -> str:
    """``trainer.strategy``'s name for what :func:`build_strategy` returned (results.json records it)."""
    if isinstance(strategy, ShardedStrategy):
        return "fsdp"
    return "ddp" if isinstance(strategy, DDPStrategy) else str(strategy)


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 over every process. Checkpoints: sharded folders while training, written to ``.<name>.partial`` and
    moved into place by rank 0 once all ranks have written (:func:`peerlab.parallel.sharded_checkpoint.replace`); inside
    :meth:`consolidated`, one file with the full weights and optimizer state, written by rank 0 the same way."""

    def __init__(self, world: int, memory_parallel: int = 1) -> None:
        super().__init__(data_parallel_size=world, tensor_parallel_size=1, save_distributed_checkpoint=True)
        self.memory_parallel = memory_parallel
        self.tables_mesh = None  # (replica, memory_parallel), when memory_parallel > 1

    def setup_environment(self) -> None:
        super().setup_environment()
        if self.memory_parallel > 1:
            from peerlab.parallel.memory_parallel import build_mesh

            self.tables_mesh = build_mesh(self.world_size, self.memory_parallel, self.root_device.type)

    @contextmanager
    def consolidated(self):
        """Checkpoints saved inside are one full file (every rank takes part in gathering it)."""
        self._save_distributed_checkpoint = False
        try:
            yield
        finally:
            self._save_distributed_checkpoint = True

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        path = Path(self.broadcast(str(filepath)))
        partial = sc.partial_path(path)
        if self.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            sc.remove(partial)
        self.barrier()
        if self._save_distributed_checkpoint:
            from lightning.fabric.strategies.model_parallel import _distributed_checkpoint_save

            state = {"state_dict": checkpoint.pop("state_dict")}
            state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
            _distributed_checkpoint_save(state, partial)
            if self.is_global_zero:
                torch.save(checkpoint, partial / sc.META)
                fsync_file(partial / sc.META)
        elif self.is_global_zero:  # full state dicts were gathered on rank 0 (StateDictOptions(full_state_dict))
            self.checkpoint_io.save_checkpoint(checkpoint, partial)
        self.barrier()
        if self.is_global_zero:
            sc.replace(partial, path)
        self.barrier()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not sc.is_sharded(path):  # a consolidated file: checked as data, then Lightning's full-file path
            check_checkpoint(path, key="resume")
            return super().load_checkpoint(path, weights_only=True)
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        model = self.model
        state = {"state_dict": get_model_state_dict(model)}
        sc.load_into(state, path)
        model.load_state_dict(state["state_dict"], strict=self.lightning_module.strict_loading)
        for i, optimizer in enumerate(self.optimizers):
            optim_state = {f"optimizer_{i}": get_optimizer_state_dict(model, optimizer)}
            sc.load_into(optim_state, path)
            set_optimizer_state_dict(model, optimizer, optim_state_dict=optim_state[f"optimizer_{i}"],
                                     options=StateDictOptions(cpu_offload=True))
        return load_checkpoint_dict(path / sc.META, key="resume")

