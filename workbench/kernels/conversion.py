"""Moving a process's anonymous memory into memfds, which LUO can preserve: every way Linux offers, timed and
verified page by page.

A *source* is ``size`` bytes of anonymous private memory that has been touched (filled with a deterministic
pattern, distinct on every page) together with the XXH3-64 fingerprint of each of its pages. A *strategy* creates
a memfd and moves the source's bytes into it; the memfd's pages are then fingerprinted and compared with the
source's, so a strategy that loses, misplaces or corrupts a page is reported as unverified, with the page.

The numbers are put beside the machine's limits, measured in the same run: the bandwidth of a plain copy
between two prefaulted anonymous buffers (``memcpy_bytes_per_s``) and the rate at which the kernel hands out
fresh pages (``fault_pages_per_s``). A conversion cannot beat the copy unless it moves no bytes at all, and a
conversion into fresh memfd pages pays for the page allocation on top of the copy. The same two rates at any
thread count, and the first touch in transparent huge pages, are :func:`first_touch_seconds` and
:func:`memcpy_seconds` (the host points of the blackout model).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import pandas as pd

from workbench.kernels.memfd_syscalls import (
    MADV_HUGEPAGE,
    MADV_POPULATE_WRITE,
    SPLICE_F_GIFT,
    SPLICE_F_MOVE,
    buffer_address,
    fallocate,
    process_vm_readv,
    set_pipe_size,
    splice,
    vmsplice,
)
from workbench.kernels.pagehash import PAGE_SIZE, diff_pages, page_hashes
from workbench.kernels.threads import numba_threads

__all__ = [
    "COLUMNS",
    "DEFAULT_PIPE_SIZES",
    "STRATEGIES",
    "WRITE_CHUNK",
    "AnonymousSource",
    "Converted",
    "Options",
    "RemoteSource",
    "Strategy",
    "check_arguments",
    "convert_copy_fallocate",
    "convert_copy_fresh",
    "convert_copy_populate",
    "convert_hugetlb",
    "convert_memfd_from_birth",
    "convert_process_vm_readv",
    "convert_pwrite",
    "convert_thp_shmem",
    "convert_vmsplice_gift",
    "convert_vmsplice_splice",
    "convert_write",
    "default_thread_counts",
    "first_touch_seconds",
    "make_source",
    "measure_limits",
    "measure_strategy",
    "memcpy_seconds",
    "run_conversion",
    "thp_shmem_unavailable",
    "hugetlb_unavailable",
    "verify_memfd",
]

WRITE_CHUNK = 4 << 20
"""Bytes per ``write``/``pwrite`` call."""

DEFAULT_PIPE_SIZES = (64 << 10, 1 << 20)
"""Pipe buffer sizes tried by the vmsplice strategies: the kernel's default and the unprivileged maximum."""

LIMITS_MAX_SIZE = 1 << 30
"""The limits are measured on at most this many bytes (the memcpy needs two buffers of that size)."""

COLUMNS = [
    "strategy",
    "copier",
    "size",
    "threads",
    "pipe_size",
    "pipe_size_obtained",
    "repeats",
    "seconds",
    "alloc_s",
    "copy_s",
    "bytes_per_s",
    "ratio_to_memcpy",
    "verified",
    "mismatched_pages",
    "first_mismatched_page",
    "huge_bytes",
    "available",
    "reason",
]

_SYSFS_THP = Path("/sys/kernel/mm/transparent_hugepage")
_SYSFS_HUGETLB = Path("/sys/kernel/mm/hugepages")
_COPY_BLOCK_WORDS = 1 << 13  # 64 KiB: the unit the numba threads share out
_PMD_SIZE = 2 << 20  # a transparent huge page


# --- numba kernels -------------------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True, nogil=True)
def _fill_pattern(words):
    for i in numba.prange(words.shape[0]):
        x = np.uint64(i + 1) * np.uint64(0x9E3779B97F4A7C15)
        words[i] = x ^ (x >> np.uint64(29))


@numba.njit(parallel=True, cache=True, nogil=True)
def _parallel_copy(dst, src):
    blocks = (src.shape[0] + _COPY_BLOCK_WORDS - 1) // _COPY_BLOCK_WORDS
    for b in numba.prange(blocks):
        start = b * _COPY_BLOCK_WORDS
        end = min(start + _COPY_BLOCK_WORDS, src.shape[0])
        dst[start:end] = src[start:end]


