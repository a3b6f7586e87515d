"""The ELF reader: headers, segments, notes and symbols of files built here field by field, in every class and
byte order; a file cut short or damaged raises the error that says so."""

from __future__ import annotations

import os
import struct
import sys

import pytest

from tests.elf_builder import GNU_BUILD_ID, ElfSpec, Segment, build_elf, note
from workbench.elf import (
    PT_LOAD,
    PT_NOTE,
    ElfError,
    ElfFile,
    MalformedElf,
    MissingSection,
    NotElf,
    TruncatedElf,
)

BUILD_ID = bytes(range(20))


def _core(**kwargs) -> bytes:
    return build_elf(
        ElfSpec(
            segments=[
                Segment(PT_NOTE, note(b"CORE", 1, b"x" * 10, big_endian=kwargs.get("big_endian", False))),
                Segment(PT_LOAD, bytes(range(256)) * 16, paddr=0x100000, vaddr=0xC0100000),
                Segment(PT_LOAD, b"\xaa" * 4096, paddr=0x200000),
            ],
            **kwargs,
        )
    )


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("big_endian", [False, True])
def test_program_headers_of_a_core_in_every_class_and_byte_order(tmp_path, bits, big_endian):
    path = tmp_path / "core"
    data = _core(bits=bits, big_endian=big_endian)
    path.write_bytes(data)
    with ElfFile(path) as elf:
        assert elf.header.bits == bits and elf.header.byte_order == (">" if big_endian else "<")
        assert elf.header.type == 4 and elf.header.phnum == 3
        notes, low, high = elf.program_headers()
    assert (notes.type, low.type, high.type) == (PT_NOTE, PT_LOAD, PT_LOAD)
    assert (low.paddr, low.filesz, low.memsz) == (0x100000, 4096, 4096)
    assert low.vaddr == 0xC0100000
    assert data[low.offset : low.offset + 4096] == bytes(range(256)) * 16
    assert data[high.offset : high.offset + 4096] == b"\xaa" * 4096
    with ElfFile(data, name="core") as elf:
        (core_note,) = elf.notes()  # no section headers: the PT_NOTE segment's notes
    assert (core_note.name, core_note.type, core_note.desc) == (b"CORE", 1, b"x" * 10)


def test_the_segment_count_from_section_header_zero():
    data = build_elf(
        ElfSpec(segments=[Segment(PT_LOAD, b"a" * 8), Segment(PT_LOAD, b"b" * 8)], phnum_in_section_zero=True)
    )
    elf = ElfFile(data)
    assert elf.header.phnum == 0xFFFF
    assert [p.filesz for p in elf.program_headers()] == [8, 8]


def test_build_id_from_the_note_section_before_segments():
    notes = note(b"Xen", 6, b"abcd") + note(b"GNU", GNU_BUILD_ID, BUILD_ID)
    data = build_elf(ElfSpec(segments=[Segment(PT_NOTE, note(b"GNU", GNU_BUILD_ID, b"\x01" * 20))], notes=notes))
    assert ElfFile(data).build_id() == BUILD_ID.hex()
    without = build_elf(ElfSpec(notes=note(b"Linux", GNU_BUILD_ID, b"not gnu")))
    assert ElfFile(without).build_id() is None


def test_notes_aligned_to_eight_bytes():
    data = build_elf(
        ElfSpec(
            segments=[Segment(PT_NOTE, note(b"GNU", 5, b"p" * 12, align=8) + note(b"GNU", 3, b"id", align=8), align=8)]
        )
    )
    assert [(n.type, n.desc) for n in ElfFile(data).notes()] == [(5, b"p" * 12), (3, b"id")]


def test_build_id_of_this_python():
    with ElfFile(sys.executable) as elf:
        build_id = elf.build_id()
    assert build_id is None or len(build_id) in (32, 40)


