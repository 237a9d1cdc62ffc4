"""Preemption that loses no finished step: a signal becomes ``last.ckpt`` at the step reached, then the signal's
own action.

| signal | who sends it | after last.ckpt is written |
|---|---|---|
| SIGUSR2 | submitit (``hydra/launcher=slurm``), ``signal_delay_s`` before the time limit; ``scancel --signal=USR2`` | submitit's handler requeues the job (up to ``max_num_timeout`` times) |
| SIGUSR1 | the Lightning convention ``#SBATCH --signal=USR1@90`` | ``scontrol requeue $SLURM_JOB_ID`` under SLURM; elsewhere exit 138 |
| SIGTERM | ``scancel``, a preemption, a time limit reached without ``--signal`` | exit 143; rerunning the command resumes |
| SIGINT | Ctrl-C | exit 130; rerunning the command resumes. A second Ctrl-C exits at once (the checkpoint being written, if any, is left as it was: writes are atomic) |

A handler only records the signal: a checkpoint written from inside a handler could catch the optimizer halfway
through a step. The write happens at the next safe point, the end of the training or validation batch in flight,
so the saved step is the one the process had reached (validation changes no weight). A step's end is taken at the
start of the next batch, once Lightning has logged that step's row. A signal that arrives while a
checkpoint is being written waits for that write. In a multi-process job the ranks agree on a flag once per
optimizer step (one all-reduce), so every rank stops at the same step and they save together.

The handlers are ours from the start of training to its end, replacing Lightning's (whose SIGTERM exception is
raised inside the validation loop, past the point where a callback can save) and keeping the ones they replaced
(submitit's) to hand over to. Before training starts and during the final evaluation the previous handlers act:
no step would be lost there.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)

REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
CAUGHT = (signal.SIGTERM, signal.SIGINT, *REQUEUE_SIGNALS)


class Preempted(BaseException):
    """Training stopped on a signal after ``last.ckpt`` was written. A ``BaseException``, as ``KeyboardInterrupt``:
    no ``except Exception`` on its way out (Lightning's, Hydra's) may swallow it."""

    def __init__(self, signum: int, received_step: int, saved_step: int, where: str, previous: Any) -> None:
        self.signum, self.received_step, self.saved_step, self.where = signum, received_step, saved_step, where
        self.previous = previous  # the handler ours replaced, to hand over to (submitit's requeue)
        super().__init__(f"{signal.Signals(signum).name} received at step {received_step} ({where}); "
                         f"last.ckpt saved at step {saved_step}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def requeues(self) -> bool:
        return self.signum in REQUEUE_SIGNALS

    def as_record(self) -> dict[str, Any]:
        return {"signal": signal.Signals(self.signum).name, "received_at_step": self.received_step,
                "saved_step": self.saved_step, "during": self.where}

    def _slurm_job(self) -> str | None:
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if array else os.environ.get("SLURM_JOB_ID")

    def next_action(self) -> str:
        """What :meth:`hand_over` will do, for the one line the user sees."""
        if not self.requeues:
            return "rerun the same command to resume"
        if callable(self.previous):
            return "the previous handler (submitit's) requeues the job"
        if self._slurm_job():
            return f"requeueing SLURM job {self._slurm_job()} (scontrol requeue)"
        return "not under SLURM, nothing requeues it: rerun the same command to resume"

    def hand_over(self) -> None:
        """After the checkpoint, the signal's own action. submitit's handler requeues and exits the process."""
        if not self.requeues:
            return
        if callable(self.previous):
            self.previous(self.signum, None)  # submitit: requeue (counting down max_num_timeout), then sys.exit
            return
        job = self._slurm_job()
        if job and int(os.environ.get("SLURM_PROCID", "0")) == 0:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if done.returncode != 0:
                log.error("scontrol requeue %s failed (%s): rerun the same command to resume", job, done.stderr.strip())


class Preemption(Callback):
    """Records SIGTERM/SIGUSR1/SIGUSR2 during training and, at the next safe point, saves through ``last`` (the
    :class:`~peerlab.checkpointing.LastCheckpoint` callback) and raises :class:`Preempted`."""

    def __init__(self, last) -> None:
        self._last = last
        self.signum = 0
        self.received_step = -1
        self._previous: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None

    # ------------------------------------------------------------------ handlers
    def _record(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:  # Ctrl-C twice: the user means now
            os.write(2, b"\ninterrupted again (Ctrl-C): exiting now; last.ckpt is the last one saved\n")
            os._exit(128 + signal.SIGINT)
        if not self.signum:  # the first signal decides what happens
            self.signum = signum
            self.received_step = self._trainer.global_step if self._trainer is not None else -1

    def install(self, trainer: L.Trainer) -> None:
        self._trainer = trainer
        for sig in CAUGHT:
            previous = signal.signal(sig, self._record)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)
        self._previous = {}

    # ------------------------------------------------------------------ safe points
    def _agreed_signal(self, trainer: L.Trainer) -> int:
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return self.signum
        flag = torch.tensor([self.signum], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def _stop_if_signalled(self, trainer: L.Trainer, where: str, collective: bool = True, at_batch_start: bool = False) -> None:
        signum = self._agreed_signal(trainer) if collective else self.signum
        if not signum:
            return
        received = self.received_step if self.signum else trainer.global_step  # another rank's signal
        self._last.save(trainer, at_batch_start=at_batch_start)
        previous = self._previous.get(signum)
        self.restore()
        exc = Preempted(signum, received, trainer.global_step, where, previous)
        log.warning("%s", exc)
        raise exc

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install(trainer)  # after Lightning has registered its own handlers: ours replace them

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0 and trainer.global_step > 0:  # never mid-accumulation
            self._stop_if_signalled(trainer, "training", at_batch_start=True)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # Ranks may hold different numbers of validation batches, so a collective here could hang: one process
        # stops at once, several at the end of validation.
        if trainer.state.fn == "fit" and trainer.world_size == 1:
            self._stop_if_signalled(trainer, "validation", collective=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._previous:
            self._stop_if_signalled(trainer, "validation")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            self._stop_if_signalled(trainer, "the last step")  # the final evaluation waits for the rerun
        finally:
            self.restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore()
