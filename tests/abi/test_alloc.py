"""The bump allocator the encoders take pages from."""

import pytest

from workbench.abi.alloc import OutOfPages, PageAllocator
from workbench.abi.physmem import PAGE_SIZE, BufferMemory


def test_pages_are_zeroed_aligned_and_in_order():
    memory = BufferMemory(64 * PAGE_SIZE, base=0x100000)
    memory.array[:] = 0xAA
    alloc = PageAllocator(memory)
    first = alloc.alloc()
    assert first == 0x100000 and memory.read(first, PAGE_SIZE) == bytes(PAGE_SIZE)
    big = alloc.alloc(3)
    assert big % (8 * PAGE_SIZE) == 0 and big > first
    assert memory.read(big, 8 * PAGE_SIZE) == bytes(8 * PAGE_SIZE)
    run = alloc.alloc_run(5)
    assert run == big + 8 * PAGE_SIZE
    assert alloc.alloc_for(1) == run + 5 * PAGE_SIZE
    assert alloc.alloc_for(PAGE_SIZE + 1) % (2 * PAGE_SIZE) == 0
    assert [n for _, n in alloc.allocated] == [1, 8, 5, 1, 2]


def test_running_out_and_bad_areas_are_errors():
    memory = BufferMemory(4 * PAGE_SIZE)
    alloc = PageAllocator(memory)
    alloc.alloc_run(4)
    with pytest.raises(OutOfPages, match="0x4000"):
        alloc.alloc()
    with pytest.raises(ValueError):
        PageAllocator(memory, start=100)
    with pytest.raises(ValueError):
        PageAllocator(memory, start=0, end=8 * PAGE_SIZE)
