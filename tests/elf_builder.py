"""Builds small ELF files for the tests, field by field with struct: a file header, program headers (PT_LOAD,
PT_NOTE), and optionally section headers with a note section and a symbol table."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["Segment", "ElfSpec", "build_elf", "note", "GNU_BUILD_ID"]

GNU_BUILD_ID = 3
_ET_CORE, _ET_EXEC = 4, 2
_EM_X86_64, _EM_386 = 62, 3
_SHT_SYMTAB, _SHT_STRTAB, _SHT_NOTE = 2, 3, 7


@dataclass
class Segment:
    """One program header and its bytes (``filesz`` defaults to ``len(data)``; a larger one describes a segment
    the file is too short for)."""

    type: int
    data: bytes
    paddr: int = 0
    vaddr: int = 0
    filesz: int | None = None
    align: int = 4


@dataclass
class ElfSpec:
    """What :func:`build_elf` writes. ``bits`` 32 or 64, ``big_endian`` for ``ELFDATA2MSB``; ``notes`` go into one
    ``SHT_NOTE`` section and ``symbols`` ({name: value}, defined in section 1) into ``.symtab`` when given."""

    segments: list[Segment] = field(default_factory=list)
    notes: bytes | None = None
    symbols: dict[str, int] | None = None
    bits: int = 64
    big_endian: bool = False
    phnum_in_section_zero: bool = False


def note(name: bytes, note_type: int, desc: bytes, *, big_endian: bool = False, align: int = 4) -> bytes:
    """One ELF note: the header and the NUL-terminated ``name``, padded to ``align``, then ``desc``, padded too."""
    order = ">" if big_endian else "<"
    owner = name + b"\0"
    head = struct.pack(order + "III", len(owner), len(desc), note_type) + owner
    return head + bytes(-len(head) % align) + desc + bytes(-len(desc) % align)


def build_elf(spec: ElfSpec) -> bytes:
    """The bytes of an ELF file as ``spec`` says: the header, the program header table right after it, the segments'
    data, then (with notes or symbols) the sections' data and the section header table at the end."""
    is64 = spec.bits == 64
    order = ">" if spec.big_endian else "<"
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    phoff = ehsize if spec.segments else 0
    offset = ehsize + len(spec.segments) * phentsize
    phdrs, blobs = b"", b""
    for seg in spec.segments:
        filesz = len(seg.data) if seg.filesz is None else seg.filesz
        if is64:
            phdrs += struct.pack(
                order + "IIQQQQQQ", seg.type, 6, offset, seg.vaddr, seg.paddr, filesz, filesz, seg.align
            )
        else:
            phdrs += struct.pack(
                order + "IIIIIIII", seg.type, offset, seg.vaddr, seg.paddr, filesz, filesz, 6, seg.align
            )
        blobs += seg.data
        offset += len(seg.data)
    sections: list[tuple[int, bytes, int, int, int]] = []  # type, data, link, info, entsize
    if spec.phnum_in_section_zero:
        sections.append((0, b"", 0, len(spec.segments), 0))
    elif spec.notes is not None or spec.symbols is not None:
        sections.append((0, b"", 0, 0, 0))
    if spec.notes is not None:
        sections.append((_SHT_NOTE, spec.notes, 0, 0, 0))
    if spec.symbols is not None:
        strtab, symtab = b"\0", b""
        symtab += bytes(24 if is64 else 16)  # symbol 0 is the undefined one
        for name, value in spec.symbols.items():
            name_at = len(strtab)
            strtab += name.encode() + b"\0"
            if is64:
                symtab += struct.pack(order + "IBBHQQ", name_at, 0x12, 0, 1, value, 0)
            else:
                symtab += struct.pack(order + "IIIBBH", name_at, value, 0, 0x12, 0, 1)
        strtab_index = len(sections) + 1
        sections.append((_SHT_SYMTAB, symtab, strtab_index, 1, 24 if is64 else 16))
        sections.append((_SHT_STRTAB, strtab, 0, 0, 0))
    shdrs = b""
    for sh_type, data, link, info, entsize in sections:
        at = offset if data else 0
        if is64:
            shdrs += struct.pack(order + "IIQQQQIIQQ", 0, sh_type, 0, 0, at, len(data), link, info, 4, entsize)
        else:
            shdrs += struct.pack(order + "IIIIIIIIII", 0, sh_type, 0, 0, at, len(data), link, info, 4, entsize)
        blobs += data
        offset += len(data)
    shoff = offset if sections else 0
    phnum = 0xFFFF if spec.phnum_in_section_zero else len(spec.segments)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 2 if spec.big_endian else 1, 1]) + bytes(9)
    e_type = _ET_CORE if spec.segments and spec.symbols is None else _ET_EXEC
    machine = _EM_X86_64 if is64 else _EM_386
    fields = (e_type, machine, 1, 0, phoff, shoff, 0, ehsize, phentsize, phnum, shentsize, len(sections), 0)
    header = ident + struct.pack(order + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH"), *fields)
    return header + phdrs + blobs + shdrs
