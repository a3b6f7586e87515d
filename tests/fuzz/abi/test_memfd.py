"""Hostile preserved memfds (workbench/abi/memfd.py): memfds the encoder writes with hypothesis-chosen folios,
sizes and seals, then damaged (sizes and folio counts near 2**64, folio arrays looping, shared or outside memory),
and garbage behind a memfd_luo_ser."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.fuzz.contract import CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import EXTREME_U64, apply_memory_edits, garbage_memory, memory_edits, used_pages
from workbench.abi.errors import AbiError
from workbench.abi.memfd import MEMFD_LUO_ALL_SEALS, MEMFD_SER_SIZE, decode_memfd, encode_memfd
from workbench.abi.physmem import PAGE_SIZE, BufferMemory
from workbench.abi.vmalloc import KHO_VMALLOC_ALLOC

MEMFDS = st.tuples(
    st.lists(st.integers(0, 3), max_size=300),  # folio orders, in file order
    st.integers(0, PAGE_SIZE - 1),  # bytes of the last page left unused
    st.integers(0, MEMFD_LUO_ALL_SEALS),
    st.integers(0, (1 << 64) - 1),  # pos
)


def build(orders, tail, seals, pos):
    pages = sum(1 << o for o in orders)
    memory, allocator = area(2 * pages + 24)
    pfns = np.array([allocator.alloc(o) // PAGE_SIZE for o in orders], dtype=np.uint64)
    indexes = np.array(np.cumsum([0] + [1 << o for o in orders])[:-1], dtype=np.uint64)
    size = max(pages * PAGE_SIZE - tail, 0) if orders else 0
    return memory, allocator, encode_memfd(pfns, indexes, size, allocator, pos=pos, seals=seals)


def decode_checked(memory: BufferMemory, phys: int, in_memory: bool = True):
    """decode_memfd and what callers derive from it, under the contract."""
    counted = CountingMemory(memory)

    def decode():
        memfd = decode_memfd(counted, phys, check_folios_in_memory=in_memory)
        return memfd, memfd.metadata_pages(), memfd.folio_pages()

    outcome = check_contract(decode, input_size=memory.size, errors=AbiError, memory=counted)
    if outcome.error is None:
        memfd = outcome.result[0]
        assert len(memfd.folios) == memfd.ser.nr_folios
        assert (np.diff(memfd.folios["index"].to_numpy().astype(np.float64)) > 0).all()
    return outcome


@fuzz_settings()
@given(MEMFDS)
def test_valid_memfds_decode_exactly(spec):
    memory, _allocator, written = build(*spec)
    outcome = decode_checked(memory, written.phys)
    assert outcome.error is None
    memfd = outcome.result[0]
    assert memfd.ser == written.ser and memfd.folios.equals(written.folios)


@fuzz_settings()
@given(st.data(), MEMFDS, st.booleans())
def test_damaged_memfds_fail_cleanly_within_budget(data, spec, in_memory):
    memory, allocator, written = build(*spec)
    ser = bytearray(memory.read(written.phys, MEMFD_SER_SIZE))
    for offset, fmt in data.draw(st.lists(st.sampled_from([(8, "<Q"), (32, "<Q"), (40, "<I")]), max_size=2)):
        value = data.draw(st.one_of(st.sampled_from(EXTREME_U64), st.integers(0, (1 << 64) - 1)), label="count")
        struct.pack_into(fmt, ser, offset, value % (1 << (8 * struct.calcsize(fmt))))
    memory.write(written.phys, bytes(ser))  # size, nr_folios, folios.total_pages
    damaged = apply_memory_edits(memory, data.draw(memory_edits(memory, used_pages(allocator)), label="edits"))
    decode_checked(damaged, written.phys, in_memory)


@fuzz_settings()
@given(garbage_memory(), st.integers(0, 7), st.integers(0, 1 << 40), st.integers(0, 1 << 20), st.integers(0, 2))
def test_garbage_behind_a_plausible_ser_fails_cleanly_within_budget(memory, page, size, nr_folios, order):
    phys = memory.base + page % (memory.size // PAGE_SIZE) * PAGE_SIZE
    chunk = memory.base + (page + 1) % (memory.size // PAGE_SIZE) * PAGE_SIZE
    total_pages = -(-nr_folios * 16 // PAGE_SIZE)
    memory.write(
        phys, struct.pack("<QQIIQQIHH", 0, size, 0, 0, nr_folios, chunk, total_pages, KHO_VMALLOC_ALLOC, order)
    )
    decode_checked(memory, phys)
