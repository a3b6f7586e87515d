"""Two alternatives to the 7.2 radix tree for the preserved-memory map, for comparing designs (not kernel ABI).

* **Flat array**: ``struct { u64 count; u64 reserved; u64 entry[count]; }`` in physically contiguous pages, one
  entry per folio with the pfn in bits 0-51 and the order in bits 52-63 (the packing of memfd_luo_folio_ser).
* **Sparse bitmaps** ("xarray-like"): per order, a sparse map from a 4096-folio window to a 512-byte bitmap of
  that window, as KHO kept it in memory before the radix tree (an xarray of bitmaps). It is serialized as a
  linked list of one-page chunks, ``struct { u64 next; u32 order; u32 count; }`` then ``count`` pairs
  ``{ u64 first_pfn; u64 bitmap_phys; }``; the bitmaps are packed eight to a page.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np

from workbench.abi._bits import cttz, popcount
from workbench.abi.alloc import PageAllocator
from workbench.abi.errors import AddressNotInMemory, CountMismatch, LoopDetected, MalformedData, TruncatedData
from workbench.abi.physmem import PAGE_SIZE, PhysicalMemory
from workbench.abi.radix import MAX_ORDER

__all__ = [
    "FLAT_HEADER_SIZE",
    "flat_array_bytes",
    "encode_flat_array",
    "decode_flat_array",
    "pack_flat_entries",
    "unpack_flat_entries",
    "SPARSE_BITMAP_FOLIOS",
    "SPARSE_CHUNK_ENTRIES",
    "SparseBitmaps",
    "sparse_bitmaps_from_folios",
    "sparse_bitmaps_bytes",
    "encode_sparse_bitmaps",
    "decode_sparse_bitmaps",
]

_PFN_BITS = 52
_PFN_MASK = (1 << _PFN_BITS) - 1
FLAT_HEADER_SIZE = 16


def flat_array_bytes(folios: int) -> int:
    """Bytes of a flat array of ``folios`` entries (before rounding to pages)."""
    return FLAT_HEADER_SIZE + 8 * folios


@numba.njit(cache=True, nogil=True)
def _pack_flat(pfns, orders, out):
    for i in range(pfns.shape[0]):
        out[i] = pfns[i] | (np.uint64(orders[i]) << np.uint64(_PFN_BITS))


@numba.njit(cache=True, nogil=True)
def _unpack_flat(words, pfns, orders):
    """Splits the entries; returns the index of the first invalid one (order too big or pfn misaligned) or -1."""
    mask = np.uint64(_PFN_MASK)
    for i in range(words.shape[0]):
        w = words[i]
        order = w >> np.uint64(_PFN_BITS)
        pfn = w & mask
        if order > MAX_ORDER or pfn & ((np.uint64(1) << order) - np.uint64(1)):
            return i
        pfns[i] = pfn
        orders[i] = np.uint8(order)
    return -1


def pack_flat_entries(pfns: np.ndarray, orders: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The uint64 entries for these folios (into ``out`` when given)."""
    pfns = np.ascontiguousarray(pfns, dtype=np.uint64)
    orders = np.ascontiguousarray(orders, dtype=np.uint8)
    out = np.empty(pfns.size, dtype=np.uint64) if out is None else out[: pfns.size]
    _pack_flat(pfns, orders, out)
    return out


