"""Checkpoints that survive kills (atomic writes, a ``last.ckpt`` by steps and by minutes, and one on a preemption
signal, see :mod:`peerlab.preemption`), and that load as data, never as code.

A checkpoint is a pickle, and unpickling can call any importable function. Every checkpoint a user points us at
(``eval.py ckpt=...``, a resumed run's ``last.ckpt``) is therefore first scanned for the globals its pickle names,
without executing it, and refused with one line if it names anything beyond torch's ``weights_only`` set and
:data:`ALLOWED_GLOBALS`; it is then loaded with ``weights_only=True``. Our checkpoints hold tensors, numbers,
strings, lists and dicts only (tested for every layer), so the allow-list is empty: a type is added here only when
a real checkpoint of ours is shown to need it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from peerlab.config import ConfigError

log = logging.getLogger(__name__)
LAST = "last.ckpt"
# Types beyond torch's weights_only defaults that a peerlab checkpoint may hold (none so far; see the docstring).
ALLOWED_GLOBALS: tuple[type, ...] = ()


class UnsafeCheckpoint(ConfigError):
    """A checkpoint whose pickle names code outside the allow-list; refused before anything is unpickled."""


def check_checkpoint(path: str | Path, key: str = "ckpt") -> None:
    """Refuse, with one line naming ``key``, a file that is not a readable checkpoint or whose pickle refers to
    globals outside the allow-list. Scans the pickle's opcodes; nothing in it is executed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r}: no such checkpoint file")
    allowed = {f"{t.__module__}.{t.__qualname__}" for t in ALLOWED_GLOBALS}
    try:
        unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if g not in allowed]
    except Exception as exc:  # not a zip of torch.save, truncated, ...
        raise ConfigError(f"{key}={str(path)!r}: not a readable torch checkpoint ({type(exc).__name__})") from None
    if unsafe:
        raise UnsafeCheckpoint(f"{key}={str(path)!r}: refusing to load: its pickle refers to {', '.join(sorted(unsafe))}, "
                               "which a peerlab checkpoint never holds (it could run code)")


def load_checkpoint_dict(path: str | Path, key: str = "ckpt", map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, loaded as data only (:func:`check_checkpoint`, then ``weights_only=True``)."""
    check_checkpoint(path, key)
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(Path(path).expanduser(), map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(f"{key}={str(path)!r}: refusing to load: {first}") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file and rename it into place: a kill mid-write leaves the previous checkpoint intact.
    Loading (resume) goes through :func:`load_checkpoint_dict`: data only."""

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_dict(path, key="resume", map_location=map_location if map_location is not None else "cpu")

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        fsync_file(tmp)
        os.replace(tmp, path)


def fsync_file(path: Path) -> None:
    """Flush a file's bytes to disk before it is renamed into place: a rename can outlive unflushed data."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


class LastCheckpoint(Callback):
    """Keep ``<dir>/last.ckpt`` current: every ``every_steps`` optimizer steps, every ``every_minutes`` minutes,
    on a preemption signal (:class:`~peerlab.preemption.Preemption` calls :meth:`save`) and at the end of training.
    A model whose training loss went non-finite is never saved: its module's ``raise_if_diverged`` raises first."""

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

    def save(self, trainer: L.Trainer, at_batch_start: bool = False) -> None:
        """Write last.ckpt at the current step (once per step). ``at_batch_start``: called from the start of the
        next batch, after the step's row was logged."""
        if trainer.global_step == self._last_step:
            return
        self._at_batch_start = at_batch_start
        try:
            self._write(trainer)
        finally:
            self._at_batch_start = False

    def _write(self, trainer: L.Trainer) -> None:
        check = getattr(trainer.lightning_module, "raise_if_diverged", None)
        if check is not None:
            check()
        self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last_step, self._last_time = trainer.global_step, time.monotonic()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # Saved before the next step rather than after the last one, so that step's logged row is already on disk.
        if batch_idx % trainer.accumulate_grad_batches != 0 or trainer.global_step == 0:
            return
        if trainer.global_step % self.every_steps == 0:
            self.save(trainer, at_batch_start=True)
        elif self._time_due(trainer):
            minutes = (time.monotonic() - self._last_time) / 60
            self.save(trainer, at_batch_start=True)
            log.info("last.ckpt refreshed at step %d (%.3g minutes after the previous save)", trainer.global_step, minutes)

    def _time_due(self, trainer: L.Trainer) -> bool:
        """Whether ``every_minutes`` have passed since the last save, by rank 0's clock: every rank must save at the
        same step (the save is collective under FSDP, and a rank saving alone leaves the others waiting in the next
        collective), so rank 0's decision is broadcast, as Lightning's ModelCheckpoint does with its own timer."""
        if self.every_seconds == float("inf"):
            return False
        due = time.monotonic() - self._last_time >= self.every_seconds
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([int(due)], device=trainer.strategy.root_device)
            torch.distributed.broadcast(flag, src=0)
            due = bool(flag.item())
        return due

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._at_batch_start:
            # On restart Lightning adds one to its logging step counter, assuming the save happened at the end of a
            # batch, before that counter moved on; at the start of the next batch it already has.
            loop = checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]
            loop["_batches_that_stepped"] -= 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)
