"""Physical memory readers: every byte comes from the right place, nothing is read from outside memory."""

import struct

import drgn
import numpy as np
import pytest

from workbench.abi.errors import AddressNotInMemory, IncompatibleFormat, TruncatedData
from workbench.abi.physmem import (
    BufferMemory,
    DrgnMemory,
    ElfVmcore,
    MemoryRange,
    RawRamFile,
    q35_ram_ranges,
)

GiB = 1 << 30


def pattern(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_buffer_memory_reads_at_its_base_and_refuses_outside():
    data = pattern(8192)
    mem = BufferMemory(data, base=0x10000)
    assert mem.read(0x10000, 16) == data[:16]
    assert mem.read(0x11FF0, 16) == data[-16:]
    assert mem.size == 8192 and mem.contains(0x10000, 8192) and not mem.contains(0x10000, 8193)
    with pytest.raises(AddressNotInMemory, match="0x11ff1") as exc:
        mem.read(0x11FF1, 16)
    assert exc.value.phys == 0x11FF1
    with pytest.raises(AddressNotInMemory, match="0xfff0"):
        mem.read(0xFFF0, 32)
    with pytest.raises(AddressNotInMemory):
        mem.read(-8, 8)
    assert mem.read(0x50000, 0) == b""


def test_buffer_memory_writes_and_word_views():
    mem = BufferMemory(4096, base=0x2000)
    mem.write_u64(0x2008, 0x1122334455667788)
    assert mem.read(0x2008, 8) == bytes.fromhex("8877665544332211")
    assert mem.read_u64(0x2008) == 0x1122334455667788
    words = mem.words(0x2000, 4)
    words[3] = 7
    assert mem.read_u64(0x2018) == 7
    with pytest.raises(AddressNotInMemory):
        mem.write(0x2FFC, b"12345678")
    with pytest.raises(ValueError):
        mem.words(0x2004, 1)


def test_read_only_buffer_stays_read_only():
    mem = BufferMemory(b"\x01" * 64)
    with pytest.raises(ValueError):
        mem.write(0, b"\x02")


def test_q35_layout():
    assert q35_ram_ranges(1 * GiB) == (MemoryRange(0, GiB, 0),)
    assert q35_ram_ranges(0xB0000000 - 4096) == (MemoryRange(0, 0xB0000000 - 4096, 0),)
    assert q35_ram_ranges(0xB0000000) == (MemoryRange(0, 2 * GiB, 0), MemoryRange(4 * GiB, 0x30000000, 2 * GiB))
    assert q35_ram_ranges(8 * GiB) == (MemoryRange(0, 2 * GiB, 0), MemoryRange(4 * GiB, 6 * GiB, 2 * GiB))
    assert q35_ram_ranges(2 * GiB, max_ram_below_4g=GiB)[1] == MemoryRange(4 * GiB, GiB, GiB)


def test_raw_ram_file_maps_high_memory_above_4g(tmp_path):
    path = tmp_path / "ram"
    size = 3 * GiB  # sparse file: 2 GiB low, 1 GiB at 4 GiB
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0x1000)
        f.write(b"low-marker")
        f.seek(2 * GiB + 0x2000)
        f.write(b"high-marker")
    with RawRamFile(path) as mem:
        assert mem.ranges == q35_ram_ranges(size)
        assert mem.read(0x1000, 10) == b"low-marker"
        assert mem.read(4 * GiB + 0x2000, 11) == b"high-marker"
        assert bytes(mem.view(4 * GiB + 0x2000, 11)) == b"high-marker"
        with pytest.raises(AddressNotInMemory, match="0x80000000"):
            mem.read(2 * GiB, 8)  # the PCI hole
        with pytest.raises(AddressNotInMemory, match="0x13ffffffc"):
            mem.read(5 * GiB - 4, 8)


def test_raw_ram_file_with_explicit_ranges_and_checks_against_file_size(tmp_path):
    path = tmp_path / "ram"
    path.write_bytes(pattern(3 * 4096))
    data = path.read_bytes()
    with RawRamFile(path, [(0x100000, 4096, 8192)]) as mem:
        assert mem.read(0x100000, 8192) == data[4096:]
    with pytest.raises(TruncatedData, match="file"):
        RawRamFile(path, [(0, 0, 4 * 4096)])


