"""Hostile ELF files (workbench/elf.py): files of hypothesis-chosen segments, notes and symbols in every class and
byte order (tests/elf_builder.py), then damaged (bit flips, extreme counts, offsets and sizes, cut short), read
through every table the reader offers."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from tests.elf_builder import ElfSpec, Segment, build_elf, note
from tests.fuzz.contract import check_contract, fuzz_settings
from tests.fuzz.mutation import apply_blob_edits, blob_edits
from workbench.elf import PT_LOAD, PT_NOTE, ElfError, ElfFile, MalformedElf

NOTES = st.lists(
    st.tuples(st.binary(max_size=12), st.integers(0, (1 << 32) - 1), st.binary(max_size=40), st.just(4)),
    max_size=4,
)
SPECS = st.builds(
    ElfSpec,
    segments=st.lists(
        st.builds(
            Segment,
            type=st.sampled_from([PT_LOAD, PT_NOTE, 0, 6, 0x6474E551]),
            data=st.binary(max_size=300),
            paddr=st.integers(0, (1 << 32) - 1),
            vaddr=st.integers(0, (1 << 32) - 1),
        ),
        max_size=5,
    ),
    notes=st.one_of(st.none(), st.just(b"")),
    symbols=st.one_of(
        st.none(),
        st.dictionaries(
            st.text("_abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12), st.integers(0, (1 << 32) - 1), max_size=8
        ),
    ),
    bits=st.sampled_from([32, 64]),
    big_endian=st.booleans(),
    phnum_in_section_zero=st.booleans(),
)


def build(spec: ElfSpec, notes) -> bytes:
    """The file of ``spec`` with ``notes`` in its note section (if it has one) and in every PT_NOTE segment."""
    raw = b"".join(note(n, t, d, big_endian=spec.big_endian, align=a) for n, t, d, a in notes)
    if spec.notes is not None:
        spec.notes = raw
    for segment in spec.segments:
        if segment.type == PT_NOTE:
            segment.data = raw
    return build_elf(spec)


def read_everything(data: bytes) -> tuple:
    elf = ElfFile(data, name="fuzzed")
    try:
        symbols = elf.symbols()
    except ElfError as exc:
        symbols = exc  # a file without a symbol table still has its other tables read below
    return elf.header, elf.program_headers(), elf.section_headers(), list(elf.notes()), elf.build_id(), symbols


def read_checked(data: bytes):
    return check_contract(lambda: read_everything(data), input_size=len(data), errors=ElfError)


@fuzz_settings()
@given(SPECS, NOTES)
def test_files_built_field_by_field_read_back(spec, notes):
    data = build(spec, notes)
    outcome = read_checked(data)
    assert outcome.error is None
    _header, segments, _sections, found_notes, _build_id, symbols = outcome.result
    assert [s.type for s in segments] == [s.type for s in spec.segments]
    if spec.symbols is not None:
        assert symbols == {name: value for name, value in spec.symbols.items()}
    if spec.notes is not None:
        assert [(n.name, n.type, n.desc) for n in found_notes] == [(n.rstrip(b"\0"), t, d) for n, t, d, _a in notes]


@fuzz_settings()
@given(st.data(), SPECS, NOTES)
def test_damaged_files_fail_cleanly_within_budget(data, spec, notes):
    original = build(spec, notes)
    read_checked(apply_blob_edits(original, data.draw(blob_edits(len(original)), label="edits")))


def test_note_sections_that_overlap_are_refused_before_being_read_again_and_again():
    """500 section headers naming the same 32 KiB of tiny notes: each would be parsed again."""
    notes = note(b"", 0, b"") * ((32 << 10) // 12)
    data = bytearray(build_elf(ElfSpec(notes=notes)))
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    note_section = data[shoff + 64 : shoff + 128]
    data[0x3C:0x3E] = struct.pack("<H", 501)  # e_shnum
    data[shoff + 64 :] = note_section * 500
    outcome = read_checked(bytes(data))
    assert isinstance(outcome.error, MalformedElf) and "overlap" in str(outcome.error)