def unpack_flat_entries(words: np.ndarray, phys: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(pfn, order)`` of flat-array entries; :class:`MalformedData` for an invalid entry."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    pfns = np.empty(words.size, dtype=np.uint64)
    orders = np.empty(words.size, dtype=np.uint8)
    bad = _unpack_flat(words, pfns, orders)
    if bad >= 0:
        where = f" at {phys + FLAT_HEADER_SIZE + 8 * bad:#x}" if phys is not None else ""
        raise MalformedData(f"flat array entry {bad}{where} ({int(words[bad]):#x}) is not a valid folio", phys)
    return pfns, orders


def encode_flat_array(pfns: np.ndarray, orders: np.ndarray, allocator: PageAllocator) -> int:
    """Writes a flat array in contiguous pages from ``allocator``; returns its address."""
    entries = pack_flat_entries(pfns, orders)
    npages = -(-flat_array_bytes(entries.size) // PAGE_SIZE)
    phys = allocator.alloc_run(npages)
    allocator.memory.write(phys, struct.pack("<QQ", entries.size, 0))
    allocator.memory.write(phys + FLAT_HEADER_SIZE, entries.view(np.uint8))
    return phys


def decode_flat_array(mem: PhysicalMemory, phys: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pfn, order)`` arrays of the flat array at ``phys``."""
    count, _ = struct.unpack("<QQ", mem.read(phys, FLAT_HEADER_SIZE))
    if not mem.contains(phys, flat_array_bytes(count)):
        raise TruncatedData(f"flat array at {phys:#x} claims {count} entries, which run past memory", phys)
    words = np.frombuffer(mem.view(phys + FLAT_HEADER_SIZE, 8 * count), dtype="<u8")
    return unpack_flat_entries(words, phys)


SPARSE_BITMAP_FOLIOS = 4096  # folios per 512-byte bitmap
_BITMAP_WORDS = SPARSE_BITMAP_FOLIOS // 64
_BITMAP_BYTES = SPARSE_BITMAP_FOLIOS // 8
_CHUNK_HEADER = struct.Struct("<QII")
SPARSE_CHUNK_ENTRIES = (PAGE_SIZE - _CHUNK_HEADER.size) // 16


@dataclass
class SparseBitmaps:
    """A sparse per-order bitmap map: bitmap ``i`` covers the folios of order ``orders[i]`` starting at pfn
    ``first_pfns[i]`` (aligned to 4096 such folios)."""

    orders: np.ndarray  # uint8
    first_pfns: np.ndarray  # uint64
    bitmaps: np.ndarray  # (n, 64) uint64
    chunk_phys: list[int] | None = None

    @property
    def metadata_bytes(self) -> int:
        return sparse_bitmaps_bytes(self.orders)

    def folios(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pfn, order)`` of every folio, bitmap by bitmap."""
        total = int(_row_popcounts(self.bitmaps).sum())
        pfns = np.empty(total, dtype=np.uint64)
        orders = np.empty(total, dtype=np.uint8)
        if total:
            _decode_rows(self.bitmaps, self.first_pfns, self.orders, 0, self.orders.size, pfns, orders)
        return pfns, orders

    def iter_folios(self, max_folios: int = 1 << 22) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The folios of :meth:`folios` in pieces of at most ``max(max_folios, 4096)``; arrays are reused."""
        counts = _row_popcounts(self.bitmaps)
        capacity = max(max_folios, SPARSE_BITMAP_FOLIOS)
        pfns = np.empty(capacity, dtype=np.uint64)
        orders = np.empty(capacity, dtype=np.uint8)
        ends = np.cumsum(counts)
        first = 0
        while first < counts.size:
            base = ends[first] - counts[first]
            last = int(np.searchsorted(ends, base + capacity, side="right"))
            n = _decode_rows(self.bitmaps, self.first_pfns, self.orders, first, last, pfns, orders)
            yield pfns[:n], orders[:n]
            first = last


@numba.njit(cache=True, nogil=True)
def _row_popcounts(bitmaps):
    counts = np.zeros(bitmaps.shape[0], dtype=np.int64)
    for i in range(bitmaps.shape[0]):
        c = 0
        for w in range(bitmaps.shape[1]):
            x = bitmaps[i, w]
            c += popcount(x)
        counts[i] = c
    return counts


@numba.njit(cache=True, nogil=True)
def _decode_rows(bitmaps, first_pfns, orders, first, last, pfn_out, order_out):
    n = 0
    one = np.uint64(1)
    for row in range(first, last):
        order = np.uint64(orders[row])
        base = first_pfns[row]
        for w in range(bitmaps.shape[1]):
            word = bitmaps[row, w]
            while word:
                pfn_out[n] = base + ((np.uint64(w * 64) + cttz(word)) << order)
                order_out[n] = np.uint8(order)
                n += 1
                word &= word - one
    return n


@numba.njit(cache=True, nogil=True)
def _fill_rows(pfns, orders, row_of, bitmaps):
    for i in range(pfns.shape[0]):
        bit = (pfns[i] >> np.uint64(orders[i])) & np.uint64(SPARSE_BITMAP_FOLIOS - 1)
        bitmaps[row_of[i], bit >> np.uint64(6)] |= np.uint64(1) << (bit & np.uint64(63))


def sparse_bitmaps_from_folios(pfns: np.ndarray, orders: np.ndarray) -> SparseBitmaps:
    """The sparse map holding these folios, bitmaps sorted by (order, first pfn)."""
    pfns = np.ascontiguousarray(pfns, dtype=np.uint64)
    orders = np.ascontiguousarray(orders, dtype=np.uint8)
    window = (pfns >> orders.astype(np.uint64)) // np.uint64(SPARSE_BITMAP_FOLIOS)
    ids = np.stack([orders.astype(np.uint64), window], axis=1)
    unique, row_of = np.unique(ids, axis=0, return_inverse=True)
    bitmaps = np.zeros((unique.shape[0], _BITMAP_WORDS), dtype=np.uint64)
    if pfns.size:
        _fill_rows(pfns, orders, row_of.reshape(-1).astype(np.int64), bitmaps)
    row_orders = unique[:, 0].astype(np.uint8)
    first = (unique[:, 1] * np.uint64(SPARSE_BITMAP_FOLIOS)) << row_orders.astype(np.uint64)
    return SparseBitmaps(row_orders, first.astype(np.uint64), bitmaps)


def sparse_bitmaps_bytes(orders: np.ndarray) -> int:
    """Bytes (whole pages) of the serialized map with one bitmap per entry of ``orders``."""
    orders = np.asarray(orders)
    chunks = sum(-(-int(np.count_nonzero(orders == o)) // SPARSE_CHUNK_ENTRIES) for o in np.unique(orders))
    bitmap_pages = -(-orders.size * _BITMAP_BYTES // PAGE_SIZE)
    return (chunks + bitmap_pages) * PAGE_SIZE


def encode_sparse_bitmaps(sparse: SparseBitmaps, allocator: PageAllocator) -> int:
    """Serializes the map (bitmap pages first, then the chunk list); returns the first chunk's address."""
    memory = allocator.memory
    n = sparse.orders.size
    per_page = PAGE_SIZE // _BITMAP_BYTES
    bitmap_phys = np.empty(n, dtype=np.uint64)
    if n:
        first = allocator.alloc_run(-(-n // per_page))
        bitmap_phys[:] = first + np.arange(n, dtype=np.uint64) * np.uint64(_BITMAP_BYTES)
        memory.write(first, np.ascontiguousarray(sparse.bitmaps, dtype="<u8").view(np.uint8))
    chunks: list[tuple[int, int, np.ndarray]] = []
    for order in np.unique(sparse.orders).tolist():
        rows = np.flatnonzero(sparse.orders == order)
        for start in range(0, rows.size, SPARSE_CHUNK_ENTRIES):
            chunks.append((allocator.alloc(), order, rows[start : start + SPARSE_CHUNK_ENTRIES]))
    for i, (phys, order, rows) in enumerate(chunks):
        next_phys = chunks[i + 1][0] if i + 1 < len(chunks) else 0
        pairs = np.stack([sparse.first_pfns[rows], bitmap_phys[rows]], axis=1).astype("<u8")
        memory.write(phys, _CHUNK_HEADER.pack(next_phys, order, rows.size) + pairs.tobytes())
    sparse.chunk_phys = [c[0] for c in chunks]
    return chunks[0][0] if chunks else 0


def decode_sparse_bitmaps(mem: PhysicalMemory, head_phys: int) -> SparseBitmaps:
    """Reads the chunk list at ``head_phys`` and the bitmaps it points to, checking every pointer and count."""
    orders: list[np.ndarray] = []
    firsts: list[np.ndarray] = []
    bitmap_phys: list[np.ndarray] = []
    chunks: list[int] = []
    seen: set[int] = set()
    phys, came_from = head_phys, "the head pointer"
    while phys:
        if phys in seen:
            raise LoopDetected(f"sparse bitmap map: {came_from} points back to chunk {phys:#x}", phys)
        if phys % PAGE_SIZE or not mem.contains(phys, PAGE_SIZE):
            raise AddressNotInMemory(
                f"sparse bitmap map: chunk {phys:#x} (from {came_from}) is not a page in memory", phys
            )
        seen.add(phys)
        chunks.append(phys)
        page = mem.read(phys, PAGE_SIZE)
        next_phys, order, count = _CHUNK_HEADER.unpack_from(page)
        if count > SPARSE_CHUNK_ENTRIES:
            raise CountMismatch(
                f"sparse bitmap chunk {phys:#x} claims {count} entries, at most {SPARSE_CHUNK_ENTRIES} fit", phys
            )
        if order > MAX_ORDER:
            raise MalformedData(f"sparse bitmap chunk {phys:#x} has order {order}", phys)
        pairs = np.frombuffer(page, dtype="<u8", count=2 * count, offset=_CHUNK_HEADER.size).reshape(-1, 2)
        misaligned = np.flatnonzero(pairs[:, 0] % np.uint64(SPARSE_BITMAP_FOLIOS << order))
        if misaligned.size:
            raise MalformedData(
                f"sparse bitmap chunk {phys:#x}: entry {int(misaligned[0])} starts at an unaligned pfn", phys
            )
        orders.append(np.full(count, order, dtype=np.uint8))
        firsts.append(pairs[:, 0].astype(np.uint64))
        bitmap_phys.append(pairs[:, 1].astype(np.uint64))
        came_from, phys = f"chunk {phys:#x}", next_phys
    all_phys = np.concatenate(bitmap_phys) if bitmap_phys else np.empty(0, dtype=np.uint64)
    misaligned = np.flatnonzero(all_phys % np.uint64(_BITMAP_BYTES))
    if misaligned.size:
        p = int(all_phys[misaligned[0]])
        raise MalformedData(f"sparse bitmap map: bitmap {p:#x} is not {_BITMAP_BYTES}-byte aligned", p)
    page_ids, page_of = np.unique(all_phys // np.uint64(PAGE_SIZE), return_inverse=True)
    pages = np.empty((page_ids.size, PAGE_SIZE // 8), dtype=np.uint64)
    for j, page in enumerate((page_ids * np.uint64(PAGE_SIZE)).tolist()):
        if not mem.contains(page, PAGE_SIZE):
            raise AddressNotInMemory(f"sparse bitmap map: bitmap page {page:#x} is outside memory", page)
        pages[j] = np.frombuffer(mem.view(page, PAGE_SIZE), dtype="<u8")
    slot = ((all_phys % np.uint64(PAGE_SIZE)) // np.uint64(_BITMAP_BYTES)).astype(np.int64)
    bitmaps = pages.reshape(page_ids.size, -1, _BITMAP_WORDS)[page_of.reshape(-1), slot]
    return SparseBitmaps(
        np.concatenate(orders) if orders else np.empty(0, np.uint8),
        np.concatenate(firsts) if firsts else np.empty(0, np.uint64),
        bitmaps,
        chunks,
    )
