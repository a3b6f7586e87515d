"""Page identity: whether a conversion moved the anonymous source's physical frames into the memfd or copied
their bytes into frames of its own.

The physical frame number (PFN) behind each virtual page comes from ``/proc/PID/pagemap`` (one 64-bit entry per
page: PFN in bits 0-54, present in bit 63) and what kind of page a frame is from ``/proc/kpageflags``. Both need
root: an unprivileged reader gets every PFN as 0, which :func:`frames_from_pagemap` refuses rather than counting
every page as moved. :func:`count_identity` compares the frames of the source before the conversion with those of
the memfd after it, and :data:`EXPLANATIONS` names, per strategy, the kernel code path that decides the outcome
(read in the lab kernel's ``fs/splice.c``, ``mm/shmem.c``, ``mm/process_vm_access.c``)."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np

from workbench.kernels.conversion.sources import AnonymousSource, RemoteSource, Source
from workbench.kernels.memfd_syscalls import buffer_address
from workbench.kernels.pagehash import PAGE_SIZE

__all__ = [
    "EXPLANATIONS",
    "KPF_HUGE",
    "KPF_THP",
    "PAGEMAP_PFN_MASK",
    "PAGEMAP_PRESENT",
    "PageIdentity",
    "count_identity",
    "explain",
    "frames_from_pagemap",
    "huge_frame_count",
    "mapping_frames",
    "read_kpageflags",
    "read_pagemap",
    "source_frames",
]

PAGEMAP_PFN_MASK = (1 << 55) - 1
"""Bits 0-54 of a pagemap entry: the page frame number, when the page is present."""
PAGEMAP_PRESENT = 1 << 63
"""Bit 63 of a pagemap entry: the page is present in RAM."""
KPF_HUGE = 17
"""The bit of a ``/proc/kpageflags`` entry set on a page of a hugetlb folio."""
KPF_THP = 22
"""The bit of a ``/proc/kpageflags`` entry set on a page of a transparent huge page."""

_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14; Python 3.11 lacks the name

EXPLANATIONS: dict[str, str] = {
    "copy-fresh": "copied: each first store faults in a new shmem folio (shmem_fault -> shmem_get_folio_gfp "
    "allocates it) and the copy loop writes the source's bytes into it",
    "copy-fallocate": "copied: shmem_fallocate allocates the memfd's folios up front; the copy loop writes the "
    "source's bytes into them",
    "copy-populate": "copied: MADV_POPULATE_WRITE faults in new shmem folios (shmem_fault); the copy loop writes "
    "the source's bytes into them",
    "thp-shmem": "copied: with shmem_enabled=advise and MADV_HUGEPAGE, shmem_fault allocates PMD-sized folios "
    "(shmem_huge_global_enabled, SHMEM_HUGE_ADVISE + VM_HUGEPAGE); the copy loop writes into them",
    "hugetlb": "copied: hugetlbfs faults in huge pages from the reserved pool (hugetlb_fault -> "
    "alloc_hugetlb_folio); the copy loop writes into them",
    "write": "copied: shmem_file_write_iter -> generic_perform_write copies the user buffer into folios that "
    "shmem_write_begin allocates (copy_folio_from_iter_atomic)",
    "pwrite": "copied: as write, shmem_file_write_iter -> generic_perform_write -> copy_folio_from_iter_atomic",
    "vmsplice-splice": "copied: vmsplice (iter_to_pipe) puts references to the source's own pages into the pipe, "
    "but shmem's splice_write is iter_file_splice_write, which hands the pipe buffers as a bio_vec to "
    "shmem_file_write_iter, and generic_perform_write copies them into new shmem folios",
    "vmsplice-gift": "copied: SPLICE_F_GIFT only marks the pipe buffers PIPE_BUF_FLAG_GIFT "
    "(user_page_pipe_buf_try_steal would allow stealing them), but iter_file_splice_write never calls "
    "pipe_buf_try_steal (only fuse's dev.c does) and ignores SPLICE_F_MOVE: generic_perform_write copies",
    "process_vm_readv": "copied: process_vm_rw_pages pins the other process's pages (pin_user_pages_remote) and "
    "copy_page_to_iter copies them into the memfd's mapping, whose shmem folios shmem_fault allocates",
    "memfd-from-birth": "nothing converted: the data was written into the memfd's own shmem folios from the start, "
    "so no anonymous page exists to move or copy",
}
"""Per strategy, the kernel code path that makes its memfd's pages moved or copied (lab kernel 7.2)."""


@dataclass(frozen=True)
class PageIdentity:
    """How a conversion's pages relate to their source: ``moved_pages`` kept their physical frame (the frame
    itself went into the memfd's page cache), ``copied_pages`` are in a different frame, ``absent_pages`` were not
    present on one side (no frame to compare)."""

    moved_pages: int
    copied_pages: int
    absent_pages: int = 0

    @property
    def compared_pages(self) -> int:
        """The pages present on both sides."""
        return self.moved_pages + self.copied_pages


