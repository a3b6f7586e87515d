"""Hostile memory images (workbench/abi/physmem.py): ELF vmcores of hypothesis-chosen segments, damaged (segments
overlapping, past the end of the file, at extreme addresses; headers cut short), opened and read at any address;
a raw RAM file read at any address."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from tests.elf_builder import ElfSpec, Segment, build_elf
from tests.fuzz.contract import check_contract, fuzz_settings
from tests.fuzz.mutation import apply_blob_edits, blob_edits
from workbench.abi.errors import AbiError
from workbench.abi.physmem import ElfVmcore, RawRamFile
from workbench.elf import PT_LOAD, PT_NOTE

U64 = st.integers(0, (1 << 64) - 1)
SEGMENTS = st.lists(
    st.builds(
        Segment,
        type=st.sampled_from([PT_LOAD, PT_LOAD, PT_NOTE]),
        data=st.binary(max_size=600),
        paddr=st.one_of(st.integers(0, 1 << 16), U64),
    ),
    max_size=5,
)
READS = st.lists(st.tuples(st.one_of(st.integers(0, 1 << 17), U64), st.integers(0, 5000)), max_size=8)


def open_and_read(path: Path, reads) -> tuple:
    with ElfVmcore(path) as memory:
        return memory.ranges, [bytes(memory.read(phys, size)) for phys, size in reads if memory.contains(phys, size)]


def check_image(data: bytes, reads):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vmcore"
        path.write_bytes(data)
        outcome = check_contract(lambda: open_and_read(path, reads), input_size=len(data) + 4096, errors=AbiError)
        if outcome.error is None:
            ranges, _ = outcome.result
            assert all(r.file_offset + r.size <= len(data) for r in ranges)
            assert all(a.phys_end <= b.phys_start for a, b in zip(ranges, ranges[1:], strict=False))
        return outcome


@fuzz_settings()
@given(SEGMENTS, READS, st.booleans())
@example(
    segments=[Segment(PT_LOAD, b"a" * 64, paddr=0), Segment(PT_LOAD, b"b" * 64, paddr=32)], reads=[], big_endian=False
)  # overlapping segments: was a ValueError
def test_vmcores_open_and_read_or_fail_cleanly(segments, reads, big_endian):
    check_image(build_elf(ElfSpec(segments=segments, big_endian=big_endian)), reads)


@fuzz_settings()
@given(st.data(), SEGMENTS, READS)
def test_damaged_vmcores_fail_cleanly_within_budget(data, segments, reads):
    original = build_elf(ElfSpec(segments=segments))
    check_image(apply_blob_edits(original, data.draw(blob_edits(len(original)), label="edits")), reads)


@fuzz_settings()
@given(st.binary(max_size=3 * 4096), READS, st.integers(0, 1 << 14))
def test_raw_ram_files_read_at_any_address(ram, reads, ram_size):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ram"
        path.write_bytes(ram)

        def read_all():
            with RawRamFile(path, ram_size=min(ram_size, len(ram))) as memory:
                return [bytes(memory.read(phys, size)) for phys, size in reads]

        check_contract(read_all, input_size=len(ram) + 4096, errors=AbiError)
