"""Hostile kho_block lists (workbench/abi/block.py): lists the encoder writes, then damaged (cycles, shared
pages, pointers outside memory, extreme counts), and raw garbage pages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.fuzz.contract import CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import apply_memory_edits, garbage_memory, memory_edits, used_pages
from workbench.abi.block import KHO_MAX_BLOCKS, BlockList, encode_block_list, entries_per_block, read_block_list
from workbench.abi.errors import AbiError
from workbench.abi.luo import FILE_SER_SIZE, SESSION_SER_SIZE
from workbench.abi.physmem import PAGE_SIZE, BufferMemory

ENTRY_SIZES = st.one_of(st.sampled_from([FILE_SER_SIZE, SESSION_SER_SIZE]), st.integers(1, PAGE_SIZE - 16))


def decode_checked(memory: BufferMemory, head: int, entry_size: int):
    counted = CountingMemory(memory)
    outcome = check_contract(
        lambda: read_block_list(counted, head, entry_size, "fuzzed list"),
        input_size=memory.size,
        errors=AbiError,
        memory=counted,
    )
    if outcome.error is None:
        blocks = outcome.result.blocks
        assert len(blocks) <= KHO_MAX_BLOCKS
        assert len({b.phys for b in blocks}) == len(blocks)
        assert all(b.phys % PAGE_SIZE == 0 and memory.contains(b.phys, PAGE_SIZE) for b in blocks)
        assert all(1 <= b.count <= entries_per_block(entry_size) for b in blocks)
    return outcome


def encoded_list(entry_size: int, count: int, fill: bytes):
    """A list of ``count`` entries (each ``fill`` repeated, numbered in its first byte) in a small memory."""
    per_block = entries_per_block(entry_size)
    memory, allocator = area(4 + -(-count // per_block))
    entries = [bytes([i % 256]) + (fill * entry_size)[: entry_size - 1] for i in range(count)]
    return memory, allocator, encode_block_list(entries, entry_size, allocator), entries


LISTS = ENTRY_SIZES.flatmap(
    lambda size: st.tuples(
        st.just(size), st.integers(0, 3 * entries_per_block(size) + 1), st.binary(min_size=1, max_size=8)
    )
)


@fuzz_settings()
@given(LISTS)
def test_valid_lists_decode_exactly(spec):
    memory, _allocator, written, entries = encoded_list(*spec)
    outcome = decode_checked(memory, written.head_phys, written.entry_size)
    assert outcome.error is None and outcome.result.entries == entries


@fuzz_settings()
@given(st.data(), LISTS)
def test_damaged_lists_fail_cleanly_within_budget(data, spec):
    memory, allocator, written, _entries = encoded_list(*spec)
    pages = used_pages(allocator)
    if not pages:
        return
    damaged = apply_memory_edits(memory, data.draw(memory_edits(memory, pages), label="edits"))
    head = data.draw(st.one_of(st.just(written.head_phys), st.sampled_from(pages)), label="head")
    decode_checked(damaged, head, written.entry_size)


@fuzz_settings()
@given(garbage_memory(), st.integers(0, 7), ENTRY_SIZES)
def test_garbage_pages_fail_cleanly_within_budget(memory, head_page, entry_size):
    decode_checked(memory, memory.base + head_page % (memory.size // PAGE_SIZE) * PAGE_SIZE, entry_size)


def test_a_list_through_every_page_of_memory_is_read_once():
    """The longest list memory can hold: every page a block, so the decoder reads each page exactly once."""
    memory, allocator = area(256)
    written: BlockList = encode_block_list([b"x" * 64] * (63 * 256), 64, allocator)
    outcome = decode_checked(memory, written.head_phys, 64)
    assert outcome.error is None and outcome.reads == 256 and outcome.bytes_read == memory.size
