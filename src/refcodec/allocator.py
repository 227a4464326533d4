"""glibc malloc settings for the command line: keep freed memory instead of faulting it in again.

A training step allocates and frees about a gigabyte of activations (a variable-rate ``grm/small``
step at batch 8 and 256-px crops). By default glibc serves blocks above its mmap threshold (at most
32 MiB, and an activation of 64 channels at 128x128 and batch 8 is 32 MiB) with fresh mappings that
it returns to the kernel when they are freed, and it trims the heap when its top is free, so every
step faults its pages in and has the kernel zero them again: about 280,000 minor page faults per step.
``TUNABLES`` serves every block from the heap (``mmap_max=0``), never trims it (trim threshold 16 GiB)
and backs it with transparent huge pages (``hugetlb=1``, glibc 2.35+): after the first steps a step
reuses the memory of the one before, with a handful of page faults. Measured on 2 cores
(``benchmarks/allocator.py``, ``results/bench/allocator*.json``): a step 2.05 -> 1.47 s on one thread
and 1.15 -> 0.79 s on two, for a peak resident memory of 1.30 instead of 1.02 GiB.

glibc reads tunables when a process starts, so :func:`reexec` restarts the process with them once.
The training entry points call it before anything else: ``refcodec train``, ``python -m
refcodec.train`` and ``scripts/continue_training.py``. A ``GLIBC_TUNABLES`` that already sets malloc
is left as the user set it. The other commands of ``refcodec`` set the first two with ``mallopt``
when they start (:func:`configure`; no restart, no huge pages): ``--effort fast`` on kodim01
(quality 3, 2 threads) took 15.9 s instead of 19.6 s. A program that imports refcodec keeps its own
settings.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters (malloc.h)


def glibc() -> bool:
    """Whether this process runs on Linux with glibc."""
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def environment(env: dict[str, str]) -> dict[str, str] | None:
    """``env`` with ``TUNABLES`` added to GLIBC_TUNABLES, or None if it needs no change (malloc already tuned,
    or not Linux with glibc)."""
    current = env.get("GLIBC_TUNABLES", "")
    if not glibc() or "glibc.malloc." in current:
        return None
    return {**env, "GLIBC_TUNABLES": f"{current}:{TUNABLES}" if current else TUNABLES}


def reexec() -> None:
    """Restart this process with the same command line and ``TUNABLES`` (no return), unless it has them."""
    env = environment(dict(os.environ))
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def configure() -> bool:
    """Serve blocks from the heap and never trim it, from now on in this process (``mallopt``); False where
    there is no glibc or the user's GLIBC_TUNABLES already set malloc."""
    if environment(dict(os.environ)) is None:
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
