"""A preserved memfd (Linux 7.2, file handler ``memfd-v2``): ``struct memfd_luo_ser`` (position, size, seals,
folio count and a ``kho_vmalloc`` descriptor) and the vmalloc'ed array of ``struct memfd_luo_folio_ser``
(pfn:52 and flags:12 packed in one u64, then the page index in the file) that it points to.

``memfd_pin_folios`` fills the file's holes before preservation, so the folios cover the whole file in index
order; a folio's size is not recorded here (the next kernel takes it from the radix tree).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.abi.alloc import PageAllocator
from workbench.abi.errors import AddressNotInMemory, CountMismatch, MalformedData
from workbench.abi.physmem import PAGE_SIZE, PhysicalMemory
from workbench.abi.vmalloc import KhoVmalloc, VmallocArea, encode_kho_vmalloc, read_kho_vmalloc

__all__ = [
    "MEMFD_LUO_FH_COMPATIBLE",
    "MEMFD_LUO_FOLIO_DIRTY",
    "MEMFD_LUO_FOLIO_UPTODATE",
    "MEMFD_LUO_ALL_SEALS",
    "MEMFD_SER_SIZE",
    "FOLIO_SER_SIZE",
    "MemfdSer",
    "Memfd",
    "pack_folio_array",
    "unpack_folio_array",
    "decode_memfd",
    "encode_memfd",
]

MEMFD_LUO_FH_COMPATIBLE = "memfd-v2"
MEMFD_LUO_FOLIO_DIRTY = 1 << 0
MEMFD_LUO_FOLIO_UPTODATE = 1 << 1
_KNOWN_FOLIO_FLAGS = MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE
# F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE | F_SEAL_EXEC
MEMFD_LUO_ALL_SEALS = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20

_HEAD = struct.Struct("<QQIIQ")  # pos, size, seals, flags, nr_folios; then struct kho_vmalloc
MEMFD_SER_SIZE = _HEAD.size + KhoVmalloc.SIZE
FOLIO_SER_SIZE = 16
_PFN_BITS = 52
_PFN_MASK = (1 << _PFN_BITS) - 1


@dataclass
class MemfdSer:
    """``struct memfd_luo_ser`` (48 bytes, packed)."""

    pos: int
    size: int
    seals: int
    flags: int
    nr_folios: int
    folios: KhoVmalloc

    @classmethod
    def unpack(cls, raw: bytes) -> MemfdSer:
        pos, size, seals, flags, nr_folios = _HEAD.unpack_from(raw)
        return cls(pos, size, seals, flags, nr_folios, KhoVmalloc.unpack(raw[_HEAD.size :]))

    def pack(self) -> bytes:
        return _HEAD.pack(self.pos, self.size, self.seals, self.flags, self.nr_folios) + self.folios.pack()


def pack_folio_array(pfns: np.ndarray, flags: np.ndarray, indexes: np.ndarray) -> np.ndarray:
    """An ``(n, 2)`` little-endian uint64 array laid out as ``struct memfd_luo_folio_ser[n]``."""
    pfns = np.asarray(pfns, dtype=np.uint64)
    flags = np.asarray(flags, dtype=np.uint64)
    if pfns.size and (int(pfns.max()) > _PFN_MASK or int(flags.max()) >= 1 << 12):
        raise ValueError("a folio pfn must fit in 52 bits and its flags in 12")
    out = np.empty((pfns.size, 2), dtype="<u8")
    out[:, 0] = pfns | (flags << np.uint64(_PFN_BITS))
    out[:, 1] = np.asarray(indexes, dtype=np.uint64)
    return out


def unpack_folio_array(raw: bytes | np.ndarray) -> pd.DataFrame:
    """DataFrame ``[pfn, flags, index]`` of a ``struct memfd_luo_folio_ser`` array."""
    words = np.frombuffer(raw, dtype="<u8").reshape(-1, 2) if not isinstance(raw, np.ndarray) else raw.reshape(-1, 2)
    first = words[:, 0].astype(np.uint64)
    return pd.DataFrame(
        {
            "pfn": first & np.uint64(_PFN_MASK),
            "flags": (first >> np.uint64(_PFN_BITS)).astype(np.uint16),
            "index": words[:, 1].astype(np.uint64),
        }
    )


@dataclass
class Memfd:
    """A decoded preserved memfd: its ``struct memfd_luo_ser`` at ``phys`` and its folios (the
    ``struct memfd_luo_folio_ser`` array as a DataFrame)."""

    phys: int
    ser: MemfdSer
    area: VmallocArea | None
    folios: pd.DataFrame  # pfn, flags, index

    @property
    def size(self) -> int:
        return self.ser.size

    def metadata_pages(self) -> list[int]:
        """The pages the memfd handler preserved for its metadata: the ser page, the array, the chunks."""
        pages = [self.phys - self.phys % PAGE_SIZE]
        if self.area is not None:
            pages += self.area.chunk_phys + [int(p) for p in self.area.page_phys]
        return pages

    def folio_pages(self, orders: Mapping[int, int] | None = None) -> np.ndarray:
        """Number of 4 KiB pages in each folio: from ``orders`` (pfn -> order, e.g. from the radix tree) when
        given, else from the gap to the next folio's index (folios cover the file in index order)."""
        index = self.folios["index"].to_numpy(dtype=np.int64)
        if orders is not None:
            return np.array([1 << orders[int(p)] for p in self.folios["pfn"]], dtype=np.int64)
        end = -(-self.size // PAGE_SIZE)
        return np.diff(np.append(index, max(end, int(index[-1]) + 1 if index.size else 0)))

    def file_pages(self, orders: Mapping[int, int] | None = None) -> pd.DataFrame:
        """Every 4 KiB page of the file: ``page`` (index in the file) and the ``pfn`` holding it."""
        counts = self.folio_pages(orders)
        starts = np.repeat(self.folios["index"].to_numpy(dtype=np.int64), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        base = np.repeat(self.folios["pfn"].to_numpy(dtype=np.int64), counts)
        return pd.DataFrame({"page": (starts + within).astype(np.uint64), "pfn": (base + within).astype(np.uint64)})


def decode_memfd(
    mem: PhysicalMemory,
    phys: int,
    what: str | None = None,
    check_folios_in_memory: bool = True,
    claimed: dict[int, str] | None = None,
) -> Memfd:
    """Decodes the ``memfd_luo_ser`` at ``phys`` and its folio array.

    Checks: seals and flags, ``nr_folios`` against the size and the vmalloc area, the chunk list (see
    :func:`~workbench.abi.vmalloc.read_kho_vmalloc`), folio flags, folio indexes inside the file and increasing
    (``memfd_pin_folios`` returns folios in file order) and, unless
    ``check_folios_in_memory`` is false, that every folio's first page is in ``mem``.

    :param claimed: the pages (chunks and blocks) of the other memfds' folio arrays in the same handover (page ->
        owner), which this memfd's must not share (see :func:`~workbench.abi.vmalloc.read_kho_vmalloc`)
    """
    what = what or f"memfd_luo_ser at {phys:#x}"
    ser = MemfdSer.unpack(mem.read(phys, MEMFD_SER_SIZE))
    if ser.seals & ~MEMFD_LUO_ALL_SEALS:
        raise MalformedData(f"{what}: seals {ser.seals:#x} include ones memfd-v2 cannot preserve", phys)
    if ser.flags:
        raise MalformedData(f"{what}: flags {ser.flags:#x} must be 0", phys)
    size_pages = -(-ser.size // PAGE_SIZE)
    if ser.nr_folios > size_pages:
        raise CountMismatch(f"{what}: {ser.nr_folios} folios for a file of {ser.size} bytes", phys)
    if ser.size and not ser.nr_folios:
        raise CountMismatch(f"{what}: a file of {ser.size} bytes with no folios (holes are filled)", phys)
    if not ser.nr_folios:
        if ser.folios.first:
            raise CountMismatch(f"{what}: nr_folios is 0 but a folio array is attached", phys)
        return Memfd(phys, ser, None, unpack_folio_array(b""))
    if ser.folios.first == 0:
        raise MalformedData(f"{what}: {ser.nr_folios} folios but no folio array (folios.first is 0)", phys)
    area = read_kho_vmalloc(mem, ser.folios, f"folio array of {what}", claimed)
    needed = ser.nr_folios * FOLIO_SER_SIZE
    if area.descriptor.total_pages * PAGE_SIZE < needed:
        raise CountMismatch(
            f"{what}: {ser.nr_folios} folios need {needed} bytes but the array has "
            f"{area.descriptor.total_pages} page(s)",
            ser.folios.first,
        )
    folios = unpack_folio_array(area.read(mem, needed))
    bad_flags = np.flatnonzero(folios["flags"].to_numpy() & np.uint16(0xFFF & ~_KNOWN_FOLIO_FLAGS))
    if bad_flags.size:
        i = int(bad_flags[0])
        raise MalformedData(f"{what}: folio {i} has unknown flags {int(folios['flags'].iat[i]):#x}", phys)
    beyond = np.flatnonzero(folios["index"].to_numpy() >= np.uint64(size_pages))
    if beyond.size:
        i = int(beyond[0])
        raise MalformedData(
            f"{what}: folio {i} is at page {int(folios['index'].iat[i])} of a {size_pages}-page file", phys
        )
    index = folios["index"].to_numpy()
    unordered = np.flatnonzero(index[1:] <= index[:-1])
    if unordered.size:
        i = int(unordered[0]) + 1
        raise MalformedData(
            f"{what}: folio {i} (page {int(index[i])}) does not follow folio {i - 1} (page {int(index[i - 1])}): "
            "folio indexes are not in increasing order",
            phys,
        )
    if check_folios_in_memory:
        for i, pfn in enumerate(folios["pfn"].tolist()):
            if pfn and not mem.contains(pfn * PAGE_SIZE, PAGE_SIZE):
                raise AddressNotInMemory(f"{what}: folio {i} (pfn {pfn:#x}) is outside memory", pfn * PAGE_SIZE)
    return Memfd(phys, ser, area, folios)


def encode_memfd(
    pfns: np.ndarray,
    indexes: np.ndarray,
    size: int,
    allocator: PageAllocator,
    *,
    pos: int = 0,
    seals: int = 0,
    flags: np.ndarray | None = None,
) -> Memfd:
    """Writes what ``memfd_luo_preserve`` writes for a file of ``size`` bytes held by these folios (flags default
    to dirty | uptodate, as 7.2 always sets them); returns it decoded, ``phys`` being the ser's address."""
    pfns = np.asarray(pfns, dtype=np.uint64)
    if flags is None:
        flags = np.full(pfns.size, MEMFD_LUO_FOLIO_DIRTY | MEMFD_LUO_FOLIO_UPTODATE, dtype=np.uint64)
    memory = allocator.memory
    phys = allocator.alloc_for(MEMFD_SER_SIZE)
    array = pack_folio_array(pfns, flags, indexes)
    area = encode_kho_vmalloc(array, allocator) if size and pfns.size else None
    desc = area.descriptor if area else KhoVmalloc(0, 0, 0, 0)
    ser = MemfdSer(pos, size, seals, 0, int(pfns.size) if size else 0, desc)
    memory.write(phys, ser.pack())
    return Memfd(phys, ser, area, unpack_folio_array(array if size else np.empty((0, 2), dtype="<u8")))
