"""A progress bar for budgeted runs: steps of ``max_steps``, budget spent, tokens, losses, throughput and ETA.

A budgeted run ends at a step count, not an epoch, and may make several passes over its data, so Lightning's
``Epoch 0: 42/93`` bar (with its ``v_num``) says nothing useful. This one reads::

    train  420/930 steps |████▌     | budget 45.2% · 1.08M tok · loss 5.412 · val 5.441 · 2.3k tok/s [00:41<00:50]

Validation runs without a bar of its own; its loss appears as ``val`` once computed. Epochs are reported in the
final summary.

A job log is not a terminal: when stderr is not a tty (SLURM, a pipe, a file) the same facts are printed as one plain
line every ``refresh_steps`` steps instead of carriage-return redraws::

    train 420/930 steps · budget 45.2% · 1.08M tok · loss 5.412 · val 5.441 · 2.3k tok/s · 00:41 elapsed, 00:50 left
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from tqdm.auto import tqdm

# The metrics go in tqdm's ``desc`` field, placed after the bar (``postfix`` would be prefixed with a comma).
BAR_FORMAT = "train {n_fmt}/{total_fmt} steps |{bar:10}| {desc} [{elapsed}<{remaining}]"


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def describe(metrics: dict[str, Any], tokens: float) -> str:
    """The bar's postfix from the logged metrics (``budget%``, ``train/loss``, ``val/loss``, ``tok/s``)."""
    parts = []
    if "budget%" in metrics:
        parts.append(f"budget {float(metrics['budget%']):.1f}%")
    parts.append(f"{_si(tokens)} tok")
    if "train/loss" in metrics:
        parts.append(f"loss {float(metrics['train/loss']):.3f}")
    if "val/loss" in metrics:
        parts.append(f"val {float(metrics['val/loss']):.3f}")
    if "tok/s" in metrics and float(metrics["tok/s"]) > 0:
        parts.append(f"{_si(float(metrics['tok/s']))} tok/s")
    return " · ".join(parts)


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m:02d}:{s:02d}"


class PlainProgress:
    """The bar's facts as one line per refresh, for logs that are not terminals."""

    def __init__(self, total: int, initial: int, stream: TextIO) -> None:
        self.total, self.n, self.stream = total, initial, stream
        self._start_n, self._t0 = initial, time.monotonic()
        self._last_line = ""

    def set_description_str(self, desc: str, refresh: bool = True) -> None:
        elapsed = time.monotonic() - self._t0
        done = self.n - self._start_n
        left = elapsed / done * (self.total - self.n) if done > 0 else None
        line = (f"train {self.n}/{self.total} steps · {desc} · {_clock(elapsed)} elapsed"
                + (f", {_clock(left)} left" if left is not None else ""))
        if line.split(" · ")[:-1] != self._last_line.split(" · ")[:-1]:  # the same step twice prints once
            print(line, file=self.stream, flush=True)
        self._last_line = line

    def close(self) -> None:
        pass


class BudgetProgressBar(ProgressBar):
    """One tqdm bar over optimizer steps (plain lines when stderr is not a terminal), refreshed every
    ``refresh_steps`` steps, on global rank 0 only."""

    def __init__(self, refresh_steps: int = 10, stream: TextIO | None = None) -> None:
        super().__init__()
        self.refresh_steps = max(1, refresh_steps)
        self.stream = stream
        self._enabled = True
        self.bar: tqdm | PlainProgress | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.is_enabled:
            return
        stream = self.stream or sys.stderr
        if not stream.isatty():
            self.bar = PlainProgress(trainer.max_steps, trainer.global_step, stream)
            return
        self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, unit="step",
                        bar_format=BAR_FORMAT, file=stream, dynamic_ncols=True, smoothing=0.1)

    def _refresh(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.bar is not None
        self.bar.n = trainer.global_step
        metrics = dict(trainer.progress_bar_metrics)
        tokens = 0
        if hasattr(pl_module, "tokens_done"):  # counted at the bar's own step, not at the last logged row
            tokens = pl_module.tokens_done()
            metrics["budget%"] = 100.0 * pl_module.flops_done() / pl_module.budget
        self.bar.set_description_str(describe(metrics, tokens), refresh=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.bar is None:
            return
        step = trainer.global_step
        # the last step's line is on_train_end's, after the last validation: one line, with its loss
        if step - self.bar.n >= self.refresh_steps and step < trainer.max_steps:
            self._refresh(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None and trainer.state.fn == "fit" and trainer.global_step < trainer.max_steps:
            self._refresh(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self._refresh(trainer, pl_module)
            self.bar.close()
            self.bar = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
