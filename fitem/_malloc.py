"""Process-wide glibc ``malloc`` settings for the CPU path.

Every Gauss-Newton iteration and every rasterization allocates (and frees) tens of
temporaries of 0.1-10 MB. With glibc's default, dynamic thresholds, many of those
blocks are handed back to the kernel when freed and page-faulted in again on the
next allocation: on this project's 2-core machines that was ~2,400 page faults per
512² rasterization, a third of its time, and ~15 % of a whole fit.

:func:`tune_malloc` fixes the two thresholds (``mallopt``) so that blocks up to
32 MB come from the heap and up to 256 MB of freed heap is kept for reuse; the
cost is that the process keeps that much freed memory resident. It is called
once per process by :func:`fitem.fit`, the ``fitem`` command line and the CPU
rasterizer. Set ``FITEM_TUNE_MALLOC=0`` to leave ``malloc`` alone (for example
when the host application tunes it itself, or links jemalloc / tcmalloc). On
platforms without glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

__all__ = ["tune_malloc", "malloc_tuned", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

logger = logging.getLogger(__name__)

#: Blocks up to this size come from the heap (glibc's largest allowed value on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed memory at the top of the heap is returned to the kernel only beyond this size.
TRIM_THRESHOLD = 256 * 1024 * 1024

# mallopt parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_state: dict[str, bool | None] = {"tuned": None}


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` has changed this process's ``malloc`` settings."""
    return bool(_state["tuned"])


def tune_malloc() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` (32 MB) and ``M_TRIM_THRESHOLD`` (256 MB), once per process.

    Returns:
        True when the settings are in effect (now or from an earlier call);
        False when ``FITEM_TUNE_MALLOC=0``, the C library is not glibc, or
        ``mallopt`` refused.

    Example:
        >>> from fitem._malloc import tune_malloc
        >>> isinstance(tune_malloc(), bool)
        True
    """
    if _state["tuned"] is not None:
        return bool(_state["tuned"])
    if os.environ.get("FITEM_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
        _state["tuned"] = False
        logger.debug("malloc left alone (FITEM_TUNE_MALLOC=0)")
        return False
    ok = False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            mallopt = ctypes.CDLL(None).mallopt
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                  TRIM_THRESHOLD))
        except (OSError, AttributeError) as exc:  # no usable libc symbol table
            logger.debug("malloc not tuned: %s", exc)
    _state["tuned"] = ok
    if ok:
        logger.info("glibc malloc tuned for large temporaries (mmap threshold %d MB, trim threshold %d MB; "
                    "FITEM_TUNE_MALLOC=0 disables)", MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    return ok
