"""The memory a conversion works on: anonymous private mappings, memfds, and the kernel's counts in
``/proc/meminfo``."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["anonymous_private", "closed_on_error", "meminfo_kib", "new_memfd"]


def anonymous_private(size: int) -> mmap.mmap:
    """A fresh mapping of ``size`` bytes of anonymous private memory (``MAP_PRIVATE | MAP_ANONYMOUS``), untouched."""
    # mmap.mmap(-1, size) alone is MAP_SHARED, which the kernel backs with shmem, not anonymous memory.
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


def new_memfd(size: int, flags: int = 0) -> int:
    """A new close-on-exec memfd of ``size`` bytes (``ftruncate``d, no page allocated); ``flags`` are more
    ``memfd_create`` flags, such as ``os.MFD_HUGETLB``."""
    fd = os.memfd_create("workbench-conversion", os.MFD_CLOEXEC | flags)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def closed_on_error(fd: int) -> Iterator[int]:
    """Yields the file descriptor ``fd`` and closes it if the block raises (it stays open otherwise)."""
    try:
        yield fd
    except BaseException:
        os.close(fd)
        raise


def meminfo_kib(field: str) -> int:
    """The value of ``field`` in ``/proc/meminfo`` (in KiB for the sizes, a count for ``HugePages_*``), 0 when
    the kernel does not report it."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    return 0
