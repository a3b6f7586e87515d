"""Hostile kho_vmalloc areas (workbench/abi/vmalloc.py): areas the encoder writes with hypothesis-chosen sizes and
orders, then damaged (descriptors with extreme counts and orders, looping or shared chunk lists, pages listed
twice or outside memory), and raw garbage."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.fuzz.contract import CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import EXTREME_U32, apply_memory_edits, garbage_memory, memory_edits, used_pages
from workbench.abi.errors import AbiError, MalformedData
from workbench.abi.physmem import PAGE_SIZE, BufferMemory
from workbench.abi.vmalloc import CHUNK_ENTRIES, KHO_VMALLOC_ALLOC, KhoVmalloc, encode_kho_vmalloc, read_kho_vmalloc

AREAS = st.tuples(st.integers(0, 3 * CHUNK_ENTRIES * PAGE_SIZE // 64), st.integers(0, 2), st.integers(0, 3))


def build(nbytes: int, order: int, flags: int):
    pages = 2 * (-(-max(nbytes, 1) // PAGE_SIZE) + 4 << order) + 8
    memory, allocator = area(pages)
    data = (np.arange(nbytes, dtype=np.uint32) * 2654435761 >> 24).astype(np.uint8)
    written = encode_kho_vmalloc(data, allocator, order=order, flags=flags)
    return memory, allocator, written, data.tobytes()


def decode_checked(memory: BufferMemory, desc: KhoVmalloc):
    """read_kho_vmalloc and everything a caller reads from the area, under the contract."""
    counted = CountingMemory(memory)

    def decode():
        found = read_kho_vmalloc(counted, desc, "fuzzed area")
        return found, found.read(counted), found.page_phys, found.preserved_folios()

    outcome = check_contract(decode, input_size=memory.size, errors=AbiError, memory=counted)
    if outcome.error is None:
        found, contents, page_phys, _folios = outcome.result
        assert len(contents) == desc.total_pages * PAGE_SIZE
        assert page_phys.size == desc.total_pages == len(set(page_phys.tolist()))
    return outcome


@fuzz_settings()
@given(AREAS)
def test_valid_areas_decode_exactly(spec):
    nbytes, order, flags = spec
    memory, _allocator, written, data = build(nbytes, order, flags & KHO_VMALLOC_ALLOC | 1)
    outcome = decode_checked(memory, written.descriptor)
    assert outcome.error is None and outcome.result[1][:nbytes] == data
    assert outcome.result[0].chunk_phys == written.chunk_phys


@fuzz_settings()
@given(
    st.data(),
    AREAS,
    st.one_of(st.none(), st.sampled_from(EXTREME_U32), st.integers(0, (1 << 32) - 1)),
    st.one_of(st.none(), st.integers(0, (1 << 16) - 1)),
    st.one_of(st.none(), st.integers(0, (1 << 16) - 1)),
)
def test_damaged_areas_fail_cleanly_within_budget(data, spec, total_pages, order, flags):
    memory, allocator, written, _data = build(*spec)
    damaged = apply_memory_edits(memory, data.draw(memory_edits(memory, used_pages(allocator)), label="edits"))
    d = written.descriptor
    first = data.draw(st.one_of(st.just(d.first), st.sampled_from(used_pages(allocator))), label="first")
    desc = KhoVmalloc(
        first,
        d.total_pages if total_pages is None else total_pages,
        d.flags if flags is None else flags,
        d.order if order is None else order,
    )
    decode_checked(damaged, desc)


@fuzz_settings()
@given(garbage_memory(), st.integers(0, 7), st.integers(0, (1 << 32) - 1), st.integers(0, 20))
@example(memory=BufferMemory(PAGE_SIZE, base=0x10_0000), page=0, total_pages=0, order=0)  # was an IndexError
def test_garbage_chunks_fail_cleanly_within_budget(memory, page, total_pages, order):
    first = memory.base + page % (memory.size // PAGE_SIZE) * PAGE_SIZE
    decode_checked(memory, KhoVmalloc(first, total_pages, KHO_VMALLOC_ALLOC, order))


@fuzz_settings()
@given(st.integers(0, 9), st.integers(2, CHUNK_ENTRIES))
@example(order=9, copies=CHUNK_ENTRIES)
def test_a_block_listed_twice_is_refused_before_the_area_is_read(order, copies):
    """One chunk listing the same block ``copies`` times describes an area ``copies`` times larger than the memory
    it is made of; reading it would take that much memory and work."""
    memory, allocator = area((2 << order) + 2)
    block = allocator.alloc(order)
    chunk = allocator.alloc()
    memory.write(chunk, np.array([0] + [block] * copies, dtype="<u8"))
    outcome = decode_checked(memory, KhoVmalloc(chunk, copies << order, KHO_VMALLOC_ALLOC, order))
    assert isinstance(outcome.error, MalformedData) and "twice" in str(outcome.error)