def test_reads_may_cross_adjacent_ranges_but_not_holes(tmp_path):
    path = tmp_path / "ram"
    data = pattern(4 * 4096, 1)
    path.write_bytes(data)
    with RawRamFile(path, [(0x1000, 0x2000, 0x1000), (0x2000, 0, 0x1000), (0x4000, 0x3000, 0x1000)]) as mem:
        assert mem.read(0x1FF8, 16) == data[0x2FF8:0x3000] + data[0:8]
        with pytest.raises(AddressNotInMemory):
            mem.read(0x2FF8, 16)


def write_elf(path, segments, *, elf_class=2, xnum=False):
    """A minimal little-endian ELF core with one PT_LOAD per (paddr, data)."""
    is64 = elf_class == 2
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    phnum = len(segments)
    phoff = ehsize
    shoff = phoff + phnum * phentsize if xnum else 0
    data_off = phoff + phnum * phentsize + (shentsize if xnum else 0)
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    e_phnum = 0xFFFF if xnum else phnum
    if is64:
        header = ident + struct.pack(
            "<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, shoff, 0, ehsize, phentsize, e_phnum, shentsize, 1 if xnum else 0, 0
        )
    else:
        header = ident + struct.pack(
            "<HHIIIIIHHHHHH", 4, 3, 1, 0, phoff, shoff, 0, ehsize, phentsize, e_phnum, shentsize, 1 if xnum else 0, 0
        )
    phdrs, blobs, offset = b"", b"", data_off
    for paddr, blob in segments:
        if is64:
            phdrs += struct.pack("<IIQQQQQQ", 1, 4, offset, 0xFFFF000000000000 + paddr, paddr, len(blob), len(blob), 0)
        else:
            phdrs += struct.pack("<IIIIIIII", 1, offset, paddr, paddr, len(blob), len(blob), 4, 0)
        blobs += blob
        offset += len(blob)
    section = b""
    if xnum:
        section = struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, phnum, 0, 0)
    path.write_bytes(header + phdrs + section + blobs)


@pytest.mark.parametrize("elf_class,xnum", [(2, False), (2, True), (1, False)])
def test_elf_vmcore_maps_paddr_to_file_offsets(tmp_path, elf_class, xnum):
    low, high = pattern(8192, 2), pattern(4096, 3)
    path = tmp_path / "vmcore"
    write_elf(path, [(0x0, low), (0x100000, high)], elf_class=elf_class, xnum=xnum)
    with ElfVmcore(path) as mem:
        assert mem.ranges == (MemoryRange(0, 8192, mem.ranges[0].file_offset), mem.ranges[1])
        assert mem.read(0x1000, 4096) == low[4096:]
        assert mem.read(0x100010, 16) == high[16:32]
        with pytest.raises(AddressNotInMemory, match="0x2000"):
            mem.read(0x2000, 1)


def test_elf_vmcore_rejects_other_files(tmp_path):
    path = tmp_path / "not-elf"
    path.write_bytes(b"QEVM" + bytes(100))
    with pytest.raises(IncompatibleFormat, match="not an ELF"):
        ElfVmcore(path)
    good = tmp_path / "cut"
    write_elf(good, [(0, pattern(4096))])
    good.write_bytes(good.read_bytes()[:80])
    with pytest.raises(TruncatedData):
        ElfVmcore(good)


def test_drgn_memory_reads_physical_segments():
    data = pattern(8192, 4)
    prog = drgn.Program(
        drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
    )
    prog.add_memory_segment(0x40000, len(data), lambda addr, count, offset, phys: data[offset : offset + count], True)
    mem = DrgnMemory(prog, [(0x40000, 0, len(data))])
    assert mem.read(0x41000, 8) == data[4096:4104]
    with pytest.raises(AddressNotInMemory, match="0x42000"):
        mem.read(0x42000, 8)
    unchecked = DrgnMemory(prog, [(0x40000, 0, 0x10000)])  # claims more than drgn has
    with pytest.raises(AddressNotInMemory, match="drgn"):
        unchecked.read(0x48000, 8)
