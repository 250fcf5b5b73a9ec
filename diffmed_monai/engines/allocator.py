"""Keep freed memory in the process for reuse (glibc ``mallopt``), for training on a CPU.

A CPU training step of the default network allocates and frees about 14 GB of activations at batch 4. By default
glibc serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it on free, so
each step page-faults its activations back in: about 2 million minor faults and 10 s of system time per step on a
2-core CPU. With the heap kept, a step reuses the memory the previous step freed (``docs/benchmarks.md``).
"""

from __future__ import annotations

import ctypes
import logging
import platform

__all__ = ["reuse_freed_memory"]

logger = logging.getLogger(__name__)

#: ``mallopt`` parameters of glibc's ``<malloc.h>``
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def reuse_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse: no ``mmap``-served blocks (``M_MMAP_MAX`` 0), never
    return the heap's top to the system (``M_TRIM_THRESHOLD`` -1).

    Process-wide and for the rest of the process (processes forked later, such as loader workers, inherit it); the
    resident memory then stays at its peak instead of shrinking between steps. Returns ``True`` when applied,
    ``False`` where the C library is not glibc (nothing is changed).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    if applied:
        logger.info("glibc malloc keeps freed memory for reuse (config key `reuse_freed_memory`).")
    return applied
