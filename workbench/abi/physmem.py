"""Readers of guest physical memory: an in-memory buffer, a QEMU RAM file, an ELF vmcore, a drgn program.

All of them answer ``read(phys_addr, size)`` for addresses inside their :class:`MemoryRange` list and raise
:class:`~workbench.abi.errors.AddressNotInMemory`, naming the address, for anything else: no reader returns bytes
from past the end of its buffer or file, and a read that crosses a hole between ranges fails as a whole.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.abi.errors import AddressNotInMemory, IncompatibleFormat, MalformedData, TruncatedData
from workbench.elf import PT_LOAD, ElfError, ElfFile, NotElf, TruncatedElf

__all__ = [
    "PAGE_SIZE",
    "MemoryRange",
    "PhysicalMemory",
    "BufferMemory",
    "RawRamFile",
    "ElfVmcore",
    "DrgnMemory",
    "q35_ram_ranges",
    "system_ram_ranges",
]

PAGE_SIZE = 4096
GiB = 1 << 30


@dataclass(frozen=True)
class MemoryRange:
    """``size`` bytes of physical memory starting at ``phys_start``, found at ``file_offset`` in the backing store."""

    phys_start: int
    size: int
    file_offset: int = 0

    @property
    def phys_end(self) -> int:
        return self.phys_start + self.size

    def __str__(self) -> str:
        return f"[{self.phys_start:#x}, {self.phys_end:#x})"


def _as_ranges(ranges: Iterable[MemoryRange | tuple[int, int, int]]) -> tuple[MemoryRange, ...]:
    out = []
    for r in ranges:
        if not isinstance(r, MemoryRange):
            phys_start, file_offset, size = r
            r = MemoryRange(int(phys_start), int(size), int(file_offset))
        if r.phys_start < 0 or r.size < 0 or r.file_offset < 0:
            raise ValueError(f"memory range {r} has a negative start, size or file offset")
        if r.size:
            out.append(r)
    out.sort(key=lambda r: r.phys_start)
    for a, b in zip(out, out[1:], strict=False):
        if b.phys_start < a.phys_end:
            raise ValueError(f"memory ranges {a} and {b} overlap")
    return tuple(out)


class PhysicalMemory(ABC):
    """Read-only access to physical memory made of one or more :class:`MemoryRange`.

    Subclasses implement :meth:`_read_in_range`; the checks (address inside a range, reads crossing into an
    adjacent range) live here once.
    """

    def __init__(self, ranges: Iterable[MemoryRange | tuple[int, int, int]]):
        self._ranges = _as_ranges(ranges)
        self._starts = [r.phys_start for r in self._ranges]

    @property
    def ranges(self) -> tuple[MemoryRange, ...]:
        return self._ranges

    @property
    def size(self) -> int:
        """Total bytes of physical memory available (holes between ranges excluded)."""
        return sum(r.size for r in self._ranges)

    def _range_index(self, phys: int) -> int | None:
        i = bisect.bisect_right(self._starts, phys) - 1
        if i >= 0 and phys < self._ranges[i].phys_end:
            return i
        return None

    def contains(self, phys: int, size: int = 1) -> bool:
        """Whether every byte of ``[phys, phys + size)`` is in memory."""
        return self._pieces(phys, size) is not None

    def _pieces(self, phys: int, size: int) -> list[tuple[MemoryRange, int, int]] | None:
        if phys < 0:
            return None
        i = self._range_index(phys)
        if i is None:
            return None
        pieces = []
        while size > 0:
            r = self._ranges[i]
            offset = phys - r.phys_start
            n = min(size, r.size - offset)
            pieces.append((r, offset, n))
            phys += n
            size -= n
            if size:
                i += 1
                if i == len(self._ranges) or self._ranges[i].phys_start != phys:
                    return None
        return pieces

    def _checked_pieces(self, phys: int, size: int) -> list[tuple[MemoryRange, int, int]]:
        if size < 0:
            raise ValueError(f"negative read size {size} at physical address {phys:#x}")
        pieces = self._pieces(phys, size)
        if pieces is None:
            raise AddressNotInMemory(
                f"physical read of {size} bytes at {phys:#x} is outside memory "
                f"(available: {', '.join(map(str, self._ranges)) or 'nothing'})",
                phys,
            )
        return pieces

    def read(self, phys: int, size: int) -> bytes:
        """``size`` bytes at physical address ``phys``; :class:`AddressNotInMemory` if any byte is missing."""
        if size == 0:
            return b""
        pieces = self._checked_pieces(phys, size)
        return b"".join(bytes(self._read_in_range(r, off, n)) for r, off, n in pieces)

    def view(self, phys: int, size: int) -> memoryview:
        """Like :meth:`read` but, where the backing store allows, without copying."""
        return memoryview(self.read(phys, size))

    def read_u64(self, phys: int) -> int:
        return struct.unpack("<Q", self.read(phys, 8))[0]

    @abstractmethod
    def _read_in_range(self, r: MemoryRange, offset: int, size: int) -> bytes | memoryview:
        """``size`` bytes at ``offset`` inside range ``r`` (already checked to fit)."""

    def close(self) -> None:  # noqa: B027 (most readers hold nothing to release)
        """Releases files and mappings; the reader must not be used afterwards."""

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(str, self._ranges))})"


class BufferMemory(PhysicalMemory):
    """Physical memory held in a numpy byte array, starting at physical address ``base``.

    ``BufferMemory(size, base=...)`` makes zeroed, writable memory for encoders; ``BufferMemory(data, base=...)``
    wraps existing bytes (writable when ``data`` is).
    """

    def __init__(self, data: int | bytes | bytearray | memoryview | np.ndarray, base: int = 0):
        if isinstance(data, int):
            self._array = np.zeros(data, dtype=np.uint8)
        elif isinstance(data, np.ndarray):
            self._array = data.reshape(-1).view(np.uint8)
        else:
            self._array = np.frombuffer(data, dtype=np.uint8)
        self.base = base
        super().__init__([MemoryRange(base, self._array.size, 0)])

    @property
    def array(self) -> np.ndarray:
        """The backing bytes; ``array[phys - base]`` is the byte at ``phys``."""
        return self._array

    def _read_in_range(self, r: MemoryRange, offset: int, size: int) -> memoryview:
        return memoryview(self._array[offset : offset + size])

    def view(self, phys: int, size: int) -> memoryview:
        if size == 0:
            return memoryview(b"")
        ((r, offset, n),) = self._checked_pieces(phys, size)
        return memoryview(self._array[offset : offset + n])

    def write(self, phys: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Stores ``data`` at physical address ``phys`` (:class:`AddressNotInMemory` if it does not fit)."""
        src = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
        src = src.reshape(-1)
        if src.size == 0:
            return
        ((r, offset, n),) = self._checked_pieces(phys, src.size)
        self._array[offset : offset + n] = src

    def write_u64(self, phys: int, value: int) -> None:
        self.write(phys, struct.pack("<Q", value))

    def words(self, phys: int, count: int) -> np.ndarray:
        """A writable little-endian uint64 view of ``count`` words at ``phys`` (8-byte aligned)."""
        if (phys - self.base) % 8:
            raise ValueError(f"physical address {phys:#x} is not 8-byte aligned")
        ((r, offset, n),) = self._checked_pieces(phys, count * 8)
        return self._array[offset : offset + n].view("<u8")


