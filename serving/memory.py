"""Keeping a worker's memory from creeping up: big buffers go back to the system when freed.

glibc serves allocations above its mmap threshold (128 KiB at first) with mmap, and unmaps them on free.
But each time such a chunk is freed it raises the threshold to the chunk's size (up to 32 MiB), so later
big buffers -- Pillow decodes images in blocks of up to 16 MiB, ONNX Runtime's outputs, request bodies --
come from the heap instead, where freed memory stays mapped and fragments. Under a mutation fuzz of
encoded images a worker grew 116 → 187 MB over 12,000 payloads that way; with the threshold fixed at
1 MiB it held 125-128 MB (`bench/reliability.py` measures it). Setting the threshold explicitly turns the
dynamic adjustment off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

LOG = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def return_big_buffers_to_the_system(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        LOG.debug("no mallopt in the C library: the allocator's mmap threshold stays as it is")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
