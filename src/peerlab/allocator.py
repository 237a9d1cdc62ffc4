"""Keep freed memory in the process instead of handing it back to the kernel (glibc's malloc, Linux).

By default glibc serves large blocks with ``mmap`` and returns them with ``munmap`` on free, and trims the heap top
back to the kernel past 128 KiB; a training step that allocates and frees the same activation- and gradient-sized
blocks every step then pays for every page again as a page fault. Raising the mmap and trim thresholds to 1 GiB
keeps those blocks in malloc's free lists for the next step (glibc builds that refuse a threshold above 32 MiB get
32 MiB, which helps less: a 2048 x 4096 fp32 logits tensor is already 33.5 MB).
Results are unchanged (allocation placement never changes what is computed); only system time drops.
``PEERLAB_MALLOPT=0`` leaves glibc's defaults.

Entry points call :func:`reexec_with_tunables`: glibc reads ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` when the process starts, so the script re-executes itself once with them set (child
processes, DataLoader workers and DDP ranks inherit them). Measured on ``python train.py budget=3.6e12`` (one
thread): 11.2M minor page faults and 18.0 s of system time by default, 0.2M and 0.8-0.9 s with the thresholds, the
same final loss (docs/development.md, "Benchmarks"). :func:`keep_freed_memory` sets the same thresholds with ``mallopt`` inside a running process
(benchmarks); it leaves some faults that the start-up settings do not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
THRESHOLD = 1 << 30  # blocks up to this size come from the heap and stay there once freed; trim past it
FALLBACK_MMAP_THRESHOLD = 32 * 1024 * 1024  # what glibc builds that refuse larger thresholds accept
TUNABLES = {"MALLOC_MMAP_THRESHOLD_": str(THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(THRESHOLD)}


def _enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("PEERLAB_MALLOPT", "1") != "0"


def reexec_with_tunables() -> None:
    """Re-execute this process once with glibc's malloc thresholds in the environment (no-op when they are set,
    when ``PEERLAB_MALLOPT=0``, or off Linux). Call first thing in an entry point's ``__main__``."""
    if not _enabled() or all(key in os.environ for key in TUNABLES):
        return
    for key, value in TUNABLES.items():
        os.environ.setdefault(key, value)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def keep_freed_memory() -> bool:
    """Set both thresholds in this running process; ``True`` when glibc took them (used by the benchmarks, whose
    case processes are not started through an entry point)."""
    if not _enabled():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_set = any(mallopt(M_MMAP_THRESHOLD, value) for value in (THRESHOLD, FALLBACK_MMAP_THRESHOLD))
    return mmap_set and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