class _MappedFile(PhysicalMemory):
    """Physical memory whose ranges are slices of one file, mapped read-only."""

    def __init__(self, path: str | os.PathLike[str], ranges: Iterable[MemoryRange | tuple[int, int, int]]):
        self.path = Path(path)
        self._file = open(self.path, "rb")  # noqa: SIM115 (kept open for the mapping's lifetime)
        try:
            self.file_size = os.fstat(self._file.fileno()).st_size
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.file_size else None
            super().__init__(ranges)
            for r in self.ranges:
                if r.file_offset + r.size > self.file_size:
                    raise TruncatedData(
                        f"{self.path}: range {r} needs file bytes up to {r.file_offset + r.size:#x} "
                        f"but the file has only {self.file_size:#x}",
                        r.phys_start,
                    )
        except BaseException:
            self.close()
            raise

    def _read_in_range(self, r: MemoryRange, offset: int, size: int) -> memoryview:
        start = r.file_offset + offset
        return memoryview(self._map)[start : start + size]

    def view(self, phys: int, size: int) -> memoryview:
        if size == 0:
            return memoryview(b"")
        pieces = self._checked_pieces(phys, size)
        if len(pieces) == 1:
            r, offset, n = pieces[0]
            return self._read_in_range(r, offset, n)
        return memoryview(self.read(phys, size))

    def close(self) -> None:
        m, self._map = getattr(self, "_map", None), None
        if m is not None:
            # Views handed out by view() may still point into the mapping; it is then released with them.
            with contextlib.suppress(BufferError):
                m.close()
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {', '.join(map(str, self.ranges))})"


