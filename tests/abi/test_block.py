"""kho_block lists: the kernel's layout, and the kernel's restore checks plus pointer checks."""

import struct

import numpy as np
import pytest

from tests.abi.helpers import area
from workbench.abi.block import (
    BLOCK_HEADER_SIZE,
    KHO_MAX_BLOCKS,
    encode_block_list,
    entries_per_block,
    read_block_list,
)
from workbench.abi.errors import AddressNotInMemory, LoopDetected, MalformedData
from workbench.abi.physmem import PAGE_SIZE

ENTRY = 64  # struct luo_file_ser


def entries(n: int, size: int = ENTRY) -> list[bytes]:
    return [struct.pack("<Q", i + 1) * (size // 8) for i in range(n)]


def test_entries_per_block():
    assert entries_per_block(64) == 63
    assert entries_per_block(80) == 51
    with pytest.raises(ValueError):
        entries_per_block(0)


@pytest.mark.parametrize("n", [0, 1, 62, 63, 64, 63 * 3, 200])
def test_round_trip(n):
    mem, alloc = area(16)
    written = encode_block_list(entries(n), ENTRY, alloc)
    assert len(written.blocks) == -(-n // 63)
    read = read_block_list(mem, written.head_phys, ENTRY)
    assert read.entries == entries(n)
    assert [b.count for b in read.blocks] == [min(63, n - i) for i in range(0, n, 63)]
    assert read.pages == written.pages


def test_layout_matches_the_header_struct():
    mem, alloc = area(8)
    written = encode_block_list(entries(70), ENTRY, alloc)
    first, second = written.pages
    assert struct.unpack("<QQ", mem.read(first, 16)) == (second, 63)
    assert struct.unpack("<QQ", mem.read(second, 16)) == (0, 7)
    assert mem.read(first + BLOCK_HEADER_SIZE, ENTRY) == entries(1)[0]
    assert mem.read(second + BLOCK_HEADER_SIZE + 7 * ENTRY, 8) == bytes(8)


def test_loop_is_detected():
    mem, alloc = area(16)
    written = encode_block_list(entries(63 * 3), ENTRY, alloc)
    a, b, c = written.pages
    mem.write_u64(c, b)
    with pytest.raises(LoopDetected, match=f"{c:#x} points back to block {b:#x}") as exc:
        read_block_list(mem, a, ENTRY, "test list")
    assert exc.value.phys == b
    mem.write_u64(a, a)
    with pytest.raises(LoopDetected):
        read_block_list(mem, a, ENTRY)


def test_pointer_outside_memory_and_misaligned():
    mem, alloc = area(8)
    written = encode_block_list(entries(100), ENTRY, alloc)
    outside = mem.base + 64 * PAGE_SIZE
    mem.write_u64(written.pages[0], outside)
    with pytest.raises(AddressNotInMemory, match=f"{outside:#x}"):
        read_block_list(mem, written.head_phys, ENTRY)
    mem.write_u64(written.pages[0], written.pages[1] + 16)
    with pytest.raises(MalformedData, match="not page aligned"):
        read_block_list(mem, written.head_phys, ENTRY)


@pytest.mark.parametrize("count", [0, 64, 2**63])
def test_bad_entry_counts(count):
    mem, alloc = area(8)
    written = encode_block_list(entries(10), ENTRY, alloc)
    mem.write_u64(written.head_phys + 8, count)
    with pytest.raises(MalformedData, match=f"entry count {count}"):
        read_block_list(mem, written.head_phys, ENTRY)


def test_more_than_the_kernel_limit_of_blocks():
    mem, _ = area(KHO_MAX_BLOCKS + 2)
    pages = mem.base + np.arange(KHO_MAX_BLOCKS + 1, dtype=np.uint64) * np.uint64(PAGE_SIZE)
    headers = mem.array.view("<u8").reshape(-1, PAGE_SIZE // 8)
    headers[: pages.size, 0] = np.append(pages[1:], 0)
    headers[: pages.size, 1] = 1
    with pytest.raises(MalformedData, match=f"more than {KHO_MAX_BLOCKS}"):
        read_block_list(mem, int(pages[0]), ENTRY)
    headers[KHO_MAX_BLOCKS - 1, 0] = 0
    assert len(read_block_list(mem, int(pages[0]), ENTRY).blocks) == KHO_MAX_BLOCKS


def test_wrong_entry_size_is_refused():
    _, alloc = area(4)
    with pytest.raises(ValueError):
        encode_block_list([b"\0" * 10], ENTRY, alloc)
