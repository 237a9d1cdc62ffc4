"""peerlab's SLURM launcher for Hydra (``hydra/launcher=slurm``); the logic lives in :mod:`peerlab.sweeps.launcher`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

from peerlab.sweeps import status
from peerlab.sweeps.launcher import DropSacctBypass, Watcher, partition_limits, request_problem


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        assert self.config is not None and self.hydra_context is not None
        if not self.params.get("gpus_per_node"):
            self.params["gpus_per_node"] = None  # 0 would still be sent as --gpus-per-node=0
        configs = [self.hydra_context.config_loader.load_sweep_config(self.config, list(o)) for o in job_overrides]
        problem = request_problem(self.params, [c.trainer for c in configs], partition_limits(self.params.get("partition")))
        if problem:
            print(f"error: {problem}", file=sys.stderr, flush=True)
            sys.exit(2)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        subdirs = [str(c.hydra.sweep.subdir) for c in configs]
        folder = str(self.params["submitit_folder"])  # a template: <sweep dir>/.submitit/%j
        logging.getLogger("submitit").addFilter(DropSacctBypass())
        watcher = Watcher(sweep_dir, subdirs, folder)
        status.write_manifest(sweep_dir, subdirs, {}, folder)
        watcher.start()
        try:
            with watcher.interruptible():
                return super().launch(job_overrides, initial_job_idx)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt) and not watcher.gave_up:
                raise  # the user's own Ctrl-C: the jobs keep running on SLURM
            # A point failed (submitit raises at the first), or a job died without a result: wait for the others,
            # then one line for the whole sweep.
            watcher.wait_until_idle()
            print(f"error: sweep {sweep_dir}: not every point completed: {watcher.final_summary()}\n"
                  "rerun the same command to resume the points that are not done", file=sys.stderr, flush=True)
            sys.exit(1)
        finally:
            watcher.stop()


