"""A progress bar for budgeted runs: steps of ``max_steps``, budget spent, tokens, losses, throughput and ETA.

A budgeted run ends at a step count, not an epoch, and may make several passes over its data, so Lightning's
``Epoch 0: 42/93`` bar (with its ``v_num``) says nothing useful. This one reads::

    train  420/930 steps |████▌     | budget 45.2% · 1.08M tok · loss 5.412 · val 5.441 · 2.3k tok/s [00:41<00:50]

Validation runs without a bar of its own; its loss appears as ``val`` once computed. Epochs are reported in the
final summary.
"""

from __future__ import annotations

import sys
from typing import Any

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


class BudgetProgressBar(ProgressBar):
    """One tqdm bar over optimizer steps, refreshed every ``refresh_steps`` steps, on global rank 0 only."""

    def __init__(self, refresh_steps: int = 10) -> None:
        super().__init__()
        self.refresh_steps = max(1, refresh_steps)
        self._enabled = True
        self.bar: tqdm | None = None

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
        self.bar = tqdm(total=trainer.max_steps, initial=trainer.global_step, unit="step",
                        bar_format=BAR_FORMAT, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

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
        if step - self.bar.n >= self.refresh_steps or step >= trainer.max_steps:
            self._refresh(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None and trainer.state.fn == "fit":
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
