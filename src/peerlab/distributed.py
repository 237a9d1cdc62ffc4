"""This process's rank before the Trainer exists, resolved as Lightning resolves it.

Data preparation and the run's log file start before Lightning has chosen its cluster environment, and must
already know whether this process is the node's (or the job's) first. Under ``srun`` each task has
``SLURM_LOCALID`` and ``SLURM_PROCID`` but no ``LOCAL_RANK``; torchrun and Lightning's own launcher set
``LOCAL_RANK``/``RANK``. The order below is Lightning's (``_choose_and_init_cluster_environment``): TorchElastic,
SLURM, LSF, then Lightning's environment variables. MPI (which needs ``mpi4py``) is not consulted.
"""

from __future__ import annotations

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
    """This process's rank in the job: 0 for the one that writes results and logs."""
    return cluster_environment().global_rank()
