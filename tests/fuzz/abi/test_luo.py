"""Hostile LUO state (workbench/abi/luo.py): sessions, files and FLBs the encoder writes with hypothesis-chosen
names, counts and handles, then damaged (shared or looping block lists, extreme counts, pointers outside memory),
and raw garbage."""

from __future__ import annotations

import struct

from hypothesis import example, given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.fuzz.contract import CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import apply_memory_edits, garbage_memory, memory_edits, used_pages
from workbench.abi.block import encode_block_list
from workbench.abi.errors import AbiError, AddressNotInMemory, LoopDetected
from workbench.abi.luo import (
    FILE_SER_SIZE,
    LUO_ABI_COMPATIBLE,
    LUO_SER_SIZE,
    SESSION_SER_SIZE,
    LuoFile,
    LuoFlb,
    decode_luo,
    encode_luo,
)
from workbench.abi.physmem import PAGE_SIZE, BufferMemory

U64 = st.integers(0, (1 << 64) - 1)
C_NAME = st.text(st.characters(min_codepoint=1, max_codepoint=0x2FF), min_size=1, max_size=20)
FILES = st.lists(st.tuples(C_NAME, U64, U64), max_size=130)
SESSIONS = st.lists(st.tuples(C_NAME, FILES), max_size=4, unique_by=lambda s: s[0])
FLBS = st.lists(st.tuples(C_NAME, U64, U64), max_size=3)


def build(sessions, flbs, pages: int = 32):
    memory, allocator = area(pages)
    state = encode_luo(
        [(name, [LuoFile(c, d, t) for c, d, t in files]) for name, files in sessions],
        allocator,
        [LuoFlb(n, d, c) for n, d, c in flbs],
    )
    return memory, allocator, state


def decode_checked(memory: BufferMemory, phys: int, blob_size: int | None = LUO_SER_SIZE):
    """decode_luo and what the handover report derives from it, under the contract."""
    counted = CountingMemory(memory)

    def decode():
        state = decode_luo(counted, phys, blob_size)
        return state, state.files_frame(), state.metadata_pages()

    outcome = check_contract(decode, input_size=memory.size, errors=AbiError, memory=counted)
    if outcome.error is None:
        state, _frame, pages = outcome.result
        assert len({s.name for s in state.sessions}) == len(state.sessions)
        assert all(memory.contains(p, PAGE_SIZE) for p in pages if p != phys - phys % PAGE_SIZE)
    return outcome


@fuzz_settings()
@given(SESSIONS, FLBS)
def test_valid_state_decodes_exactly(sessions, flbs):
    memory, _allocator, written = build(sessions, flbs)
    outcome = decode_checked(memory, written.phys)
    assert outcome.error is None
    state = outcome.result[0]
    assert [(s.name, s.files) for s in state.sessions] == [(s.name, s.files) for s in written.sessions]
    assert state.flbs == written.flbs


@fuzz_settings()
@given(st.data(), SESSIONS, FLBS)
def test_damaged_state_fails_cleanly_within_budget(data, sessions, flbs):
    memory, allocator, written = build(sessions, flbs)
    damaged = apply_memory_edits(memory, data.draw(memory_edits(memory, used_pages(allocator)), label="edits"))
    decode_checked(damaged, written.phys, data.draw(st.one_of(st.none(), st.integers(0, 64)), label="blob_size"))


@fuzz_settings()
@given(garbage_memory(), st.integers(0, 7), st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1))
def test_garbage_behind_a_valid_header_fails_cleanly_within_budget(memory, page, sessions_pa, flbs_pa):
    phys = memory.base + page % (memory.size // PAGE_SIZE) * PAGE_SIZE
    header = LUO_ABI_COMPATIBLE.encode().ljust(8, b"\0") + struct.pack("<QQQ", 1, sessions_pa, flbs_pa)
    memory.write(phys, header)
    decode_checked(memory, phys)


@fuzz_settings()
@given(st.integers(1, 60), st.integers(1, 24))
@example(sessions=60, file_blocks=24)
def test_sessions_sharing_one_file_list_are_refused_without_rereading_it(sessions, file_blocks):
    """Each session pointing at the same long file list would make the decoder read it once per session: the work
    would grow with the square of the input. No page belongs to two lists in what a kernel writes."""
    memory, allocator = area(file_blocks + 8)
    files = encode_block_list(
        [LuoFile("memfd-v2", 0, i).pack() for i in range(63 * file_blocks)], FILE_SER_SIZE, allocator
    )
    entries = [
        f"s{i}".encode().ljust(64, b"\0") + struct.pack("<QQ", files.head_phys, 63 * file_blocks)
        for i in range(sessions)
    ]
    session_list = encode_block_list(entries, SESSION_SER_SIZE, allocator)
    phys = allocator.alloc()
    memory.write(phys, LUO_ABI_COMPATIBLE.encode().ljust(8, b"\0") + struct.pack("<QQQ", 1, session_list.head_phys, 0))
    outcome = decode_checked(memory, phys)
    if sessions > 1:
        assert isinstance(outcome.error, LoopDetected) and "s0" in str(outcome.error) and "s1" in str(outcome.error)


def test_an_flb_page_count_beyond_memory_is_refused():
    """metadata_pages() lists every FLB page: a page count of 2**64 - 1 must not reach it."""
    memory, allocator, written = build([("a", [])], [])
    memory.write(written.flbs_pa, struct.pack("<QQ", (1 << 64) - 1, 0))
    outcome = decode_checked(memory, written.phys)
    assert isinstance(outcome.error, AddressNotInMemory) and "FLB" in str(outcome.error)
