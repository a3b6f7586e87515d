"""Preserved vmalloc areas (Linux 7.2 ``struct kho_vmalloc``): a descriptor pointing to a list of one-page
``struct kho_vmalloc_chunk``, each a ``next`` pointer and up to 511 zero-terminated physical addresses of the
area's pages (in blocks of ``2**order`` pages). memfd keeps its folio array in such an area.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from workbench.abi.alloc import PageAllocator
from workbench.abi.errors import AddressNotInMemory, CountMismatch, LoopDetected, MalformedData, TruncatedData
from workbench.abi.physmem import PAGE_SIZE, PhysicalMemory

__all__ = [
    "KHO_VMALLOC_ALLOC",
    "KHO_VMALLOC_HUGE_VMAP",
    "CHUNK_ENTRIES",
    "KhoVmalloc",
    "VmallocArea",
    "read_kho_vmalloc",
    "encode_kho_vmalloc",
    "vmalloc_chunk_count",
]

KHO_VMALLOC_ALLOC = 0x0001
KHO_VMALLOC_HUGE_VMAP = 0x0002
_KNOWN_FLAGS = KHO_VMALLOC_ALLOC | KHO_VMALLOC_HUGE_VMAP
CHUNK_ENTRIES = (PAGE_SIZE - 8) // 8  # KHO_VMALLOC_SIZE: 511 addresses after the 8-byte header
_MAX_VMALLOC_ORDER = 18  # far above what vmalloc uses (PMD = 9); bounds a garbage descriptor


@dataclass
class KhoVmalloc:
    """``struct kho_vmalloc``: the descriptor stored inside the owner's own structure (16 bytes)."""

    first: int
    total_pages: int
    flags: int
    order: int

    FORMAT = struct.Struct("<QIHH")
    SIZE = FORMAT.size

    @classmethod
    def unpack(cls, data: bytes) -> KhoVmalloc:
        return cls(*cls.FORMAT.unpack_from(data))

    def pack(self) -> bytes:
        return self.FORMAT.pack(self.first, self.total_pages, self.flags, self.order)


