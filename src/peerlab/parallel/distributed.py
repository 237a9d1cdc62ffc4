"""This process's rank before the Trainer exists, resolved as Lightning resolves it.

Data preparation and the run's log file start before Lightning has chosen its cluster environment, and must
already know whether this process is the node's (or the job's) first. Under ``srun`` each task has
``SLURM_LOCALID`` and ``SLURM_PROCID`` but no ``LOCAL_RANK``; torchrun and Lightning's own launcher set
``LOCAL_RANK``/``RANK``. The order below is Lightning's (``_choose_and_init_cluster_environment``): TorchElastic,
SLURM, LSF, then Lightning's environment variables. MPI (which needs ``mpi4py``) is not consulted.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    LightningEnvironment,
    LSFEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)


def cluster_environment() -> ClusterEnvironment:
    for env_type in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment):
        if env_type.detect():
            return env_type()
    return LightningEnvironment()


def local_rank() -> int:
    """This process's rank on its node: 0 for the one that prepares the node's data."""
    return cluster_environment().local_rank()


def global_rank() -> int:
    """This process's rank in the job: 0 for the one that writes results and logs. Lightning's own launcher gives
    the processes it starts ``LOCAL_RANK`` and ``NODE_RANK`` only (its environment's global rank stays 0 until the
    strategy sets it), so on a single node their global rank is their local rank."""
    env = cluster_environment()
    if isinstance(env, LightningEnvironment) and os.environ.get("NODE_RANK", "0") == "0":
        return env.local_rank()
    return env.global_rank()


def world_size(trainer_cfg: Any) -> int:
    """Processes in the job the ``trainer`` config asks for: devices per node (a count, a list, or ``auto``/-1 for
    every visible GPU, one process on the CPU) times nodes."""
    from omegaconf import OmegaConf

    devices = trainer_cfg.devices
    if isinstance(devices, int) and devices > 0:
        n = devices
    elif isinstance(devices, list | tuple) or OmegaConf.is_list(devices):
        n = len(devices)
    else:  # "auto" / -1: every visible accelerator, or one CPU process
        n = max(1, torch.cuda.device_count()) if trainer_cfg.accelerator in ("auto", "gpu", "cuda") else 1
    return n * trainer_cfg.num_nodes
