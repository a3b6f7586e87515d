"""The flat array and the sparse (xarray-like) bitmap map: round trips, sizes, and damaged inputs."""

import struct

import numpy as np
import pytest

from tests.abi.helpers import area, as_set, random_folios
from workbench.abi.alternatives import (
    SPARSE_BITMAP_FOLIOS,
    SPARSE_CHUNK_ENTRIES,
    decode_flat_array,
    decode_sparse_bitmaps,
    encode_flat_array,
    encode_sparse_bitmaps,
    flat_array_bytes,
    sparse_bitmaps_bytes,
    sparse_bitmaps_from_folios,
)
from workbench.abi.errors import AddressNotInMemory, CountMismatch, LoopDetected, MalformedData, TruncatedData
from workbench.abi.physmem import PAGE_SIZE


def test_flat_array_round_trip_and_layout():
    pfns, orders = random_folios(1, count=1500)
    mem, alloc = area(64)
    phys = encode_flat_array(pfns, orders, alloc)
    assert struct.unpack("<QQ", mem.read(phys, 16)) == (pfns.size, 0)
    first = struct.unpack("<Q", mem.read(phys + 16, 8))[0]
    assert (first & ((1 << 52) - 1), first >> 52) == (int(pfns[0]), int(orders[0]))
    got_p, got_o = decode_flat_array(mem, phys)
    np.testing.assert_array_equal(got_p, pfns)
    np.testing.assert_array_equal(got_o, orders)
    assert alloc.used_bytes == -(-flat_array_bytes(pfns.size) // PAGE_SIZE) * PAGE_SIZE


def test_flat_array_damage():
    mem, alloc = area(8)
    phys = encode_flat_array(np.array([0, 512]), np.array([0, 9]), alloc)
    mem.write_u64(phys, 10**6)
    with pytest.raises(TruncatedData, match="1000000 entries"):
        decode_flat_array(mem, phys)
    mem.write_u64(phys, 2)
    mem.write_u64(phys + 24, 513 | (9 << 52))  # misaligned for order 9
    with pytest.raises(MalformedData, match="entry 1"):
        decode_flat_array(mem, phys)
    mem.write_u64(phys + 24, 512 | (40 << 52))
    with pytest.raises(MalformedData):
        decode_flat_array(mem, phys)


@pytest.mark.parametrize("seed", [0, 3])
def test_sparse_bitmaps_round_trip(seed):
    pfns, orders = random_folios(seed, count=2500)
    sparse = sparse_bitmaps_from_folios(pfns, orders)
    assert as_set(*sparse.folios()) == as_set(pfns, orders)
    mem, alloc = area(8192)
    head = encode_sparse_bitmaps(sparse, alloc)
    read = decode_sparse_bitmaps(mem, head)
    assert as_set(*read.folios()) == as_set(pfns, orders)
    assert alloc.used_bytes == sparse_bitmaps_bytes(sparse.orders) == read.metadata_bytes
    pieces = [p.copy() for p, _ in read.iter_folios(1)]
    assert sum(p.size for p in pieces) == pfns.size


def test_sparse_iteration_in_pieces():
    pfns = np.arange(10000, dtype=np.uint64)
    sparse = sparse_bitmaps_from_folios(pfns, np.zeros(pfns.size, np.uint8))
    pieces = [p.copy() for p, _ in sparse.iter_folios(1)]
    assert [p.size for p in pieces] == [4096, 4096, 1808]
    np.testing.assert_array_equal(np.concatenate(pieces), pfns)


def test_sparse_bitmap_windows():
    sparse = sparse_bitmaps_from_folios(np.array([0, 4095, 4096, 512 * 4096]), np.array([0, 0, 0, 9]))
    assert sparse.orders.tolist() == [0, 0, 9]
    assert sparse.first_pfns.tolist() == [0, SPARSE_BITMAP_FOLIOS, SPARSE_BITMAP_FOLIOS << 9]


def dense_map(n_windows: int = SPARSE_CHUNK_ENTRIES + 10):
    pfns = np.arange(n_windows, dtype=np.uint64) * np.uint64(SPARSE_BITMAP_FOLIOS)
    sparse = sparse_bitmaps_from_folios(pfns, np.zeros(n_windows, np.uint8))
    mem, alloc = area(256)
    head = encode_sparse_bitmaps(sparse, alloc)
    return mem, head, sparse


def test_sparse_damage():
    mem, head, sparse = dense_map()
    second = sparse.chunk_phys[1]
    mem.write_u64(second, head)
    with pytest.raises(LoopDetected, match=f"{head:#x}"):
        decode_sparse_bitmaps(mem, head)
    mem.write_u64(second, 0)
    mem.write(head + 12, struct.pack("<I", SPARSE_CHUNK_ENTRIES + 1))
    with pytest.raises(CountMismatch, match="claims 256"):
        decode_sparse_bitmaps(mem, head)
    mem.write(head + 12, struct.pack("<I", SPARSE_CHUNK_ENTRIES))
    mem.write_u64(head + 16, 5)  # first pfn not window aligned
    with pytest.raises(MalformedData, match="unaligned"):
        decode_sparse_bitmaps(mem, head)
    mem.write_u64(head + 16, 0)
    mem.write_u64(head + 24, mem.base + 1000 * PAGE_SIZE)
    with pytest.raises(AddressNotInMemory, match="bitmap page"):
        decode_sparse_bitmaps(mem, head)
    mem.write_u64(head, mem.base - PAGE_SIZE)
    with pytest.raises(AddressNotInMemory):
        decode_sparse_bitmaps(mem, head)
