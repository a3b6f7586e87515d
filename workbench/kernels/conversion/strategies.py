"""The conversion strategies: every way Linux offers to move a source's bytes into a new memfd, which LUO can
preserve. Copies through a mapping of the memfd (its pages fresh, allocated by ``fallocate`` or prefaulted, shmem
transparent huge pages, hugetlb), ``write`` and ``pwrite``, ``vmsplice`` and ``splice``, ``process_vm_readv`` from
another process, and memory that was a memfd from birth; each is timed from ``memfd_create`` to its last byte.
:data:`STRATEGIES` names them, with the copiers they run with and why one cannot run on this machine."""

from __future__ import annotations

import math
import mmap
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from workbench.kernels.conversion.copy import copy_mapping, fill_mapping
from workbench.kernels.conversion.memory import closed_on_error, meminfo_kib, new_memfd
from workbench.kernels.conversion.sources import AnonymousSource, RemoteSource, Source
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
from workbench.kernels.pagehash import PAGE_SIZE

__all__ = [
    "DEFAULT_PIPE_SIZES",
    "STRATEGIES",
    "WRITE_CHUNK",
    "Converted",
    "Options",
    "Strategy",
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
    "hugetlb_unavailable",
    "thp_shmem_unavailable",
]

WRITE_CHUNK = 4 << 20
"""Bytes per ``write``/``pwrite`` call."""

DEFAULT_PIPE_SIZES = (64 << 10, 1 << 20)
"""Pipe buffer sizes tried by the vmsplice strategies: the kernel's default and the unprivileged maximum."""

_SYSFS_THP = Path("/sys/kernel/mm/transparent_hugepage")
_SYSFS_HUGETLB = Path("/sys/kernel/mm/hugepages")


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
    shmem_huge_before = meminfo_kib("ShmemHugePages")
    start = time.perf_counter()
    fd = new_memfd(source.size, memfd_flags)
    with closed_on_error(fd):
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
            copy_mapping(mem, source.mem, options.copier, options.threads)
            end = time.perf_counter()
        finally:
            mem.close()
    huge_bytes = math.nan
    if huge_advice:
        huge_bytes = float((meminfo_kib("ShmemHugePages") - shmem_huge_before) * 1024)
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
    fd = new_memfd(source.size)
    with closed_on_error(fd), memoryview(source.mem) as view:
        copy_start = time.perf_counter()
        done = 0
        while done < source.size:
            done += os.write(fd, view[done : done + WRITE_CHUNK])
        end = time.perf_counter()
    return Converted(fd, end - start, math.nan, end - copy_start)


def convert_pwrite(source: AnonymousSource, options: Options) -> Converted:
    """``pwrite`` the source into the memfd, each thread writing its own slice in :data:`WRITE_CHUNK` calls."""
    start = time.perf_counter()
    fd = new_memfd(source.size)
    with closed_on_error(fd), memoryview(source.mem) as view:

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
    fd = new_memfd(source.size)
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
    fd = new_memfd(source.size)
    with closed_on_error(fd):
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
    fd = new_memfd(source.size)
    with closed_on_error(fd):
        mem = mmap.mmap(fd, source.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            fill_mapping(mem)
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
    page_kib = meminfo_kib("Hugepagesize")
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
    whether it goes through a pipe, the source it needs, whether it reads that source at all (``reads_source``
    false: the memory was a memfd from the start) and why it cannot run (``None`` when it can)."""

    convert: Callable[[Source, Options], Converted]
    copiers: tuple[str, ...] = ("kernel",)
    parallel: bool = False
    uses_pipe: bool = False
    remote: bool = False
    reads_source: bool = True
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
    "memfd-from-birth": Strategy(convert_memfd_from_birth, ("none",), reads_source=False),
    "thp-shmem": Strategy(convert_thp_shmem, _COPIERS, unavailable=thp_shmem_unavailable),
    "hugetlb": Strategy(convert_hugetlb, _COPIERS, unavailable=hugetlb_unavailable),
}
