"""Hostile dump files (workbench/inspect/vmcore.py): kdump-compressed files and flattened makedumpfile streams of
hypothesis-chosen pages, bitmaps and VMCOREINFO, and ELF cores, then damaged (header fields and descriptors at
extreme values, records out of order or out of range, cut short); checked with :func:`check_dump` and, where
that passes, reassembled for drgn with :func:`kdump_for_drgn`."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from tests.elf_builder import ElfSpec, Segment, build_elf
from tests.fuzz.contract import Budget, check_contract, fuzz_settings
from tests.fuzz.mutation import apply_blob_edits, blob_edits
from workbench.elf import PT_LOAD
from workbench.inspect.errors import InspectError, TruncatedDump
from workbench.inspect.vmcore import check_dump, kdump_for_drgn

BLOCK = 4096
HEADER_SIZE = 448
DUMP_BUDGET = Budget(fixed_memory=24 << 20)  # kdump_for_drgn copies a file in chunks of 16 MiB


def kdump_file(pages: dict[int, bytes], vmcoreinfo: bytes, release: bytes = b"") -> bytes:
    """A kdump-compressed file (header version 6) holding ``pages`` (pfn -> up to a page of bytes, stored
    uncompressed) and ``vmcoreinfo`` in its sub-header; ``release`` fills the utsname (empty: as QEMU leaves it)."""
    max_mapnr = max(pages, default=0) + 1
    bitmap_half = -(-max_mapnr // (8 * BLOCK)) * BLOCK
    header = bytearray(HEADER_SIZE)
    header[:8] = b"KDUMP   "
    struct.pack_into("<i", header, 8, 6)
    if release:
        for i, field in enumerate([b"Linux", b"", release, b"#1", b"x86_64", b""]):
            header[12 + 65 * i : 12 + 65 * i + len(field)] = field
    struct.pack_into("<IIII", header, 428, BLOCK, 1, 2 * bitmap_half // BLOCK, max_mapnr)
    bitmap = bytearray(bitmap_half)
    for pfn in pages:
        bitmap[pfn // 8] |= 1 << (pfn % 8)
    data_start = 2 * BLOCK + 2 * bitmap_half + 24 * len(pages)
    info_at = data_start + sum(len(p) for p in pages.values())
    sub = bytearray(BLOCK)
    struct.pack_into("<QQ", sub, 32, info_at if vmcoreinfo else 0, len(vmcoreinfo))
    struct.pack_into("<Q", sub, 96, max_mapnr)
    descriptors, offset = b"", data_start
    for pfn in sorted(pages):
        descriptors += struct.pack("<qIIQ", offset, len(pages[pfn]), 0, 0)
        offset += len(pages[pfn])
    body = bytes(header).ljust(BLOCK, b"\0") + bytes(sub) + bytes(bitmap) + bytes(bitmap) + descriptors
    return body + b"".join(pages[pfn] for pfn in sorted(pages)) + vmcoreinfo


def flattened(kdump: bytes, pieces: int) -> bytes:
    """``kdump`` as a flattened makedumpfile stream of ``pieces`` records, the last first (as allowed)."""
    step = -(-len(kdump) // max(pieces, 1)) or 1
    records = [(at, kdump[at : at + step]) for at in range(0, len(kdump), step)]
    stream = b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)
    stream = stream.ljust(4096, b"\0")
    for at, data in records[-1:] + records[:-1]:
        stream += struct.pack(">qq", at, len(data)) + data
    return stream + struct.pack(">qq", -1, -1)


PAGES = st.dictionaries(st.integers(0, 300), st.binary(max_size=64), max_size=6)
VMCOREINFO = st.one_of(st.just(b""), st.just(b"OSRELEASE=7.2.13-lab\nPAGESIZE=4096\n"), st.binary(max_size=64))


def check_checked(data: bytes):
    """check_dump, then (for kdump formats) kdump_for_drgn, on ``data`` written to a fresh folder."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vmcore"
        path.write_bytes(data)

        def check_and_reassemble():
            fmt = check_dump(path)
            copy = kdump_for_drgn(path, fmt) if fmt in ("kdump", "flattened") else path
            return fmt, copy.stat().st_size

        outcome = check_contract(
            check_and_reassemble, input_size=len(data) + 4096, errors=InspectError, budget=DUMP_BUDGET
        )
        if outcome.error is None:
            fmt, copy_size = outcome.result
            assert fmt in ("elf", "kdump", "flattened") and copy_size <= 4 * len(data) + (1 << 20)
        return outcome


@fuzz_settings()
@given(PAGES, VMCOREINFO, st.sampled_from([b"", b"7.2.13-lab"]), st.integers(0, 5))
def test_kdump_files_and_streams_check_and_reassemble(pages, vmcoreinfo, release, pieces):
    kdump = kdump_file(pages, vmcoreinfo, release)
    assert check_checked(kdump).error is None
    assert check_checked(flattened(kdump, pieces)).error is None


@fuzz_settings()
@given(st.data(), PAGES, VMCOREINFO, st.sampled_from(["kdump", "flattened", "elf"]))
@example(data=None, pages={}, vmcoreinfo=b"", kind="vmcoreinfo at 2**64 - 1")  # was an OverflowError
def test_damaged_dumps_fail_cleanly_within_budget(data, pages, vmcoreinfo, kind):
    if kind == "vmcoreinfo at 2**64 - 1":
        damaged = bytearray(kdump_file({1: b"x"}, b""))
        struct.pack_into("<QQ", damaged, BLOCK + 32, (1 << 64) - 1, 100)
        assert check_checked(bytes(damaged)).error is None
        return
    if kind == "elf":
        original = build_elf(ElfSpec(segments=[Segment(PT_LOAD, p, paddr=pfn * BLOCK) for pfn, p in pages.items()]))
    else:
        original = kdump_file(pages, vmcoreinfo)
        original = flattened(original, 3) if kind == "flattened" else original
    check_checked(apply_blob_edits(original, data.draw(blob_edits(len(original)), label="edits")))


def test_a_page_descriptor_past_the_end_is_a_truncated_dump_even_near_2_63():
    """Descriptor offsets near 2**63 used to wrap around when added to their size, hiding that the data is
    missing."""
    damaged = bytearray(kdump_file({0: b"abc"}, b""))
    descriptors = 2 * BLOCK + 2 * BLOCK
    struct.pack_into("<qI", damaged, descriptors, (1 << 63) - 2, 100)
    outcome = check_checked(bytes(damaged))
    assert isinstance(outcome.error, TruncatedDump)
    damaged = bytearray(kdump_file({0: b"abc"}, b""))
    struct.pack_into("<q", damaged, descriptors, -4096)
    assert isinstance(check_checked(bytes(damaged)).error, InspectError)
