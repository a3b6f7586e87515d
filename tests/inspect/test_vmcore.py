"""Dump files: the format is recognized and a dump shorter than its headers say is refused, naming what is
missing; QEMU's kdump files are repaired into a copy libkdumpfile reads."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from tests.elf_builder import ElfSpec, Segment, build_elf
from workbench.elf import PT_LOAD
from workbench.inspect import TruncatedDump, UnreadableDump, open_vmcore
from workbench.inspect.vmcore import check_dump, kdump_for_drgn

lab = pytest.mark.lab


def _elf_core(pt_load_size: int, data: int) -> bytes:
    """A minimal ELF64 core: one PT_LOAD of ``pt_load_size`` bytes at file offset 0x1000, ``data`` of them
    present."""
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 6, 0x1000, 0, 0, pt_load_size, pt_load_size, 4096)
    return (ehdr + phdr).ljust(0x1000, b"\0") + bytes(data)


def test_not_a_dump(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a kernel dump\n" * 100)
    with pytest.raises(UnreadableDump, match="not a kernel dump"):
        open_vmcore(path, None)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(TruncatedDump, match="is empty"):
        check_dump(empty)


def test_truncated_elf_dump_is_detected_from_its_headers(tmp_path):
    whole = tmp_path / "whole.elf"
    whole.write_bytes(_elf_core(1 << 16, 1 << 16))
    assert check_dump(whole) == "elf"
    cut = tmp_path / "cut.elf"
    cut.write_bytes(_elf_core(1 << 16, 1000))
    with pytest.raises(TruncatedDump, match="truncated") as info:
        open_vmcore(cut, None)
    assert info.value.expected_size == 0x1000 + (1 << 16)
    assert info.value.actual_size == 0x1000 + 1000


def test_elf_dump_with_its_headers_cut_off(tmp_path):
    data = build_elf(ElfSpec(segments=[Segment(PT_LOAD, bytes(4096)), Segment(PT_LOAD, bytes(4096))]))
    cut = tmp_path / "cut.elf"
    cut.write_bytes(data[:100])
    with pytest.raises(TruncatedDump, match="program header table at file offset 0x40 is cut off") as info:
        check_dump(cut)
    assert (info.value.expected_size, info.value.actual_size) == (64 + 2 * 56, 100)
    cut.write_bytes(data[:40])
    with pytest.raises(TruncatedDump, match="ELF header is cut off") as info:
        check_dump(cut)
    assert info.value.expected_size == 64


def test_elf_dump_with_impossible_headers(tmp_path):
    data = bytearray(build_elf(ElfSpec(segments=[Segment(PT_LOAD, bytes(4096))])))
    struct.pack_into("<H", data, 54, 8)  # e_phentsize
    bad = tmp_path / "bad.elf"
    bad.write_bytes(data)
    with pytest.raises(UnreadableDump, match="too small"):
        check_dump(bad)


def test_truncated_flattened_stream_is_detected(tmp_path):
    header = b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)
    records = struct.pack(">qq", 0, 8) + b"KDUMP   " + struct.pack(">qq", 4096, 4) + b"abcd"
    whole = tmp_path / "whole.flat"
    whole.write_bytes(header.ljust(4096, b"\0") + records + struct.pack(">qq", -1, -1))
    assert check_dump(whole) == "flattened"
    cut = tmp_path / "cut.flat"
    cut.write_bytes(whole.read_bytes()[:-20])
    with pytest.raises(TruncatedDump, match="flattened"):
        check_dump(cut)


def test_a_flattened_stream_is_reassembled_with_a_utsname(tmp_path):
    vmcoreinfo = b"OSRELEASE=7.2.13-lab\nPAGESIZE=4096\n"
    disk_header = bytearray(448)
    disk_header[:8] = b"KDUMP   "
    struct.pack_into("<I", disk_header, 428, 4096)  # block_size
    sub_header = bytearray(64)
    struct.pack_into("<QQ", sub_header, 32, 3 * 4096, len(vmcoreinfo))  # offset_vmcoreinfo, size_vmcoreinfo
    records = b""
    for offset, data in ((0, bytes(disk_header)), (4096, bytes(sub_header)), (3 * 4096, vmcoreinfo)):
        records += struct.pack(">qq", offset, len(data)) + data
    stream = tmp_path / "vmcore.flat"
    stream.write_bytes(b"makedumpfile".ljust(4096, b"\0") + records + struct.pack(">qq", -1, -1))
    copy = kdump_for_drgn(stream, "flattened")
    assert copy.parent == tmp_path and copy.name.startswith(".vmcore.flat.")
    data = copy.read_bytes()
    assert data[:8] == b"KDUMP   " and data[3 * 4096 :] == vmcoreinfo
    utsname = [data[12 + i * 65 : 12 + (i + 1) * 65].rstrip(b"\0") for i in range(6)]
    assert utsname == [b"Linux", b"", b"7.2.13-lab", b"#1", b"x86_64", b""]
    assert kdump_for_drgn(stream, "flattened") == copy  # made once


def _makedumpfile_kdump(pages: dict[int, bytes], max_mapnr: int = 64, status: int = 0x1) -> bytes:
    """A kdump-compressed file laid out as Debian's makedumpfile 1.7.2 writes one (seen on a real capture): header
    version 6 with a filled utsname, a sub-header block holding VMCOREINFO at an offset that is not block-aligned,
    two one-block bitmaps, a descriptor per dumped page, then the pages (zero pages share the first data page)."""
    block = 4096
    header = bytearray(block)
    header[:8] = b"KDUMP   "
    struct.pack_into("<I", header, 8, 6)
    for i, value in enumerate((b"Linux", b"(none)", b"7.2.13-lab", b"#1 SMP", b"x86_64", b"(none)")):
        header[12 + i * 65 : 12 + i * 65 + len(value)] = value
    struct.pack_into("<IIIII", header, 424, status, block, 1, 2, max_mapnr)
    sub = bytearray(block)
    vmcoreinfo = b"OSRELEASE=7.2.13-lab\nPAGESIZE=4096\n"
    struct.pack_into("<QiiQQQQ", sub, 0, 0, 23, 0, 0, 0, block + 840, len(vmcoreinfo))
    struct.pack_into("<Q", sub, 96, max_mapnr)
    sub[840 : 840 + len(vmcoreinfo)] = vmcoreinfo
    valid, dumped = bytearray(block), bytearray(block)
    for pfn in range(max_mapnr):
        valid[pfn // 8] |= 1 << (pfn % 8)
    for pfn in pages:
        dumped[pfn // 8] |= 1 << (pfn % 8)
    data_off = 4 * block + 24 * len(pages)
    data, descs = bytearray(block), b""  # the shared zero page first
    for pfn in sorted(pages):
        if pages[pfn] == bytes(block):
            descs += struct.pack("<qIIQ", data_off, block, 0, 0)
        else:
            descs += struct.pack("<qIIQ", data_off + len(data), block, 0, 0)
            data += pages[pfn]
    return bytes(header + sub + valid + dumped) + descs + bytes(data)


def test_a_makedumpfile_kdump_is_read_as_it_is_and_cut_pages_are_refused(tmp_path):
    pages = {0: bytes(4096), 3: b"\x11" * 4096, 9: bytes(4096), 40: b"\x22" * 4096}
    whole = tmp_path / "vmcore.kdump"
    whole.write_bytes(_makedumpfile_kdump(pages))
    assert check_dump(whole) == "kdump"
    assert kdump_for_drgn(whole, "kdump") == whole  # its utsname is filled in: no repaired copy
    cut = tmp_path / "cut.kdump"
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(TruncatedDump, match="truncated: its headers describe") as info:
        check_dump(cut)
    assert info.value.expected_size == whole.stat().st_size
    cut.write_bytes(_makedumpfile_kdump(pages, status=0x1 | 0x8)[:-100])
    with pytest.raises(TruncatedDump, match="makedumpfile marked it incomplete"):
        check_dump(cut)


# -- real dumps ------------------------------------------------------------------------------------------------
@lab
@pytest.mark.parametrize("kind", ["elf", "kdump"])
def test_truncated_copy_of_a_real_dump(inspection, lab_kernel, tmp_path, kind):
    original = Path(inspection.result["vmcores"]["preserve"] if kind == "elf" else inspection.kdump)
    copy = tmp_path / original.name
    shutil.copyfile(original, copy)
    os.truncate(copy, original.stat().st_size * 3 // 4)
    with pytest.raises(TruncatedDump, match="truncated|cut off|past the end|before its end marker") as info:
        open_vmcore(copy, lab_kernel.vmlinux)
    assert info.value.actual_size == original.stat().st_size * 3 // 4
