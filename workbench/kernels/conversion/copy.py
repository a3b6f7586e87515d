"""The numba loops of the conversion: fill memory with a pattern distinct on every page, copy it over threads,
touch every page; and :func:`compile_kernels`, which compiles them (or loads them from numba's cache) before
anything is timed.

The kernels compile on their first call, never at import; ``cache=True`` keeps the machine code beside this file
for the next process."""

from __future__ import annotations

import mmap

import numba
import numpy as np

from workbench.kernels.pagehash import PAGE_SIZE, page_hashes
from workbench.kernels.threads import numba_threads

__all__ = [
    "compile_kernels",
    "copy_mapping",
    "fill_mapping",
    "fill_pattern",
    "parallel_copy",
    "touch_pages",
    "touch_pages_parallel",
]

_COPY_BLOCK_WORDS = 1 << 13  # 64 KiB: the unit the numba threads share out


@numba.njit(parallel=True, cache=True, nogil=True)
def fill_pattern(words: np.ndarray) -> None:
    """Writes into ``words`` (uint64) a value that depends only on each word's index, so every page differs."""
    for i in numba.prange(words.shape[0]):
        x = np.uint64(i + 1) * np.uint64(0x9E3779B97F4A7C15)
        words[i] = x ^ (x >> np.uint64(29))


@numba.njit(parallel=True, cache=True, nogil=True)
def parallel_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """Copies ``src`` into ``dst`` (uint64, the same length) in 64 KiB blocks shared out over numba's threads."""
    blocks = (src.shape[0] + _COPY_BLOCK_WORDS - 1) // _COPY_BLOCK_WORDS
    for b in numba.prange(blocks):
        start = b * _COPY_BLOCK_WORDS
        end = min(start + _COPY_BLOCK_WORDS, src.shape[0])
        dst[start:end] = src[start:end]


@numba.njit(cache=True, nogil=True)
def touch_pages(data: np.ndarray, page_size: int) -> None:
    """Writes one byte into every ``page_size`` bytes of ``data`` (uint8), in order, on one thread."""
    for i in range(0, data.shape[0], page_size):
        data[i] = 1


@numba.njit(parallel=True, cache=True, nogil=True)
def touch_pages_parallel(data: np.ndarray, page_size: int) -> None:
    """Writes one byte into every ``page_size`` bytes of ``data`` (uint8), the pages shared out over threads."""
    for p in numba.prange(data.shape[0] // page_size):
        data[p * page_size] = 1


def compile_kernels() -> None:
    """Compiles (or loads from cache) the numba kernels so that no timed region includes a compilation."""
    small = np.zeros(4 * PAGE_SIZE, dtype=np.uint8)
    fill_pattern(small.view(np.uint64))
    parallel_copy(small.view(np.uint64), small.view(np.uint64).copy())
    touch_pages(small, PAGE_SIZE)
    page_hashes(small)


def fill_mapping(mem: mmap.mmap) -> None:
    """Fills the mapping ``mem`` (a multiple of 8 bytes long) with :func:`fill_pattern`."""
    fill_pattern(np.frombuffer(mem, dtype=np.uint64))


def copy_mapping(dst: mmap.mmap, src: mmap.mmap, copier: str, threads: int) -> None:
    """Copies the mapping ``src`` into ``dst`` (the same length) with ``copier``: ``numpy`` (``np.copyto``, one
    thread) or ``numba`` (:func:`parallel_copy` on ``threads`` threads)."""
    dst_words = np.frombuffer(dst, dtype=np.uint64)
    src_words = np.frombuffer(src, dtype=np.uint64)
    if copier == "numpy":
        np.copyto(dst_words, src_words)
    elif copier == "numba":
        with numba_threads(threads):
            parallel_copy(dst_words, src_words)
    else:
        raise ValueError(f"unknown copier {copier!r}: use numpy or numba")