def frames_from_pagemap(entries: np.ndarray) -> np.ndarray:
    """The PFN of each page from raw ``/proc/PID/pagemap`` entries (``uint64``): bits 0-54 where bit 63 says the
    page is present, 0 where it is not.

    :param entries: one 64-bit pagemap entry per virtual page
    :raises PermissionError: when a present page has PFN 0, which is how the kernel hides frames from a reader
        without ``CAP_SYS_ADMIN`` (run as root)"""
    entries = np.asarray(entries, dtype=np.uint64)
    present = (entries & np.uint64(PAGEMAP_PRESENT)) != 0
    frames = np.where(present, entries & np.uint64(PAGEMAP_PFN_MASK), np.uint64(0)).astype(np.uint64)
    if np.any(present & (frames == 0)):
        raise PermissionError(
            "pagemap shows present pages with PFN 0: the kernel hides physical frames from readers without "
            "CAP_SYS_ADMIN; run as root to count moved and copied pages"
        )
    return frames


def read_pagemap(address: int, pages: int, pid: int | str = "self") -> np.ndarray:
    """The raw pagemap entries of ``pages`` pages from virtual ``address`` in process ``pid``.

    :param address: a page-aligned virtual address in that process
    :param pages: how many pages
    :param pid: a process id, or ``"self"``"""
    if address % PAGE_SIZE:
        raise ValueError(f"address {address:#x} is not aligned to a {PAGE_SIZE}-byte page")
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        data = os.pread(pagemap.fileno(), pages * 8, address // PAGE_SIZE * 8)
    if len(data) != pages * 8:
        raise OSError(f"/proc/{pid}/pagemap gave {len(data) // 8} of {pages} entries at {address:#x}")
    return np.frombuffer(data, dtype=np.uint64).copy()


def mapping_frames(mem: mmap.mmap) -> np.ndarray:
    """The PFN behind each page of this process's mapping ``mem``, after faulting every page in for reading
    (a fresh mapping of a memfd has no page table entries yet, which pagemap would show as absent)."""
    mem.madvise(_MADV_POPULATE_READ)
    return frames_from_pagemap(read_pagemap(buffer_address(mem), len(mem) // PAGE_SIZE))


def source_frames(source: Source) -> np.ndarray:
    """The PFN behind each page of a conversion's source: this process's mapping, or the other process's memory
    for a :class:`~workbench.kernels.conversion.sources.RemoteSource` (its pagemap, read as root)."""
    if isinstance(source, AnonymousSource):
        return mapping_frames(source.mem)
    if isinstance(source, RemoteSource):
        return frames_from_pagemap(read_pagemap(source.address, source.size // PAGE_SIZE, source.pid))
    raise TypeError(f"not a conversion source: {type(source).__name__}")


def read_kpageflags(frames: np.ndarray) -> np.ndarray:
    """The ``/proc/kpageflags`` entry of each frame (0 for PFN 0, an absent page), read in runs of consecutive
    frames.

    :param frames: PFNs, as :func:`frames_from_pagemap` returns them"""
    frames = np.asarray(frames, dtype=np.uint64)
    flags = np.zeros(len(frames), dtype=np.uint64)
    present = np.flatnonzero(frames)
    if not len(present):
        return flags
    with open("/proc/kpageflags", "rb") as kpageflags:
        run_starts = np.flatnonzero(np.diff(frames[present].astype(np.int64), prepend=-2) != 1)
        run_ends = [*run_starts[1:], len(present)]
        for start, end in zip(run_starts, run_ends, strict=True):
            first = int(frames[present[start]])
            data = os.pread(kpageflags.fileno(), (end - start) * 8, first * 8)
            flags[present[start:end]] = np.frombuffer(data, dtype=np.uint64)
    return flags


def huge_frame_count(flags: np.ndarray) -> int:
    """How many of the pages whose ``/proc/kpageflags`` entries are ``flags`` belong to a huge folio (a
    transparent huge page or a hugetlb page)."""
    huge = np.uint64((1 << KPF_THP) | (1 << KPF_HUGE))
    return int(np.count_nonzero(np.asarray(flags, dtype=np.uint64) & huge))


def count_identity(source_frames: np.ndarray, memfd_frames: np.ndarray) -> PageIdentity:
    """Compares, page by page, the PFNs of the anonymous source before the conversion with those of the memfd
    after it.

    :param source_frames: the PFN of each source page (0: not present)
    :param memfd_frames: the PFN of the memfd's page at the same offset (0: not present)
    :raises ValueError: when the two do not cover the same number of pages"""
    source_frames = np.asarray(source_frames, dtype=np.uint64)
    memfd_frames = np.asarray(memfd_frames, dtype=np.uint64)
    if source_frames.shape != memfd_frames.shape or source_frames.ndim != 1:
        raise ValueError(
            f"the source has {source_frames.shape} frames and the memfd {memfd_frames.shape}: compare two "
            "one-dimensional arrays of the same length"
        )
    both = (source_frames != 0) & (memfd_frames != 0)
    moved = int(np.count_nonzero(both & (source_frames == memfd_frames)))
    compared = int(np.count_nonzero(both))
    return PageIdentity(moved, compared - moved, len(source_frames) - compared)


def explain(strategy: str, identity: PageIdentity) -> str:
    """What the counts of ``identity`` mean for ``strategy``: the kernel code path of :data:`EXPLANATIONS`, and
    a warning when the counts contradict it."""
    path = EXPLANATIONS.get(strategy, "no kernel code path recorded for this strategy")
    expects_copy = path.startswith("copied")
    if expects_copy and identity.moved_pages:
        return f"{identity.moved_pages} pages kept their frame, which the code path does not explain: {path}"
    return path
