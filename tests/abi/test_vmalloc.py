"""kho_vmalloc chunk lists: layout, round trips, and every inconsistency."""

import struct

import numpy as np
import pytest

from tests.abi.helpers import area
from workbench.abi.errors import AddressNotInMemory, CountMismatch, LoopDetected, MalformedData
from workbench.abi.physmem import PAGE_SIZE
from workbench.abi.vmalloc import (
    CHUNK_ENTRIES,
    KHO_VMALLOC_ALLOC,
    KhoVmalloc,
    encode_kho_vmalloc,
    read_kho_vmalloc,
    vmalloc_chunk_count,
)


def data(nbytes: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes()


def test_descriptor_is_16_bytes_in_kernel_order():
    desc = KhoVmalloc(0x1234000, 7, KHO_VMALLOC_ALLOC, 2)
    assert desc.pack() == struct.pack("<QIHH", 0x1234000, 7, 1, 2) and len(desc.pack()) == 16
    assert KhoVmalloc.unpack(desc.pack()) == desc


def test_chunk_counts_include_the_trailing_empty_chunk():
    assert CHUNK_ENTRIES == 511
    assert [vmalloc_chunk_count(n) for n in (1, 510, 511, 512, 1022)] == [1, 1, 2, 2, 3]


@pytest.mark.parametrize("nbytes,order", [(100, 0), (3 * PAGE_SIZE, 0), (511 * PAGE_SIZE, 0), (5 * PAGE_SIZE, 2)])
def test_round_trip(nbytes, order):
    mem, alloc = area(2048)
    content = data(nbytes)
    area_written = encode_kho_vmalloc(content, alloc, order=order)
    desc = KhoVmalloc.unpack(area_written.descriptor.pack())
    assert desc.total_pages == -(-nbytes // (PAGE_SIZE << order)) << order
    area_read = read_kho_vmalloc(mem, desc)
    assert area_read.chunk_phys == area_written.chunk_phys
    np.testing.assert_array_equal(area_read.block_phys, area_written.block_phys)
    assert area_read.read(mem, nbytes) == content
    assert len(area_read.page_phys) == desc.total_pages
    assert len(area_read.preserved_folios()) == len(area_read.chunk_phys) + len(area_read.block_phys)


def test_full_chunk_is_followed_by_an_empty_one():
    mem, alloc = area(1024)
    written = encode_kho_vmalloc(data(511 * PAGE_SIZE), alloc)
    first, second = written.chunk_phys
    assert mem.read_u64(first) == second and mem.read_u64(second) == 0
    assert mem.read_u64(second + 8) == 0


def test_pages_are_read_wherever_they_are():
    mem, alloc = area(64)
    content = data(3 * PAGE_SIZE, 1)
    pages = [alloc.alloc() for _ in range(5)][::2]  # not consecutive
    chunk = alloc.alloc()
    for i, p in enumerate(pages):
        mem.write(p, content[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])
    mem.write(chunk, struct.pack("<4Q", 0, *pages))
    area_read = read_kho_vmalloc(mem, KhoVmalloc(chunk, 3, KHO_VMALLOC_ALLOC, 0))
    assert area_read.read(mem) == content


def setup_area(pages: int = 600):
    mem, alloc = area(2048)
    written = encode_kho_vmalloc(data(pages * PAGE_SIZE), alloc)
    return mem, alloc, written.descriptor, written


def test_loop_in_chunk_list():
    mem, _, desc, written = setup_area()
    mem.write_u64(written.chunk_phys[1], written.chunk_phys[0])
    with pytest.raises(LoopDetected, match="loops"):
        read_kho_vmalloc(mem, KhoVmalloc(desc.first, 5000, desc.flags, 0))


@pytest.mark.parametrize("total", [599, 601, 100])
def test_total_pages_disagreeing_with_the_chunks(total):
    mem, _, desc, _ = setup_area()
    with pytest.raises(CountMismatch):
        read_kho_vmalloc(mem, KhoVmalloc(desc.first, total, desc.flags, 0))


def test_page_outside_memory_and_misaligned():
    mem, _, desc, written = setup_area()
    outside = mem.base + 4096 * PAGE_SIZE
    mem.write_u64(written.chunk_phys[0] + 8 * 5, outside)
    with pytest.raises(AddressNotInMemory, match=f"{outside:#x}"):
        read_kho_vmalloc(mem, desc)
    mem.write_u64(written.chunk_phys[0] + 8 * 5, int(written.block_phys[4]) + 100)
    with pytest.raises(MalformedData, match="not aligned"):
        read_kho_vmalloc(mem, desc)
    mem.write_u64(written.chunk_phys[0] + 8 * 5, int(written.block_phys[4]))
    mem.write_u64(written.chunk_phys[0], mem.base - PAGE_SIZE)
    with pytest.raises(AddressNotInMemory):
        read_kho_vmalloc(mem, desc)


def test_bad_descriptors():
    mem, _, desc, _ = setup_area(2)
    with pytest.raises(MalformedData, match="flags"):
        read_kho_vmalloc(mem, KhoVmalloc(desc.first, desc.total_pages, 0x10, 0))
    with pytest.raises(CountMismatch, match="no chunk list"):
        read_kho_vmalloc(mem, KhoVmalloc(0, 3, 1, 0))
    assert read_kho_vmalloc(mem, KhoVmalloc(0, 0, 0, 0)).block_phys.size == 0
    with pytest.raises(MalformedData, match="order"):
        read_kho_vmalloc(mem, KhoVmalloc(desc.first, 2, 1, 40))