def q35_ram_ranges(ram_size: int, max_ram_below_4g: int = 4 * GiB) -> tuple[MemoryRange, ...]:
    """Where QEMU's x86 ``q35`` machine puts ``ram_size`` bytes of guest RAM.

    RAM below the 32-bit PCI hole ends at 2 GiB when the guest has at least 2.75 GiB, else at 2.75 GiB (capped by
    the machine's ``max-ram-below-4g``); the rest is mapped from 4 GiB up. In the RAM file the two parts are
    consecutive: the part above 4 GiB starts at file offset ``lowmem``.
    """
    lowmem = 0x80000000 if ram_size >= 0xB0000000 else 0xB0000000
    lowmem = min(lowmem, max_ram_below_4g)
    if ram_size <= lowmem:
        return (MemoryRange(0, ram_size, 0),)
    return (MemoryRange(0, lowmem, 0), MemoryRange(4 * GiB, ram_size - lowmem, lowmem))


class RawRamFile(_MappedFile):
    """Guest RAM as a QEMU ``memory-backend-file`` (``-object memory-backend-file,mem-path=...,share=on``).

    ``ranges`` lists ``(phys_start, file_offset, size)``; by default the q35 layout of :func:`q35_ram_ranges` for
    ``ram_size`` (default: the file size).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        ranges: Sequence[MemoryRange | tuple[int, int, int]] | None = None,
        *,
        ram_size: int | None = None,
    ):
        if ranges is None:
            size = ram_size if ram_size is not None else os.stat(path).st_size
            ranges = q35_ram_ranges(size)
        super().__init__(path, ranges)


class ElfVmcore(_MappedFile):
    """An ELF core file such as QEMU's ``dump-guest-memory`` writes: each ``PT_LOAD`` maps ``p_paddr`` to
    ``p_offset`` for ``p_filesz`` bytes (the part of ``p_memsz`` beyond ``p_filesz`` is not readable here).

    :raises IncompatibleFormat: not an ELF file
    :raises TruncatedData: a header, or a segment, lies past the end of the file
    :raises MalformedData: a program header table no ELF file has, or segments whose physical ranges overlap
    """

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(path, self._load_segments(Path(path)))

    @staticmethod
    def _load_segments(path: Path) -> list[MemoryRange]:
        try:
            with ElfFile(path) as elf:
                segments = elf.program_headers()
        except NotElf as exc:
            raise IncompatibleFormat(str(exc), 0) from None
        except TruncatedElf as exc:
            raise TruncatedData(str(exc), 0) from None
        except ElfError as exc:
            raise MalformedData(str(exc), 0) from None
        ranges = sorted(
            (MemoryRange(p.paddr, p.filesz, p.offset) for p in segments if p.type == PT_LOAD and p.filesz),
            key=lambda r: r.phys_start,
        )
        for a, b in zip(ranges, ranges[1:], strict=False):
            if b.phys_start < a.phys_end:
                raise MalformedData(f"{path}: PT_LOAD segments {a} and {b} overlap in physical memory", b.phys_start)
        return ranges


class DrgnMemory(PhysicalMemory):
    """Physical reads through a ``drgn.Program`` (a live kernel, a vmcore, or segments added by hand).

    drgn does not say which physical ranges exist, so ``ranges`` gives them; without it they are taken from the
    kernel's ``System RAM`` resources (:func:`system_ram_ranges`, needs kernel debug info).
    """

    def __init__(self, prog: Any, ranges: Iterable[MemoryRange | tuple[int, int, int]] | None = None):
        self.prog = prog
        super().__init__(ranges if ranges is not None else system_ram_ranges(prog))

    def _read_in_range(self, r: MemoryRange, offset: int, size: int) -> bytes:
        import drgn

        phys = r.phys_start + offset
        try:
            return self.prog.read(phys, size, True)
        except drgn.FaultError as exc:
            raise AddressNotInMemory(f"drgn could not read {size} bytes at physical {phys:#x}: {exc}", phys) from exc


def system_ram_ranges(prog: Any) -> list[MemoryRange]:
    """The top-level ``System RAM`` entries of the kernel's ``iomem_resource`` tree, as memory ranges."""
    ranges = []
    res = prog["iomem_resource"].child
    while res:
        if res.name and res.name.string_() == b"System RAM":
            start, end = res.start.value_(), res.end.value_()
            ranges.append(MemoryRange(start, end + 1 - start, start))
        res = res.sibling
    return ranges
