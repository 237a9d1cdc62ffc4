"""Sweeps on SLURM: the launcher that checks a grid before submitting it and shows its jobs while it waits
(:mod:`peerlab.sweeps.launcher`), and ``python -m peerlab.sweeps status <sweep dir>`` (:mod:`peerlab.sweeps.status`)."""