@numba.njit(cache=True, nogil=True)
def _touch_pages(data, page_size):
    for i in range(0, data.shape[0], page_size):
        data[i] = 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _touch_pages_parallel(data, page_size):
    for p in numba.prange(data.shape[0] // page_size):
        data[p * page_size] = 1


def _compile_kernels() -> None:
    """Compiles (or loads from cache) the numba kernels so that no timed region includes a compilation."""
    small = np.zeros(4 * PAGE_SIZE, dtype=np.uint8)
    _fill_pattern(small.view(np.uint64))
    _parallel_copy(small.view(np.uint64), small.view(np.uint64).copy())
    _touch_pages(small, PAGE_SIZE)
    page_hashes(small)


# --- memory ----------------------------------------------------------------------------------------------


def _anonymous_private(size: int) -> mmap.mmap:
    # mmap.mmap(-1, size) alone is MAP_SHARED, which the kernel backs with shmem, not anonymous memory.
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


def _new_memfd(size: int, flags: int = 0) -> int:
    fd = os.memfd_create("workbench-conversion", os.MFD_CLOEXEC | flags)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _closed_on_error(fd: int) -> Iterator[int]:
    try:
        yield fd
    except BaseException:
        os.close(fd)
        raise


def _fill(mem: mmap.mmap) -> None:
    _fill_pattern(np.frombuffer(mem, dtype=np.uint64))


def _copy(dst: mmap.mmap, src: mmap.mmap, copier: str, threads: int) -> None:
    dst_words = np.frombuffer(dst, dtype=np.uint64)
    src_words = np.frombuffer(src, dtype=np.uint64)
    if copier == "numpy":
        np.copyto(dst_words, src_words)
    elif copier == "numba":
        with numba_threads(threads):
            _parallel_copy(dst_words, src_words)
    else:
        raise ValueError(f"unknown copier {copier!r}: use numpy or numba")


def _slices(size: int, parts: int) -> list[tuple[int, int]]:
    """``size`` bytes cut into at most ``parts`` page-aligned ``(offset, length)`` slices."""
    pages = size // PAGE_SIZE
    parts = max(1, min(parts, pages))
    bounds = [pages * i // parts * PAGE_SIZE for i in range(parts + 1)]
    return [(start, end - start) for start, end in zip(bounds, bounds[1:], strict=False) if end > start]


def _in_parallel(size: int, threads: int, work: Callable[[int, int], object]) -> list:
    """Runs ``work(offset, length)`` over ``threads`` slices of ``size`` bytes, each in a thread of its own."""
    slices = _slices(size, threads)
    if len(slices) == 1:
        return [work(*slices[0])]
    with ThreadPoolExecutor(len(slices)) as pool:
        return list(pool.map(lambda piece: work(*piece), slices))


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    return 0


# --- sources ---------------------------------------------------------------------------------------------


@dataclass
class AnonymousSource:
    """``size`` bytes of touched anonymous private memory in this process, and the fingerprint of each page."""

    mem: mmap.mmap
    hashes: np.ndarray

    @property
    def size(self) -> int:
        return len(self.mem)

    def close(self) -> None:
        self.mem.close()


def make_source(size: int) -> AnonymousSource:
    """Maps ``size`` bytes of anonymous private memory, fills every page with the pattern and fingerprints it."""
    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"size {size} is not a positive multiple of {PAGE_SIZE}")
    mem = _anonymous_private(size)
    _fill(mem)
    return AnonymousSource(mem, page_hashes(mem))


def _serve_anonymous_memory(size: int) -> None:
    """The body of the process that owns a :class:`RemoteSource`'s memory: maps and fills it, writes its
    address and page fingerprints to stdout, then keeps it until its stdin is closed."""
    source = make_source(size)
    sys.stdout.buffer.write(struct.pack("=QQ", buffer_address(source.mem), len(source.hashes)))
    sys.stdout.buffer.write(source.hashes.tobytes())
    sys.stdout.buffer.flush()
    sys.stdin.buffer.read()
    source.close()


@dataclass
class RemoteSource:
    """Anonymous memory owned by another process (as CRIU sees its target): its pid, address and fingerprints."""

    size: int
    pid: int
    address: int
    hashes: np.ndarray
    _process: subprocess.Popen

    @classmethod
    def start(cls, size: int) -> RemoteSource:
        """Starts a process that maps and fills ``size`` bytes; returns once its memory is ready."""
        code = f"from workbench.kernels.conversion import _serve_anonymous_memory; _serve_anonymous_memory({size})"
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        header = process.stdout.read(16)
        if len(header) < 16:
            process.stdin.close()
            raise RuntimeError(f"the source process exited with code {process.wait()} before its memory was ready")
        address, pages = struct.unpack("=QQ", header)
        hashes = np.frombuffer(process.stdout.read(pages * 8), dtype=np.uint64)
        if len(hashes) != pages:
            process.stdin.close()
            raise RuntimeError(f"the source process sent {len(hashes)} of {pages} page fingerprints")
        return cls(size, process.pid, address, hashes, process)

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait()
        self._process.stdout.close()


Source = AnonymousSource | RemoteSource


# --- strategies ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """How a strategy runs: the copy loop (``numpy``, ``numba``; ``kernel`` when a system call copies; ``none``),
    the number of threads and, for the pipe strategies, the requested pipe buffer size."""

    copier: str = "kernel"
    threads: int = 1
    pipe_size: int = 0


@dataclass
class Converted:
    """A memfd holding the source's bytes (the caller closes ``fd``) and what it took to fill it.

    ``seconds`` runs from ``memfd_create`` to the last byte in place; ``alloc_s`` is the part spent allocating the
    memfd's pages up front (NaN when the pages are allocated by the copy itself) and ``copy_s`` the copy."""

    fd: int
    seconds: float
    alloc_s: float
    copy_s: float
    pipe_size_obtained: int = 0
    huge_bytes: float = math.nan


def _copy_via_mapping(
    source: AnonymousSource,
    options: Options,
    *,
    allocate: str | None = None,
    memfd_flags: int = 0,
    huge_advice: bool = False,
) -> Converted:
    """Copies the source through a shared mapping of a new memfd, after allocating the memfd's pages with
    ``fallocate`` or ``populate`` (MADV_POPULATE_WRITE) when ``allocate`` says so."""
    shmem_huge_before = _meminfo_kib("ShmemHugePages")
    start = time.perf_counter()
    fd = _new_memfd(source.size, memfd_flags)
    with _closed_on_error(fd):
        alloc_s = math.nan
        if allocate == "fallocate":
            alloc_start = time.perf_counter()
            fallocate(fd, 0, source.size)
            alloc_s = time.perf_counter() - alloc_start
        mem = mmap.mmap(fd, source.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            if huge_advice:
                mem.madvise(MADV_HUGEPAGE)
            if allocate == "populate":
                alloc_start = time.perf_counter()
                mem.madvise(MADV_POPULATE_WRITE)
                alloc_s = time.perf_counter() - alloc_start
            copy_start = time.perf_counter()
            _copy(mem, source.mem, options.copier, options.threads)
            end = time.perf_counter()
        finally:
            mem.close()
    huge_bytes = math.nan
    if huge_advice:
        huge_bytes = float((_meminfo_kib("ShmemHugePages") - shmem_huge_before) * 1024)
    elif memfd_flags & os.MFD_HUGETLB:
        huge_bytes = float(source.size)
    return Converted(fd, end - start, alloc_s, end - copy_start, huge_bytes=huge_bytes)


def convert_copy_fresh(source: AnonymousSource, options: Options) -> Converted:
    """Copy into a fresh memfd: every first write faults a new shmem page in."""
    return _copy_via_mapping(source, options)


def convert_copy_fallocate(source: AnonymousSource, options: Options) -> Converted:
    """Copy into a memfd whose pages ``fallocate`` has allocated (the mapping still faults their PTEs in)."""
    return _copy_via_mapping(source, options, allocate="fallocate")


def convert_copy_populate(source: AnonymousSource, options: Options) -> Converted:
    """Copy into a memfd mapping prefaulted with ``MADV_POPULATE_WRITE`` (pages and page tables)."""
    return _copy_via_mapping(source, options, allocate="populate")


def convert_thp_shmem(source: AnonymousSource, options: Options) -> Converted:
    """Copy into a memfd mapping advised ``MADV_HUGEPAGE``: shmem transparent huge pages if the kernel gives
    them (``huge_bytes`` says how many bytes it did)."""
    return _copy_via_mapping(source, options, huge_advice=True)


def convert_hugetlb(source: AnonymousSource, options: Options) -> Converted:
    """Copy into an ``MFD_HUGETLB`` memfd, backed by the default-size hugetlb pages."""
    return _copy_via_mapping(source, options, memfd_flags=os.MFD_HUGETLB)


def convert_write(source: AnonymousSource, options: Options) -> Converted:
    """``write`` the source into the memfd, :data:`WRITE_CHUNK` bytes at a time (one thread: a file position)."""
    start = time.perf_counter()
    fd = _new_memfd(source.size)
    with _closed_on_error(fd), memoryview(source.mem) as view:
        copy_start = time.perf_counter()
        done = 0
        while done < source.size:
            done += os.write(fd, view[done : done + WRITE_CHUNK])
        end = time.perf_counter()
    return Converted(fd, end - start, math.nan, end - copy_start)


def convert_pwrite(source: AnonymousSource, options: Options) -> Converted:
    """``pwrite`` the source into the memfd, each thread writing its own slice in :data:`WRITE_CHUNK` calls."""
    start = time.perf_counter()
    fd = _new_memfd(source.size)
    with _closed_on_error(fd), memoryview(source.mem) as view:

        def write_slice(offset: int, length: int) -> None:
            stop = offset + length
            while offset < stop:
                offset += os.pwrite(fd, view[offset : min(offset + WRITE_CHUNK, stop)], offset)

        copy_start = time.perf_counter()
        _in_parallel(source.size, options.threads, write_slice)
        end = time.perf_counter()
    return Converted(fd, end - start, math.nan, end - copy_start)


def _open_pipe(size: int) -> tuple[int, int, int]:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        return read_fd, write_fd, set_pipe_size(write_fd, size)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise


def _vmsplice_splice(source: AnonymousSource, options: Options, *, gift: bool) -> Converted:
    """``vmsplice`` the source into a pipe (per thread) and ``splice`` the pipe into the memfd at the source's
    offsets, a pipe buffer at a time."""
    if options.pipe_size <= 0:
        raise ValueError("the vmsplice strategies need a pipe size")
    slices = _slices(source.size, options.threads)
    start = time.perf_counter()
    fd = _new_memfd(source.size)
    pipes: list[tuple[int, int, int]] = []
    try:
        pipes = [_open_pipe(options.pipe_size) for _ in slices]
        base = buffer_address(source.mem)
        vmsplice_flags = SPLICE_F_GIFT if gift else 0
        splice_flags = SPLICE_F_MOVE if gift else 0  # a gift only means something to a moving splice

        def transfer(pipe: tuple[int, int, int], piece: tuple[int, int]) -> None:
            read_fd, write_fd, capacity = pipe
            offset, stop = piece[0], piece[0] + piece[1]
            while offset < stop:
                queued = vmsplice(write_fd, base + offset, min(capacity, stop - offset), vmsplice_flags)
                moved = 0
                while moved < queued:
                    moved += splice(read_fd, fd, queued - moved, offset_out=offset + moved, flags=splice_flags)
                offset += queued

        copy_start = time.perf_counter()
        if len(slices) == 1:
            transfer(pipes[0], slices[0])
        else:
            with ThreadPoolExecutor(len(slices)) as pool:
                list(pool.map(transfer, pipes, slices))
        end = time.perf_counter()
    except BaseException:
        os.close(fd)
        raise
    finally:
        for read_fd, write_fd, _ in pipes:
            os.close(read_fd)
            os.close(write_fd)
    return Converted(fd, end - start, math.nan, end - copy_start, pipe_size_obtained=pipes[0][2])


def convert_vmsplice_splice(source: AnonymousSource, options: Options) -> Converted:
    """``vmsplice`` (no flags) then ``splice`` into the memfd."""
    return _vmsplice_splice(source, options, gift=False)


def convert_vmsplice_gift(source: AnonymousSource, options: Options) -> Converted:
    """``vmsplice(SPLICE_F_GIFT)`` then ``splice(SPLICE_F_MOVE)`` into the memfd."""
    return _vmsplice_splice(source, options, gift=True)


def convert_process_vm_readv(source: RemoteSource, options: Options) -> Converted:
    """Another process owns the memory; this one reads it with ``process_vm_readv`` straight into a shared
    mapping of a fresh memfd, each thread a slice (what a dumper such as CRIU would do)."""
    start = time.perf_counter()
    fd = _new_memfd(source.size)
    with _closed_on_error(fd):
        mem = mmap.mmap(fd, source.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            base = buffer_address(mem)

            def read_slice(offset: int, length: int) -> None:
                stop = offset + length
                while offset < stop:
                    read = process_vm_readv(source.pid, base + offset, source.address + offset, stop - offset)
                    if read == 0:
                        raise OSError(f"process_vm_readv read nothing at offset {offset} of pid {source.pid}")
                    offset += read

            copy_start = time.perf_counter()
            _in_parallel(source.size, options.threads, read_slice)
            end = time.perf_counter()
        finally:
            mem.close()
    return Converted(fd, end - start, math.nan, end - copy_start)


def convert_memfd_from_birth(source: AnonymousSource, options: Options) -> Converted:
    """The workload's memory was a memfd mapping from the start (filled here, untimed, the way the workload
    would have): there is nothing to convert, so the conversion takes no time. The lower bound."""
    fd = _new_memfd(source.size)
    with _closed_on_error(fd):
        mem = mmap.mmap(fd, source.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            _fill(mem)
        finally:
            mem.close()
    return Converted(fd, 0.0, 0.0, 0.0)


def _read_bracketed(path: Path) -> str:
    """The selected value of a sysfs setting written as ``always [madvise] never``."""
    text = path.read_text()
    return text[text.index("[") + 1 : text.index("]")]


def thp_shmem_unavailable(size: int) -> str | None:
    """Why shmem transparent huge pages would not back a memfd here, or ``None`` when they would."""
    top_path = _SYSFS_THP / "shmem_enabled"
    if not top_path.exists():
        return f"no shmem transparent huge pages: {top_path} is missing"
    top = _read_bracketed(top_path)
    pmd_kib = int((_SYSFS_THP / "hpage_pmd_size").read_text()) // 1024
    per_size_path = _SYSFS_THP / f"hugepages-{pmd_kib}kB" / "shmem_enabled"
    per_size = _read_bracketed(per_size_path) if per_size_path.exists() else "inherit"
    effective = top if per_size == "inherit" else per_size
    if effective in ("never", "deny"):
        detail = f" (hugepages-{pmd_kib}kB/shmem_enabled is {per_size})" if per_size_path.exists() else ""
        return f"shmem_enabled is {top}{detail}"
    if size % (pmd_kib * 1024):
        return f"size {size} is not a multiple of the {pmd_kib} KiB huge page"
    return None


def hugetlb_unavailable(size: int) -> str | None:
    """Why an ``MFD_HUGETLB`` memfd of ``size`` bytes could not be filled here, or ``None`` when it could."""
    page_kib = _meminfo_kib("Hugepagesize")
    folder = _SYSFS_HUGETLB / f"hugepages-{page_kib}kB"
    if not page_kib or not folder.exists():
        return "no hugetlb support: no default huge page size in /proc/meminfo"
    if size % (page_kib * 1024):
        return f"size {size} is not a multiple of the {page_kib} KiB huge page"

    def count(name: str) -> int:
        return int((folder / name).read_text())

    total, usable = count("nr_hugepages"), count("free_hugepages") - count("resv_hugepages")
    needed = size // (page_kib * 1024)
    if total == 0:
        return f"no free hugetlb pages: nr_hugepages=0 ({page_kib} kB pages)"
    if usable < needed:
        return f"not enough free hugetlb pages: {usable} of nr_hugepages={total} free, {needed} needed"
    return None


@dataclass(frozen=True)
class Strategy:
    """A conversion: its function, the copiers it runs with, whether its kernel copy is split over threads,
    whether it goes through a pipe, the source it needs and why it cannot run (``None`` when it can)."""

    convert: Callable[[Source, Options], Converted]
    copiers: tuple[str, ...] = ("kernel",)
    parallel: bool = False
    uses_pipe: bool = False
    remote: bool = False
    unavailable: Callable[[int], str | None] = lambda size: None


_COPIERS = ("numpy", "numba")

STRATEGIES: dict[str, Strategy] = {
    "copy-fresh": Strategy(convert_copy_fresh, _COPIERS),
    "copy-fallocate": Strategy(convert_copy_fallocate, _COPIERS),
    "copy-populate": Strategy(convert_copy_populate, _COPIERS),
    "write": Strategy(convert_write),
    "pwrite": Strategy(convert_pwrite, parallel=True),
    "vmsplice-splice": Strategy(convert_vmsplice_splice, parallel=True, uses_pipe=True),
    "vmsplice-gift": Strategy(convert_vmsplice_gift, parallel=True, uses_pipe=True),
    "process_vm_readv": Strategy(convert_process_vm_readv, parallel=True, remote=True),
    "memfd-from-birth": Strategy(convert_memfd_from_birth, ("none",)),
    "thp-shmem": Strategy(convert_thp_shmem, _COPIERS, unavailable=thp_shmem_unavailable),
    "hugetlb": Strategy(convert_hugetlb, _COPIERS, unavailable=hugetlb_unavailable),
}


# --- verification and measurement ------------------------------------------------------------------------


def verify_memfd(fd: int, expected: np.ndarray) -> np.ndarray:
    """Indexes of the memfd's pages whose fingerprints differ from ``expected`` (empty when all match; pages
    missing or extra on either side count as differing)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return diff_pages(expected, np.empty(0, dtype=np.uint64))
    mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    try:
        return diff_pages(expected, page_hashes(mem))
    finally:
        mem.close()


def _row(strategy: str, size: int, options: Options, repeats: int, **values) -> dict:
    row = dict.fromkeys(COLUMNS, math.nan)
    row.update(
        strategy=strategy,
        copier=options.copier,
        size=size,
        threads=options.threads,
        pipe_size=options.pipe_size,
        pipe_size_obtained=0,
        repeats=repeats,
        verified=False,
        mismatched_pages=0,
        first_mismatched_page=-1,
        available=True,
        reason="",
    )
    row.update(values)
    return row


def measure_strategy(
    name: str,
    source: Source,
    options: Options,
    repeats: int = 3,
    tamper: Callable[[int], None] | None = None,
) -> dict:
    """Runs strategy ``name`` ``repeats`` times on ``source``, verifying every result; returns one row (see
    :data:`COLUMNS`) with the fastest repeat's times. ``tamper(fd)``, if given, runs on each memfd before it is
    verified (to check that verification catches damage). A failing system call gives an unverified row whose
    ``reason`` holds the error."""
    runs: list[tuple[Converted, np.ndarray]] = []
    try:
        for _ in range(repeats):
            converted = STRATEGIES[name].convert(source, options)
            try:
                if tamper is not None:
                    tamper(converted.fd)
                runs.append((converted, verify_memfd(converted.fd, source.hashes)))
            finally:
                os.close(converted.fd)
    except OSError as exc:
        return _row(name, source.size, options, repeats, reason=f"failed: {exc}")
    best = min((converted for converted, _ in runs), key=lambda converted: converted.seconds)
    mismatched = max((bad for _, bad in runs), key=len)
    return _row(
        name,
        source.size,
        options,
        repeats,
        seconds=best.seconds,
        alloc_s=best.alloc_s,
        copy_s=best.copy_s,
        bytes_per_s=source.size / best.seconds if best.seconds > 0 else math.inf,
        pipe_size_obtained=best.pipe_size_obtained,
        huge_bytes=best.huge_bytes,
        verified=all(len(bad) == 0 for _, bad in runs),
        mismatched_pages=len(mismatched),
        first_mismatched_page=int(mismatched[0]) if len(mismatched) else -1,
    )


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _touch(mem: mmap.mmap) -> None:
    _touch_pages(np.frombuffer(mem, dtype=np.uint8), PAGE_SIZE)


def _anonymous_touch_seconds(size: int) -> float:
    mem = _anonymous_private(size)
    try:
        return _seconds(lambda: _touch(mem))
    finally:
        mem.close()


def _memfd_touch_seconds(size: int) -> float:
    fd = _new_memfd(size)
    try:
        mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            return _seconds(lambda: _touch(mem))
        finally:
            mem.close()
    finally:
        os.close(fd)


def _memfd_fallocate_seconds(size: int) -> float:
    fd = _new_memfd(size)
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
    _compile_kernels()
    pages = size // PAGE_SIZE
    source, dst = make_source(size), _anonymous_private(size)
    try:
        _fill(dst)
        copy_numpy = min(_seconds(lambda: _copy(dst, source.mem, "numpy", 1)) for _ in range(repeats))
        copy_numba = min(_seconds(lambda: _copy(dst, source.mem, "numba", threads)) for _ in range(repeats))
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
    mem = _anonymous_private(size + _PMD_SIZE)
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
    _touch_pages_parallel(small, PAGE_SIZE)
    _parallel_copy(small.view(np.uint64), small.view(np.uint64).copy())


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
            _touch_pages_parallel(data, PAGE_SIZE)
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
        _fill_pattern(src.view(np.uint64))
        dst[:] = 0
        with numba_threads(threads):
            start = time.perf_counter()
            _parallel_copy(dst.view(np.uint64), src.view(np.uint64))
            seconds = time.perf_counter() - start
        if not np.array_equal(dst[::PAGE_SIZE], src[::PAGE_SIZE]):
            raise RuntimeError("the memcpy measurement copied wrong bytes")
        return seconds
    finally:
        del src, dst  # the mappings cannot close while arrays point into them
        src_mem.close()
        dst_mem.close()


def _option_grid(strategy: Strategy, threads: Sequence[int], pipe_sizes: Sequence[int]) -> Iterator[Options]:
    for copier in strategy.copiers:
        copier_threads = threads if copier == "numba" or (copier == "kernel" and strategy.parallel) else (1,)
        for thread_count in dict.fromkeys(copier_threads):
            for pipe_size in pipe_sizes if strategy.uses_pipe else (0,):
                yield Options(copier, thread_count, pipe_size)


@contextmanager
def _source_for(strategy: Strategy, size: int) -> Iterator[Source]:
    source = RemoteSource.start(size) if strategy.remote else make_source(size)
    try:
        yield source
    finally:
        source.close()


def check_arguments(sizes: Sequence[int], threads: Sequence[int], names: Sequence[str], repeats: int) -> None:
    """Raises ``ValueError`` naming the first kind of bad argument to :func:`run_conversion`."""
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}: choose from {', '.join(STRATEGIES)}")
    bad_sizes = [size for size in sizes if size <= 0 or size % PAGE_SIZE]
    if bad_sizes:
        raise ValueError(f"sizes {bad_sizes} are not positive multiples of {PAGE_SIZE}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not threads or any(not 1 <= count <= limit for count in threads):
        raise ValueError(f"thread counts {list(threads)} must be between 1 and {limit} (NUMBA_NUM_THREADS)")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")


def default_thread_counts() -> list[int]:
    """One thread, and as many as this process may run on (at most ``NUMBA_NUM_THREADS``)."""
    return list(dict.fromkeys((1, min(len(os.sched_getaffinity(0)), numba.config.NUMBA_NUM_THREADS))))


def run_conversion(
    sizes: Sequence[int],
    threads: Sequence[int],
    strategies: Sequence[str] | None = None,
    repeats: int = 3,
    pipe_sizes: Sequence[int] = DEFAULT_PIPE_SIZES,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Measures every strategy (default: all of :data:`STRATEGIES`) at every size, copier, thread count and
    (for the pipe strategies) pipe size; returns one row per combination (see :data:`COLUMNS`) and the limits
    from :func:`measure_limits`, measured first on ``min(max(sizes), LIMITS_MAX_SIZE)`` bytes.

    Each strategy gets a source of its own, freed (with its memfds) before the next one starts, so the peak is
    about twice the size. A strategy the kernel cannot run here gives rows with ``available`` false and the
    ``reason``. ``progress`` shows a bar on stderr when the run takes more than a few seconds.
    """
    from tqdm import tqdm

    names = list(dict.fromkeys(strategies or STRATEGIES))
    check_arguments(sizes, threads, names, repeats)
    limits = measure_limits(min(max(sizes), LIMITS_MAX_SIZE), repeats, max(threads))
    plan = [(size, name, list(_option_grid(STRATEGIES[name], threads, pipe_sizes))) for size in sizes for name in names]
    rows = []
    with tqdm(
        total=sum(len(grid) for *_, grid in plan), disable=not progress, file=sys.stderr, delay=3, unit="case"
    ) as bar:
        for size, name, grid in plan:
            strategy = STRATEGIES[name]
            bar.set_description(f"{name} {size >> 20} MiB")
            reason = strategy.unavailable(size)
            if reason:
                rows += [_row(name, size, options, repeats, available=False, reason=reason) for options in grid]
                bar.update(len(grid))
                continue
            with _source_for(strategy, size) as source:
                for options in grid:
                    rows.append(measure_strategy(name, source, options, repeats))
                    bar.update()
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["ratio_to_memcpy"] = frame["bytes_per_s"] / limits["memcpy_bytes_per_s"]
    return frame, limits
