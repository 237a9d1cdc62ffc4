"""Checkpoints that survive kills: atomic writes, a ``last.ckpt`` by steps and by minutes, and one on SIGTERM."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file and rename it into place: a kill mid-write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)


class LastCheckpoint(Callback):
    """Keep ``<dir>/last.ckpt`` current: every ``every_steps`` optimizer steps, every ``every_minutes`` minutes,
    when SIGTERM arrives (SLURM preemption: saved before Lightning stops the loop) and at the end of training."""

    def __init__(self, dirpath: Path, every_steps: int, every_minutes: float) -> None:
        self.dirpath = Path(dirpath)
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes > 0 else float("inf")
        self._last_time = time.monotonic()
        self._last_step = -1
        self._at_batch_start = False

    @property
    def path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: L.Trainer) -> None:
        if trainer.global_step == self._last_step:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last_step, self._last_time = trainer.global_step, time.monotonic()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # Saved before the next step rather than after the last one, so that step's logged row is already on disk.
        at_step_boundary = batch_idx % trainer.accumulate_grad_batches == 0
        due = trainer.global_step % self.every_steps == 0 or time.monotonic() - self._last_time >= self.every_seconds
        if at_step_boundary and due and trainer.global_step > 0:
            self._at_batch_start = True
            try:
                self.save(trainer)
            finally:
                self._at_batch_start = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._at_batch_start:
            # On restart Lightning adds one to its logging step counter, assuming the save happened at the end of a
            # batch, before that counter moved on; at the start of the next batch it already has.
            loop = checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]
            loop["_batches_that_stepped"] -= 1

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.received_sigterm:  # Lightning stops before the next batch: save what this step produced
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)
