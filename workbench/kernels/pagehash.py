"""Per-page fingerprints: the XXH64 hash (seed 0) of every page of a buffer, computed in parallel with numba.

The lab cycle fingerprints every page of every memfd before preservation and again after the kexec; a single
flipped bit changes the page's fingerprint. XXH64 is used because it is fast, well specified and has an
independent reference implementation (the ``xxhash`` package) to check this one against.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["PAGE_SIZE", "page_hashes", "page_hashes_reference", "read_words", "as_pages", "diff_pages"]

PAGE_SIZE = 4096

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_SEED_V1 = np.uint64((0x9E3779B185EBCA87 + 0xC2B2AE3D27D4EB4F) & 0xFFFFFFFFFFFFFFFF)
_SEED_V4 = np.uint64((-0x9E3779B185EBCA87) & 0xFFFFFFFFFFFFFFFF)


@numba.njit(inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@numba.njit(inline="always")
def _round(acc, lane):
    acc = acc + lane * _P2
    return _rotl(acc, 31) * _P1


@numba.njit(inline="always")
def _merge(h, v):
    h = h ^ _round(np.uint64(0), v)
    return h * _P1 + _P4


@numba.njit(inline="always")
def _xxh64_words(words, nbytes):
    v1 = _SEED_V1
    v2 = _P2
    v3 = np.uint64(0)
    v4 = _SEED_V4
    for i in range(0, words.shape[0], 4):
        v1 = _round(v1, words[i])
        v2 = _round(v2, words[i + 1])
        v3 = _round(v3, words[i + 2])
        v4 = _round(v4, words[i + 3])
    h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
    h = _merge(h, v1)
    h = _merge(h, v2)
    h = _merge(h, v3)
    h = _merge(h, v4)
    h = h + np.uint64(nbytes)
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


@numba.njit(parallel=True, cache=True, nogil=True)
def _hash_pages(pages, out):
    nbytes = pages.shape[1] * 8
    for p in numba.prange(pages.shape[0]):
        out[p] = _xxh64_words(pages[p], nbytes)


@numba.njit(parallel=True, cache=True, nogil=True)
def _read_pages(pages):
    total = np.uint64(0)
    for p in numba.prange(pages.shape[0]):
        acc = np.uint64(0)
        row = pages[p]
        for i in range(row.shape[0]):
            acc ^= row[i]
        total += acc
    return total


def as_pages(buf, page_size: int = PAGE_SIZE) -> np.ndarray:
    """A ``(npages, page_size // 8)`` uint64 view of ``buf`` (bytes-like, mmap, or numpy array), without copying.

    Raises ``ValueError`` when the buffer cannot be split into whole, 8-byte aligned pages.
    """
    if page_size <= 0 or page_size % 32:
        raise ValueError(f"page size {page_size} is not a positive multiple of 32 bytes")
    arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf.reshape(-1).view(np.uint8)
    if arr.size % page_size:
        raise ValueError(
            f"buffer of {arr.size} bytes is not a whole number of {page_size}-byte pages "
            f"({arr.size % page_size} bytes left over): pad or trim it to a page multiple"
        )
    if arr.ctypes.data % 8:
        raise ValueError(
            f"buffer at address {arr.ctypes.data:#x} is not 8-byte aligned: hash a page-aligned mapping "
            "(mmap) or a copy made with numpy"
        )
    return arr.view(np.uint64).reshape(-1, page_size // 8)


def page_hashes(buf, page_size: int = PAGE_SIZE) -> np.ndarray:
    """XXH64 (seed 0) of each ``page_size`` page of ``buf``, as a uint64 array, computed in parallel."""
    pages = as_pages(buf, page_size)
    out = np.empty(pages.shape[0], dtype=np.uint64)
    if pages.shape[0]:
        _hash_pages(pages, out)
    return out


def read_words(buf, page_size: int = PAGE_SIZE) -> int:
    """Reads every 64-bit word of ``buf`` in the same parallel pattern as :func:`page_hashes`: the baseline."""
    pages = as_pages(buf, page_size)
    return int(_read_pages(pages)) if pages.shape[0] else 0


def page_hashes_reference(buf, page_size: int = PAGE_SIZE) -> np.ndarray:
    """The same fingerprints computed one page at a time by the ``xxhash`` package (slow; for checking)."""
    import xxhash

    data = memoryview(buf).cast("B")
    if len(data) % page_size:
        raise ValueError(f"buffer of {len(data)} bytes is not a whole number of {page_size}-byte pages")
    return np.array(
        [xxhash.xxh64_intdigest(data[i : i + page_size]) for i in range(0, len(data), page_size)],
        dtype=np.uint64,
    )


def diff_pages(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Indexes of the pages whose fingerprints differ (pages missing on either side count as differing)."""
    n = min(len(before), len(after))
    differing = np.flatnonzero(before[:n] != after[:n])
    if len(before) != len(after):
        differing = np.concatenate([differing, np.arange(n, max(len(before), len(after)))])
    return differing


def benchmark(size: int, repeats: int = 5) -> dict:
    """Hash and plain-read throughput over the same ``size`` bytes of anonymous memory, best of ``repeats``."""
    import mmap
    import time

    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"size {size} is not a positive multiple of {PAGE_SIZE}")
    mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # anonymous memory, not shmem
    arr = np.frombuffer(mem, dtype=np.uint64)
    arr[:] = np.arange(arr.size, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    page_hashes(mem[: PAGE_SIZE * 8])  # compile before timing
    read_words(mem[: PAGE_SIZE * 8])
    hash_times, read_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        read_words(mem)
        t1 = time.perf_counter()
        page_hashes(mem)
        t2 = time.perf_counter()
        read_times.append(t1 - t0)
        hash_times.append(t2 - t1)
    del arr
    mem.close()
    hash_s, read_s = min(hash_times), min(read_times)
    return {
        "size": size,
        "pages": size // PAGE_SIZE,
        "threads": numba.get_num_threads(),
        "repeats": repeats,
        "hash_s": hash_s,
        "read_s": read_s,
        "bytes_per_s": size / hash_s,
        "read_bytes_per_s": size / read_s,
        "ratio_to_read": read_s / hash_s,
    }