def test_symbols_first_definition_wins_and_only_the_names_asked(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(
        build_elf(ElfSpec(symbols={"machine_kexec": 0xFFFFFFFF81000000, "asm_exc_int3": 0xFFFFFFFF81A00010}))
    )
    with ElfFile(path) as elf:
        assert elf.symbols() == {"machine_kexec": 0xFFFFFFFF81000000, "asm_exc_int3": 0xFFFFFFFF81A00010}
        assert elf.symbols(["asm_exc_int3", "not_there"]) == {"asm_exc_int3": 0xFFFFFFFF81A00010}
    assert ElfFile(build_elf(ElfSpec(symbols={"f": 0x1000}, bits=32))).symbols() == {"f": 0x1000}


def test_a_stripped_file_has_no_symbol_table():
    with pytest.raises(MissingSection, match="no symbol table"):
        ElfFile(build_elf(ElfSpec(notes=b""))).symbols()


@pytest.mark.parametrize("data", [b"", b"\x7fEL", b"MZ" + bytes(100), b"QEVM" + bytes(100)])
def test_not_elf(data):
    with pytest.raises(NotElf, match="not an ELF file"):
        ElfFile(data, name="x")


def test_unknown_class_or_byte_order():
    with pytest.raises(NotElf, match="unknown ELF class 3"):
        ElfFile(b"\x7fELF\x03\x01" + bytes(80))
    with pytest.raises(NotElf, match="data encoding 0"):
        ElfFile(b"\x7fELF\x02\x00" + bytes(80))


def test_a_header_cut_off():
    data = _core()
    with pytest.raises(TruncatedElf, match="ELF header is cut off") as info:
        ElfFile(data[:40], name="core")
    assert (info.value.needed, info.value.size) == (64, 40)
    assert isinstance(info.value, ElfError) and isinstance(info.value, ValueError)


def test_a_program_header_table_cut_off(tmp_path):
    path = tmp_path / "cut"
    path.write_bytes(_core()[:100])
    with ElfFile(path) as elf, pytest.raises(TruncatedElf, match="program header table at file offset 0x40") as info:
        elf.program_headers()
    assert (info.value.needed, info.value.size) == (64 + 3 * 56, 100)


def test_section_header_zero_cut_off():
    data = build_elf(ElfSpec(segments=[Segment(PT_LOAD, b"a" * 8)], phnum_in_section_zero=True))
    with pytest.raises(TruncatedElf, match="section header 0"):
        ElfFile(data[:-10]).program_headers()


def test_entries_smaller_than_their_structure():
    data = bytearray(_core())
    struct.pack_into("<H", data, 54, 20)  # e_phentsize
    with pytest.raises(MalformedElf, match="program header entries of 20 bytes are too small"):
        ElfFile(bytes(data)).program_headers()


def test_a_note_longer_than_its_area():
    bad = struct.pack("<III", 4, 4096, 3) + b"GNU\0" + b"short"
    with pytest.raises(MalformedElf, match="runs past its area"):
        list(ElfFile(build_elf(ElfSpec(notes=bad))).notes())


def test_a_symbol_name_outside_its_string_table():
    data = bytearray(build_elf(ElfSpec(symbols={"f": 1})))
    elf = ElfFile(bytes(data))
    symtab = next(s for s in elf.section_headers() if s.type == 2)
    struct.pack_into("<I", data, symtab.offset + 24, 0x7FFF)  # st_name of symbol 1
    with pytest.raises(MalformedElf, match="symbol name"):
        ElfFile(bytes(data)).symbols()


def test_a_file_opened_by_path_is_closed_also_when_it_is_refused(tmp_path):
    good, bad = tmp_path / "core", tmp_path / "not-elf"
    good.write_bytes(_core())
    bad.write_bytes(b"not an ELF file")
    before = len(os.listdir("/proc/self/fd"))
    with ElfFile(good) as elf:
        assert len(os.listdir("/proc/self/fd")) == before + 1
        elf.program_headers()
    with pytest.raises(NotElf):
        ElfFile(bad)
    assert len(os.listdir("/proc/self/fd")) == before
