"""Reading ELF files: the file header, program headers, section headers, notes and the symbol table of 32- and
64-bit ELF files of either byte order, such as a ``vmlinux`` or a vmcore written by QEMU's ``dump-guest-memory``.

:class:`ElfFile` reads a path (only the bytes it needs, so a vmcore of many GiB costs nothing to open) or a buffer
(``bytes``, ``mmap``). Every table is checked against the file's size before it is read: a file cut short raises
:class:`TruncatedElf` naming what is cut off and how many bytes the file would need, a file that is not ELF
raises :class:`NotElf`, an impossible value :class:`MalformedElf`. All of them are :class:`ElfError`, a
``ValueError``.

This module imports nothing from the workbench.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ElfError",
    "NotElf",
    "TruncatedElf",
    "MalformedElf",
    "MissingSection",
    "ElfFile",
    "FileHeader",
    "ProgramHeader",
    "SectionHeader",
    "Note",
    "PT_LOAD",
    "PT_NOTE",
    "SHT_SYMTAB",
    "SHT_NOTE",
    "NT_GNU_BUILD_ID",
]

PT_LOAD = 1
PT_NOTE = 4
SHT_SYMTAB = 2
SHT_NOTE = 7
NT_GNU_BUILD_ID = 3
_PN_XNUM = 0xFFFF  # e_phnum when the segment count is in sh_info of section header 0
_MAGIC = b"\x7fELF"
_CLASSES = {1: 32, 2: 64}
_BYTE_ORDERS = {1: "<", 2: ">"}

# struct formats after e_ident / of one table entry, per class; sizes are the minimum entry sizes
_HEADER_FORMAT = {32: "HHIIIIIHHHHHH", 64: "HHIQQQIHHHHHH"}
_PROGRAM_FORMAT = {32: "IIIIIIII", 64: "IIQQQQQQ"}
_SECTION_FORMAT = {32: "IIIIIIIIII", 64: "IIQQQQIIQQ"}
_SYMBOL_FORMAT = {32: "IIIBBH", 64: "IBBHQQ"}


class ElfError(ValueError):
    """A file that cannot be read as ELF; the message names the file and what is wrong with it."""


class NotElf(ElfError):
    """The file is not ELF (no ``\\x7fELF`` magic), or of a class or byte order that does not exist."""


class TruncatedElf(ElfError):
    """A header or table lies (partly) past the end of the file. ``needed`` is the file size it would take,
    ``size`` the size the file has."""

    def __init__(self, message: str, needed: int, size: int):
        super().__init__(message)
        self.needed = needed
        self.size = size


class MalformedElf(ElfError):
    """A value no valid file has: table entries smaller than their structure, a name outside its string table,
    a note longer than its section."""


class MissingSection(ElfError):
    """The file lacks a section the caller needs (a stripped file has no symbol table)."""


@dataclass(frozen=True)
class FileHeader:
    """The ELF file header (``Elf64_Ehdr`` or ``Elf32_Ehdr``). ``bits`` is 32 or 64, ``byte_order`` a
    :mod:`struct` prefix (``<`` or ``>``); ``phnum`` and ``shnum`` are as written (see :meth:`ElfFile.program_headers`
    for the extended counts)."""

    bits: int
    byte_order: str
    type: int
    machine: int
    version: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


@dataclass(frozen=True)
class ProgramHeader:
    """One segment (``Elf64_Phdr``/``Elf32_Phdr``): ``filesz`` bytes at file ``offset`` hold the first bytes of
    ``memsz`` bytes at ``vaddr``/``paddr``."""

    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True)
class SectionHeader:
    """One section (``Elf64_Shdr``/``Elf32_Shdr``); ``name`` is the offset of its name in the section name string
    table."""

    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


@dataclass(frozen=True)
class Note:
    """One note (``Elf64_Nhdr`` and what follows it): the owner's ``name`` (NUL stripped), ``type`` and
    ``desc``."""

    name: bytes
    type: int
    desc: bytes


class ElfFile:
    """An ELF file, read on demand.

    :param source: a path, or the file's bytes (``bytes``, ``bytearray``, ``mmap``; not copied)
    :param name: how messages name the file (default: the path, or ``<buffer>``)
    :raises NotElf: not an ELF file
    :raises TruncatedElf: the file header is cut off

    Use as a context manager (or call :meth:`close`) when opened from a path.
    """

    def __init__(self, source: str | os.PathLike[str] | bytes | bytearray | Any, name: str | None = None):
        self._file = None
        self._buffer = None
        if isinstance(source, (str, os.PathLike)):
            self.name = name if name is not None else os.fspath(source)
            self._file = open(source, "rb")  # noqa: SIM115 (closed by close())
            self.size = os.fstat(self._file.fileno()).st_size
        else:
            self.name = name if name is not None else "<buffer>"
            self._buffer = source
            self.size = len(source)
        try:
            self.header = self._read_header()
        except BaseException:
            self.close()
            raise

    # -- reading -----------------------------------------------------------------------------------------------
    def read(self, offset: int, size: int, what: str) -> bytes:
        """``size`` bytes at file ``offset``; :class:`TruncatedElf` saying ``what`` is cut off when the file
        ends before."""
        if offset < 0 or size < 0:
            raise MalformedElf(f"{self.name}: {what} has a negative offset or size ({offset:#x}, {size:#x})")
        if offset + size > self.size:
            raise TruncatedElf(f"{self.name}: {what} is cut off", offset + size, self.size)
        if self._buffer is not None:
            return bytes(self._buffer[offset : offset + size])
        assert self._file is not None
        return os.pread(self._file.fileno(), size, offset)

    def close(self) -> None:
        """Closes the file opened from a path (the buffer of a buffer-backed file is left alone)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _read_header(self) -> FileHeader:
        ident = self.read(0, min(16, self.size), "e_ident")
        if ident[:4] != _MAGIC:
            raise NotElf(f"{self.name} is not an ELF file (magic {ident[:4]!r})")
        elf_class = ident[4] if len(ident) > 4 else None
        data = ident[5] if len(ident) > 5 else None
        if elf_class not in _CLASSES or data not in _BYTE_ORDERS:
            raise NotElf(f"{self.name}: unknown ELF class {elf_class} or data encoding {data}")
        bits, byte_order = _CLASSES[elf_class], _BYTE_ORDERS[data]
        fmt = byte_order + _HEADER_FORMAT[bits]
        ehsize = 16 + struct.calcsize(fmt)
        if self.size < ehsize:
            raise TruncatedElf(
                f"{self.name}: the ELF header is cut off ({self.size} of {ehsize} bytes)", ehsize, self.size
            )
        fields = struct.unpack(fmt, self.read(16, ehsize - 16, "the ELF header"))
        return FileHeader(bits, byte_order, *fields)

    def _table(self, offset: int, count: int, entsize: int, fmt: str, entry: str) -> Iterator[tuple]:
        """``count`` entries of ``entsize`` bytes at ``offset``, each unpacked with ``fmt``; ``entry`` names one
        (``program header``) in messages."""
        if not count:
            return iter(())
        if entsize < struct.calcsize(fmt):
            raise MalformedElf(f"{self.name}: {entry} entries of {entsize} bytes are too small")
        raw = self.read(offset, count * entsize, f"{entry} table at file offset {offset:#x}")
        return (struct.unpack_from(fmt, raw, i * entsize) for i in range(count))

    def _section_zero(self, what: str) -> SectionHeader:
        """Section header 0, which holds the segment and section counts that do not fit the file header."""
        h = self.header
        fmt = h.byte_order + _SECTION_FORMAT[h.bits]
        return SectionHeader(*struct.unpack(fmt, self.read(h.shoff, struct.calcsize(fmt), what)))

    # -- tables ------------------------------------------------------------------------------------------------
    def program_headers(self) -> list[ProgramHeader]:
        """Every segment, in file order. With more than 65534 segments (``e_phnum == PN_XNUM``) the count is taken
        from section header 0."""
        h = self.header
        count = h.phnum
        if count == _PN_XNUM:
            count = self._section_zero("section header 0 (segment count)").info
        headers = []
        for fields in self._table(
            h.phoff, count, h.phentsize, h.byte_order + _PROGRAM_FORMAT[h.bits], "program header"
        ):
            if h.bits == 64:
                headers.append(ProgramHeader(*fields))
            else:
                p_type, offset, vaddr, paddr, filesz, memsz, flags, align = fields
                headers.append(ProgramHeader(p_type, flags, offset, vaddr, paddr, filesz, memsz, align))
        return headers

    def section_headers(self) -> list[SectionHeader]:
        """Every section, in file order (none when the file has no section header table). With 65280 sections or
        more (``e_shnum == 0``) the count is taken from section header 0."""
        h = self.header
        if not h.shoff:
            return []
        count = h.shnum or self._section_zero("section header 0 (section count)").size
        fmt = h.byte_order + _SECTION_FORMAT[h.bits]
        return [SectionHeader(*fields) for fields in self._table(h.shoff, count, h.shentsize, fmt, "section header")]

    def notes(self) -> Iterator[Note]:
        """The notes of the ``SHT_NOTE`` sections; of the ``PT_NOTE`` segments when the file has no note section
        (a core file, a stripped-down image). A linked file has the same notes in both."""
        regions = [(s.offset, s.size, s.addralign) for s in self.section_headers() if s.type == SHT_NOTE]
        if not regions:
            regions = [(p.offset, p.filesz, p.align) for p in self.program_headers() if p.type == PT_NOTE]
        total = sum(size for _offset, size, _align in regions)
        if total > self.size:
            raise MalformedElf(
                f"{self.name}: its note areas add up to {total} bytes, more than the file's {self.size}: they overlap"
            )
        for offset, size, align in regions:
            yield from self._parse_notes(offset, size, 8 if align == 8 else 4)

    def _parse_notes(self, offset: int, size: int, align: int) -> Iterator[Note]:
        data = self.read(offset, size, f"note area at file offset {offset:#x}")
        order = self.header.byte_order
        pos = 0
        while pos + 12 <= len(data):
            namesz, descsz, note_type = struct.unpack_from(order + "III", data, pos)
            desc_at = _align(pos + 12 + namesz, align)
            end = desc_at + descsz
            if end > len(data):
                raise MalformedElf(
                    f"{self.name}: the note at file offset {offset + pos:#x} ({namesz}-byte name, {descsz}-byte "
                    f"description) runs past its area of {size} bytes"
                )
            yield Note(data[pos + 12 : pos + 12 + namesz].rstrip(b"\0"), note_type, data[desc_at:end])
            pos = _align(end, align)

    def build_id(self) -> str | None:
        """The GNU build id (``NT_GNU_BUILD_ID`` note) in hex, or ``None`` when the file has none."""
        for note in self.notes():
            if note.name == b"GNU" and note.type == NT_GNU_BUILD_ID:
                return note.desc.hex()
        return None

    def symbols(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """``{name: value}`` of the defined symbols of the ``.symtab`` (for a ``vmlinux``: their link-time
        addresses); only ``names`` when given (names the table lacks are left out). The first definition of a
        name wins.

        :raises MissingSection: the file has no symbol table (stripped)
        """
        sections = self.section_headers()
        symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
        if symtab is None:
            raise MissingSection(f"{self.name} has no symbol table")
        if symtab.link >= len(sections):
            raise MalformedElf(f"{self.name}: the symbol table links to section {symtab.link} of {len(sections)}")
        strtab = sections[symtab.link]
        strings = self.read(strtab.offset, strtab.size, "the symbol string table")
        h = self.header
        fmt = h.byte_order + _SYMBOL_FORMAT[h.bits]
        entsize = symtab.entsize or struct.calcsize(fmt)
        wanted = set(names) if names is not None else None
        nuls, at = [], strings.find(b"\0")  # each name ends at the first of these after it (found once)
        while at >= 0:
            nuls.append(at)
            at = strings.find(b"\0", at + 1)
        found: dict[str, int] = {}
        for fields in self._table(symtab.offset, symtab.size // entsize, entsize, fmt, "symbol"):
            if h.bits == 64:
                name_at, _info, _other, shndx, value, _size = fields
            else:
                name_at, value, _size, _info, _other, shndx = fields
            if not name_at or not shndx:  # unnamed, or undefined here
                continue
            first_nul = bisect.bisect_left(nuls, name_at)
            if first_nul == len(nuls):
                raise MalformedElf(f"{self.name}: a symbol name at {name_at:#x} runs past its string table")
            end = nuls[first_nul]
            name = strings[name_at:end].decode("latin-1")
            if (wanted is None or name in wanted) and name not in found:
                found[name] = value
        return found

    def __repr__(self) -> str:
        return f"ElfFile({self.name!r}, {self.size} bytes)"


def _align(n: int, align: int) -> int:
    return (n + align - 1) & ~(align - 1)