@dataclass
class VmallocArea:
    """A decoded vmalloc preservation: its ``struct kho_vmalloc_chunk`` pages and the address of each block of
    ``2**order`` pages they list."""

    descriptor: KhoVmalloc
    chunk_phys: list[int]
    block_phys: np.ndarray  # uint64, in area order

    @property
    def page_phys(self) -> np.ndarray:
        """Physical address of every page of the area, in order."""
        step = np.arange(1 << self.descriptor.order, dtype=np.uint64) * np.uint64(PAGE_SIZE)
        return (self.block_phys[:, None] + step[None, :]).reshape(-1)

    def preserved_folios(self) -> list[tuple[int, int]]:
        """``(pfn, order)`` entries the kernel preserves for this area: chunks, then the area's blocks."""
        chunks = [(p // PAGE_SIZE, 0) for p in self.chunk_phys]
        return chunks + [(int(p) // PAGE_SIZE, self.descriptor.order) for p in self.block_phys]

    def read(self, mem: PhysicalMemory, nbytes: int | None = None) -> bytes:
        """The first ``nbytes`` (default: all) bytes of the area's contents."""
        total = self.descriptor.total_pages * PAGE_SIZE
        nbytes = total if nbytes is None else nbytes
        if nbytes > total:
            raise TruncatedData(
                f"vmalloc area at chunk {self.descriptor.first:#x} holds {total} bytes, {nbytes} were asked for",
                self.descriptor.first,
            )
        if nbytes == 0:
            return b""
        out = np.empty(nbytes, dtype=np.uint8)
        block = PAGE_SIZE << self.descriptor.order
        needed = -(-nbytes // block)
        starts = self.block_phys[:needed].astype(np.int64)
        # Read physically consecutive blocks in one go.
        breaks = np.flatnonzero(np.diff(starts) != block) + 1
        for first, last in zip(np.r_[0, breaks].tolist(), np.r_[breaks, needed].tolist(), strict=True):
            begin = first * block
            n = min(last * block, nbytes) - begin
            out[begin : begin + n] = np.frombuffer(mem.view(int(starts[first]), n), dtype=np.uint8)
        return out.tobytes()


def read_kho_vmalloc(
    mem: PhysicalMemory, desc: KhoVmalloc, what: str = "kho_vmalloc", claimed: dict[int, str] | None = None
) -> VmallocArea:
    """Follows the chunk list of ``desc`` with the checks of ``kho_restore_vmalloc`` and more: known flags, no
    loop, every chunk and block a page-aligned range inside memory, no block listed twice, exactly ``total_pages``
    pages listed.

    :param what: names the area in error messages
    :param claimed: the pages of other areas of the same handover (page -> the area it belongs to); a chunk or block
        page found there is :class:`LoopDetected` (areas never share pages, and shared ones would be read once per
        area); this area's pages are added to it
    """
    if desc.flags & ~_KNOWN_FLAGS:
        raise MalformedData(f"{what}: unknown vmalloc flags {desc.flags:#x}", desc.first or None)
    if desc.order > _MAX_VMALLOC_ORDER:
        raise MalformedData(f"{what}: vmalloc page order {desc.order} is implausible", desc.first or None)
    if desc.first == 0:
        if desc.total_pages:
            raise CountMismatch(f"{what}: no chunk list but total_pages is {desc.total_pages}", None)
        return VmallocArea(desc, [], np.empty(0, dtype=np.uint64))
    contig = 1 << desc.order
    max_chunks = desc.total_pages // contig // CHUNK_ENTRIES + 1
    chunks: list[int] = []
    seen: set[int] = set()
    blocks: list[int] = []
    listed: set[int] = set()
    phys, came_from = desc.first, f"{what}.first"
    while phys:
        if phys in seen:
            raise LoopDetected(f"{what}: {came_from} points back to chunk {phys:#x}: the chunk list loops", phys)
        if phys % PAGE_SIZE:
            raise MalformedData(f"{what}: chunk {phys:#x} (from {came_from}) is not page aligned", phys)
        if not mem.contains(phys, PAGE_SIZE):
            raise AddressNotInMemory(f"{what}: chunk {phys:#x} (from {came_from}) is outside memory", phys)
        if len(chunks) == max_chunks:
            raise CountMismatch(
                f"{what}: chunk {phys:#x} is chunk #{len(chunks) + 1}, more than {desc.total_pages} pages need",
                phys,
            )
        _claim(claimed, phys, 1, f"chunk {phys:#x}", what)
        chunks.append(phys)
        seen.add(phys)
        words = np.frombuffer(mem.read(phys, PAGE_SIZE), dtype="<u8")
        entries = words[1:]
        zeros = np.flatnonzero(entries == 0)
        entries = entries[: zeros[0]] if zeros.size else entries
        _check_blocks(mem, entries, desc, len(blocks), phys, what)
        for i, block in enumerate(entries.tolist()):
            if block in listed:
                raise MalformedData(
                    f"{what}: page {block:#x} (entry {i} of chunk {phys:#x}) is listed twice in the area", phys
                )
            listed.add(block)
            _claim(claimed, block, contig, f"page {block:#x} (entry {i} of chunk {phys:#x})", what)
        blocks.extend(entries.tolist())
        came_from, phys = f"chunk {phys:#x}", int(words[0])
    if len(blocks) * contig != desc.total_pages:
        raise CountMismatch(
            f"{what}: the chunks list {len(blocks) * contig} pages but total_pages is {desc.total_pages}",
            desc.first,
        )
    return VmallocArea(desc, chunks, np.array(blocks, dtype=np.uint64))


def _claim(claimed: dict[int, str] | None, phys: int, pages: int, where: str, what: str) -> None:
    if claimed is None:
        return
    for page in range(phys, phys + pages * PAGE_SIZE, PAGE_SIZE):
        if page in claimed:
            raise LoopDetected(f"{what}: {where} is also a page of {claimed[page]}: two areas share pages", page)
        claimed[page] = what


def _in_memory(mem: PhysicalMemory, starts: np.ndarray, size: int) -> np.ndarray:
    inside = np.zeros(starts.size, dtype=bool)
    for r in mem.ranges:
        inside |= (starts >= np.uint64(r.phys_start)) & (starts + np.uint64(size) <= np.uint64(r.phys_end))
    for i in np.flatnonzero(~inside).tolist():  # may still span two adjacent ranges
        inside[i] = mem.contains(int(starts[i]), size)
    return inside


def _check_blocks(
    mem: PhysicalMemory, entries: np.ndarray, desc: KhoVmalloc, listed: int, chunk: int, what: str
) -> None:
    block_bytes = PAGE_SIZE << desc.order
    misaligned = np.flatnonzero(entries % np.uint64(block_bytes))
    if misaligned.size:
        i = int(misaligned[0])
        raise MalformedData(
            f"{what}: page {int(entries[i]):#x} (entry {i} of chunk {chunk:#x}) is not aligned to order {desc.order}",
            chunk,
        )
    outside = np.flatnonzero(~_in_memory(mem, entries, block_bytes))
    if outside.size:
        i = int(outside[0])
        raise AddressNotInMemory(
            f"{what}: page {int(entries[i]):#x} (entry {i} of chunk {chunk:#x}) is outside memory", int(entries[i])
        )
    if (listed + entries.size) << desc.order > desc.total_pages:
        i = (desc.total_pages >> desc.order) - listed
        raise CountMismatch(
            f"{what}: entry {i} of chunk {chunk:#x} is beyond the {desc.total_pages} pages the descriptor declares",
            chunk,
        )


def vmalloc_chunk_count(blocks: int) -> int:
    """Chunk pages ``kho_preserve_vmalloc`` uses for an area of ``blocks`` blocks (a new chunk is started as
    soon as one is full, so an exact multiple of 511 ends with an empty chunk)."""
    return blocks // CHUNK_ENTRIES + 1


def encode_kho_vmalloc(
    data: bytes | np.ndarray, allocator: PageAllocator, order: int = 0, flags: int = KHO_VMALLOC_ALLOC
) -> VmallocArea:
    """Places ``data`` in fresh pages (in blocks of ``2**order``) and describes them as ``kho_preserve_vmalloc``
    does; returns the area, whose ``descriptor`` is to be stored by the owner."""
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    block_bytes = PAGE_SIZE << order
    nblocks = max(1, -(-raw.size // block_bytes))
    memory = allocator.memory
    # vmalloc pages may lie anywhere; taking them as one run only makes the copy cheaper.
    first = allocator.alloc_run(nblocks << order) if order == 0 else None
    blocks = []
    for i in range(nblocks):
        phys = first + i * block_bytes if first is not None else allocator.alloc(order)
        blocks.append(phys)
    if first is not None:
        memory.write(first, raw)
    else:
        for i, phys in enumerate(blocks):
            memory.write(phys, raw[i * block_bytes : (i + 1) * block_bytes])
    chunks = [allocator.alloc() for _ in range(vmalloc_chunk_count(nblocks))]
    for c, chunk in enumerate(chunks):
        entries = blocks[c * CHUNK_ENTRIES : (c + 1) * CHUNK_ENTRIES]
        next_chunk = chunks[c + 1] if c + 1 < len(chunks) else 0
        memory.write(chunk, np.array([next_chunk, *entries], dtype="<u8"))
    desc = KhoVmalloc(chunks[0], nblocks << order, flags, order)
    return VmallocArea(desc, chunks, np.array(blocks, dtype=np.uint64))
