"""memfd-v2: the ser struct, the bit-packed folio array behind kho_vmalloc chunks, and the consistency checks."""

import struct

import numpy as np
import pytest

from tests.abi.helpers import area
from workbench.abi.errors import AddressNotInMemory, CountMismatch, LoopDetected, MalformedData
from workbench.abi.memfd import (
    FOLIO_SER_SIZE,
    MEMFD_SER_SIZE,
    MemfdSer,
    decode_memfd,
    encode_memfd,
    pack_folio_array,
    unpack_folio_array,
)
from workbench.abi.physmem import PAGE_SIZE


def folios(alloc, orders):
    """Real folios taken from the allocator, covering a file in index order."""
    pfns, indexes, index = [], [], 0
    for order in orders:
        pfns.append(alloc.alloc(order) // PAGE_SIZE)
        indexes.append(index)
        index += 1 << order
    return np.array(pfns, dtype=np.uint64), np.array(indexes, dtype=np.uint64), index


def build(orders=(0, 0, 9, 0, 2, 0), tail=100):
    mem, alloc = area(4096)
    pfns, indexes, pages = folios(alloc, orders)
    size = pages * PAGE_SIZE - tail
    memfd = encode_memfd(pfns, indexes, size, alloc, pos=123, seals=0x8 | 0x1)
    return mem, alloc, memfd, pfns, indexes, size


def test_sizes_and_bitfield_layout():
    assert (MEMFD_SER_SIZE, FOLIO_SER_SIZE) == (48, 16)
    raw = pack_folio_array(np.array([0xABCDE12345678]), np.array([3]), np.array([77])).tobytes()
    word, index = struct.unpack("<QQ", raw)
    assert word & ((1 << 52) - 1) == 0xABCDE12345678 and word >> 52 == 3 and index == 77
    frame = unpack_folio_array(raw)
    assert frame.to_dict("records") == [{"pfn": 0xABCDE12345678, "flags": 3, "index": 77}]


def test_round_trip():
    mem, _, written, pfns, indexes, size = build()
    memfd = decode_memfd(mem, written.phys)
    ser = memfd.ser
    assert (ser.pos, ser.size, ser.seals, ser.flags, ser.nr_folios) == (123, size, 9, 0, 6)
    assert ser.folios.total_pages == 1 and ser.folios.flags == 1 and ser.folios.order == 0
    np.testing.assert_array_equal(memfd.folios["pfn"].to_numpy(), pfns)
    np.testing.assert_array_equal(memfd.folios["index"].to_numpy(), indexes)
    assert set(memfd.folios["flags"]) == {3}
    raw = mem.read(written.phys, MEMFD_SER_SIZE)
    assert struct.unpack_from("<QQII", raw) == (123, size, 9, 0)
    assert MemfdSer.unpack(raw) == ser


def test_file_pages_from_index_gaps_and_from_orders():
    mem, _, written, pfns, _, size = build()
    memfd = decode_memfd(mem, written.phys)
    inferred = memfd.file_pages()
    assert len(inferred) == -(-size // PAGE_SIZE) == 1 + 1 + 512 + 1 + 4 + 1
    assert inferred["page"].tolist() == list(range(len(inferred)))
    orders = dict(zip(pfns.tolist(), [0, 0, 9, 0, 2, 0], strict=True))
    explicit = memfd.file_pages(orders)
    assert inferred.equals(explicit)
    big = inferred[(inferred.page >= 2) & (inferred.page < 514)]
    assert big["pfn"].tolist() == list(range(int(pfns[2]), int(pfns[2]) + 512))


def test_many_folios_span_several_chunks():
    mem, alloc = area(8192)
    n = 3000  # 12 pages of folio_ser
    pfns = np.arange(n, dtype=np.uint64) + np.uint64(mem.base // PAGE_SIZE)
    written = encode_memfd(pfns, np.arange(n), n * PAGE_SIZE, alloc)
    memfd = decode_memfd(mem, written.phys)
    assert memfd.ser.folios.total_pages == -(-n * 16 // PAGE_SIZE)
    np.testing.assert_array_equal(memfd.folios["pfn"].to_numpy(), pfns)


def test_empty_memfd():
    mem, alloc = area(8)
    written = encode_memfd(np.empty(0), np.empty(0), 0, alloc)
    memfd = decode_memfd(mem, written.phys)
    assert memfd.ser.nr_folios == 0 and memfd.area is None and len(memfd.folios) == 0
    assert memfd.metadata_pages() == [written.phys]


def corrupt(mem, phys, offset, fmt, value):
    mem.write(phys + offset, struct.pack(fmt, value))


@pytest.mark.parametrize(
    "offset,fmt,value,error,match",
    [
        (16, "<I", 0x40, MalformedData, "seals"),
        (20, "<I", 1, MalformedData, "flags"),
        (24, "<Q", 7, MalformedData, "folio 6 .page 0. does not follow"),  # one zeroed entry too many
        (24, "<Q", 1000, CountMismatch, "1000 folios"),
        (24, "<Q", 0, CountMismatch, "no folios"),
        (8, "<Q", 0, CountMismatch, "0 bytes"),
        (32, "<Q", 0, MalformedData, "folios.first is 0"),
        (40, "<I", 5, CountMismatch, "total_pages"),
    ],
)
def test_inconsistent_ser(offset, fmt, value, error, match):
    mem, _, written, *_ = build()
    corrupt(mem, written.phys, offset, fmt, value)
    with pytest.raises(error, match=match) as exc:
        decode_memfd(mem, written.phys)
    assert exc.value.phys is not None


def test_array_too_small_for_nr_folios():
    mem, alloc = area(512)
    pfns, indexes, pages = folios(alloc, [0] * 300)
    written = encode_memfd(pfns[:256], indexes[:256], pages * PAGE_SIZE, alloc)  # exactly one page of entries
    corrupt(mem, written.phys, 24, "<Q", 257)
    with pytest.raises(CountMismatch, match="257 folios need 4112 bytes"):
        decode_memfd(mem, written.phys)


def test_bad_folio_entries():
    mem, _, written, pfns, *_ = build()
    array_page = int(written.area.block_phys[0])
    corrupt(mem, array_page, 16 + 8, "<Q", 10**6)  # index of folio 1 beyond the file
    with pytest.raises(MalformedData, match="folio 1 is at page 1000000"):
        decode_memfd(mem, written.phys)
    corrupt(mem, array_page, 16 + 8, "<Q", 1)
    corrupt(mem, array_page, 16, "<Q", int(pfns[1]) | (0x13 << 52))
    with pytest.raises(MalformedData, match="unknown flags 0x13"):
        decode_memfd(mem, written.phys)
    corrupt(mem, array_page, 16, "<Q", 0x7FFFFFFF | (3 << 52))
    with pytest.raises(AddressNotInMemory, match="pfn 0x7fffffff"):
        decode_memfd(mem, written.phys)
    assert decode_memfd(mem, written.phys, check_folios_in_memory=False).folios["pfn"].iat[1] == 0x7FFFFFFF


def test_loop_in_the_folio_array_chunks():
    mem, _, written, *_ = build()
    chunk = written.area.chunk_phys[0]
    mem.write_u64(chunk, chunk)
    with pytest.raises(LoopDetected, match="folio array"):
        decode_memfd(mem, written.phys)
