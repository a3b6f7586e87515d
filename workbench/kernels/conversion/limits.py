"""The machine's limits, against which the conversions are put: the bandwidth of a plain copy between two
prefaulted anonymous buffers (``memcpy_bytes_per_s``) and the rate at which the kernel hands out fresh pages
(``fault_pages_per_s``), from :func:`measure_limits`. A conversion cannot beat the copy unless it moves no bytes at
all, and a conversion into fresh memfd pages pays for the page allocation on top of the copy. The same two rates at
any thread count, and the first touch in transparent huge pages, are :func:`first_touch_seconds` and
:func:`memcpy_seconds` (the host points of the blackout model)."""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable

import numba
import numpy as np

from workbench.kernels.conversion.copy import (
    compile_kernels,
    copy_mapping,
    fill_mapping,
    fill_pattern,
    parallel_copy,
    touch_pages,
    touch_pages_parallel,
)
from workbench.kernels.conversion.memory import anonymous_private, new_memfd
from workbench.kernels.conversion.sources import make_source
from workbench.kernels.memfd_syscalls import MADV_HUGEPAGE, fallocate
from workbench.kernels.pagehash import PAGE_SIZE
from workbench.kernels.threads import numba_threads

__all__ = ["first_touch_seconds", "measure_limits", "memcpy_seconds"]

_PMD_SIZE = 2 << 20  # a transparent huge page


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _touch(mem: mmap.mmap) -> None:
    touch_pages(np.frombuffer(mem, dtype=np.uint8), PAGE_SIZE)


def _anonymous_touch_seconds(size: int) -> float:
    mem = anonymous_private(size)
    try:
        return _seconds(lambda: _touch(mem))
    finally:
        mem.close()


def _memfd_touch_seconds(size: int) -> float:
    fd = new_memfd(size)
    try:
        mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            return _seconds(lambda: _touch(mem))
        finally:
            mem.close()
    finally:
        os.close(fd)


def _memfd_fallocate_seconds(size: int) -> float:
    fd = new_memfd(size)
    try:
        return _seconds(lambda: fallocate(fd, 0, size))
    finally:
        os.close(fd)


def measure_limits(size: int, repeats: int = 3, threads: int = 1) -> dict[str, float]:
    """The machine's limits on ``size`` bytes, best of ``repeats``: copy bandwidth between two prefaulted
    anonymous buffers (numpy, and numba with ``threads``) and the page allocation rate of one thread (first
    touch of fresh anonymous memory, first touch of a fresh memfd mapping, ``fallocate`` of a fresh memfd).

    ``alloc_then_copy_bytes_per_s`` combines two of them: the rate of one thread that allocates each memfd page
    at the ``fallocate`` rate and then copies into it at the memcpy rate, what a conversion into fresh memfd
    pages can expect without huge pages or parallelism."""
    compile_kernels()
    pages = size // PAGE_SIZE
    source, dst = make_source(size), anonymous_private(size)
    try:
        fill_mapping(dst)
        copy_numpy = min(_seconds(lambda: copy_mapping(dst, source.mem, "numpy", 1)) for _ in range(repeats))
        copy_numba = min(_seconds(lambda: copy_mapping(dst, source.mem, "numba", threads)) for _ in range(repeats))
    finally:
        source.close()
        dst.close()
    memcpy_bytes_per_s = size / copy_numpy
    fallocate_pages_per_s = pages / min(_memfd_fallocate_seconds(size) for _ in range(repeats))
    return {
        "limits_size": size,
        "memcpy_bytes_per_s": memcpy_bytes_per_s,
        "memcpy_parallel_bytes_per_s": size / copy_numba,
        "memcpy_parallel_threads": threads,
        "fault_pages_per_s": pages / min(_anonymous_touch_seconds(size) for _ in range(repeats)),
        "fault_pages_per_s_memfd_touch": pages / min(_memfd_touch_seconds(size) for _ in range(repeats)),
        "fault_pages_per_s_memfd_fallocate": fallocate_pages_per_s,
        "alloc_then_copy_bytes_per_s": 1 / (1 / (fallocate_pages_per_s * PAGE_SIZE) + 1 / memcpy_bytes_per_s),
    }


def _aligned_anonymous(size: int, huge: bool) -> tuple[mmap.mmap, np.ndarray]:
    """Fresh anonymous private memory: the mapping, and ``size`` bytes of it from a 2 MiB boundary, advised for
    (``huge``) or against transparent huge pages; nothing touched yet. Drop the array before closing the mapping."""
    mem = anonymous_private(size + _PMD_SIZE)
    mem.madvise(MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    data = np.frombuffer(mem, dtype=np.uint8)
    start = (-data.ctypes.data) % _PMD_SIZE
    return mem, data[start : start + size]


def _anonymous_huge_bytes() -> int:
    """Bytes of this process's anonymous memory in transparent huge pages."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    return 0


def _prepare_rate_measurement(size: int, threads: int) -> None:
    """Checks the arguments of a rate measurement and compiles its kernels, so that no compilation is timed."""
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"size {size} is not a positive multiple of {PAGE_SIZE}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= limit:
        raise ValueError(f"threads {threads} must be between 1 and {limit} (NUMBA_NUM_THREADS)")
    small = np.zeros(4 * PAGE_SIZE, dtype=np.uint8)
    touch_pages_parallel(small, PAGE_SIZE)
    parallel_copy(small.view(np.uint64), small.view(np.uint64).copy())


def first_touch_seconds(size: int, threads: int = 1, huge: bool = False) -> tuple[float, bool]:
    """Seconds for ``threads`` numba threads to touch every page of ``size`` bytes of fresh anonymous private
    memory (the kernel allocating and zeroing each folio on its first fault), and whether all of it came in
    transparent huge pages. ``huge`` advises the memory for transparent huge pages, otherwise against them;
    ``size`` is a multiple of 4 KiB."""
    _prepare_rate_measurement(size, threads)
    mem, data = _aligned_anonymous(size, huge)
    try:
        huge_before = _anonymous_huge_bytes()
        with numba_threads(threads):
            start = time.perf_counter()
            touch_pages_parallel(data, PAGE_SIZE)
            seconds = time.perf_counter() - start
        return seconds, _anonymous_huge_bytes() - huge_before >= size
    finally:
        del data  # the mapping cannot close while an array points into it
        mem.close()


def memcpy_seconds(size: int, threads: int = 1) -> float:
    """Seconds for ``threads`` numba threads to copy ``size`` bytes (a multiple of 4 KiB) between two prefaulted
    anonymous buffers in 4 KiB pages: the floor of every conversion that moves bytes. Raises ``RuntimeError``
    if the copy is wrong."""
    _prepare_rate_measurement(size, threads)
    src_mem, src = _aligned_anonymous(size, huge=False)
    dst_mem, dst = _aligned_anonymous(size, huge=False)
    try:
        fill_pattern(src.view(np.uint64))
        dst[:] = 0
        with numba_threads(threads):
            start = time.perf_counter()
            parallel_copy(dst.view(np.uint64), src.view(np.uint64))
            seconds = time.perf_counter() - start
        if not np.array_equal(dst[::PAGE_SIZE], src[::PAGE_SIZE]):
            raise RuntimeError("the memcpy measurement copied wrong bytes")
        return seconds
    finally:
        del src, dst  # the mappings cannot close while arrays point into them
        src_mem.close()
        dst_mem.close()
