"""Process-wide performance settings: CPU threads and the C allocator (docs/performance.md).

On Linux, glibc returns every allocation above 32 MB to the kernel when freed and maps fresh, zeroed
pages for the next one; a registration allocates and frees volumes of that size in every iteration,
and those page faults cost more than the arithmetic (measured: local NCC on 2.1 M voxels 0.46 s →
0.12 s per forward + backward once the memory is kept for reuse). :func:`tune_allocator` keeps it.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Optional

__all__ = ["tune_allocator", "set_threads", "add_threads_argument"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.lru_cache(maxsize=1)
def tune_allocator() -> bool:
    """Keep freed memory (up to 1 GiB) for reuse instead of unmapping it; glibc only, once per process.

    Returns whether the allocator was tuned (``False`` elsewhere, or with ``RCREG_NO_MALLOPT=1``).
    """
    if not sys.platform.startswith("linux") or os.environ.get("RCREG_NO_MALLOPT") == "1":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    return all(mallopt(option, value) == 1 for option, value in
               ((_M_MMAP_THRESHOLD, 1 << 29), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 1 << 26)))


def set_threads(threads: Optional[int]) -> None:
    """Use ``threads`` CPU threads in torch and ITK (``None``: leave their defaults)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {threads}")
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--threads N`` option every command shares (see :func:`set_threads`)."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch and ITK (default: theirs, usually every core)")
