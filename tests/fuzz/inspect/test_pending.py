"""Hostile incoming session lists (workbench/inspect/pending.py): the sessions, files and memfds a previous kernel
hands over, written by the encoders with hypothesis-chosen names, tokens and folios, then damaged anywhere
(pointers rewired between blocks, extreme counts, memory cut short), and garbage where the list should start:
only the project's errors escape, within the contract's budget, and what decodes is what was written."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.fuzz.contract import CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import apply_memory_edits, garbage_memory, memory_edits, used_pages
from workbench.abi.errors import AbiError
from workbench.abi.luo import LuoFile, encode_luo
from workbench.abi.memfd import MEMFD_LUO_FH_COMPATIBLE, encode_memfd
from workbench.abi.physmem import PAGE_SIZE, BufferMemory
from workbench.inspect.pending import PENDING_COLUMNS, incoming_sessions_from_bytes

NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
U64 = st.integers(0, (1 << 64) - 1)
#: a file: a memfd of so many pages, or another handler's file with its data
FILE = st.one_of(st.integers(1, 6), st.tuples(st.sampled_from(["other-v1", "x"]), U64))
SESSIONS = st.lists(
    st.tuples(NAMES, st.lists(st.tuples(U64, FILE), max_size=4, unique_by=lambda f: f[0])),
    max_size=3,
    unique_by=lambda s: s[0],
)


def build(sessions):
    """Memory holding ``sessions`` (from :data:`SESSIONS`) as a previous kernel serialized them, and the rows
    they must decode to."""
    pages = sum(f if isinstance(f, int) else 0 for _, files in sessions for _, f in files)
    mem, alloc = area(48 + 2 * pages)
    written, expected = [], []
    for name, files in sessions:
        luo_files = []
        expected += [] if files else [(name, None, None, None)]
        for token, f in files:
            if isinstance(f, int):
                pfns = np.array([alloc.alloc() // PAGE_SIZE for _ in range(f)], dtype=np.uint64)
                memfd = encode_memfd(pfns, np.arange(f), f * PAGE_SIZE, alloc)
                luo_files.append(LuoFile(MEMFD_LUO_FH_COMPATIBLE, memfd.phys, token))
                expected.append((name, token, f * PAGE_SIZE, int(pfns[0])))
            else:
                luo_files.append(LuoFile(f[0], f[1], token))
                expected.append((name, token, None, None))
        written.append((name, luo_files))
    luo = encode_luo(written, alloc)
    return mem, alloc, luo.sessions_pa, expected


def decode_checked(memory: BufferMemory, sessions_pa: int):
    counted = CountingMemory(memory)
    outcome = check_contract(
        lambda: incoming_sessions_from_bytes(counted, sessions_pa),
        input_size=memory.size,
        errors=AbiError,
        memory=counted,
    )
    if outcome.error is None:
        table = outcome.result
        assert list(table.columns) == PENDING_COLUMNS
        memfds = table[table["compatible"] == MEMFD_LUO_FH_COMPATIBLE]
        assert (memfds["size"].isna() == memfds["error"].notna()).all()  # a memfd decodes or says why not
    return outcome


@fuzz_settings()
@given(SESSIONS)
def test_valid_session_lists_decode_exactly(sessions):
    mem, _alloc, sessions_pa, expected = build(sessions)
    outcome = decode_checked(mem, sessions_pa)
    assert outcome.error is None
    rows = outcome.result.to_dict("records")
    got = [(r["session"], r["token"], r["size"], r["first_pfn"]) for r in rows]
    assert got == expected
    assert all(r["error"] is None for r in rows)


@fuzz_settings()
@given(st.data(), SESSIONS)
def test_damaged_session_lists_fail_cleanly_within_budget(data, sessions):
    """The bytes a buggy or hostile previous kernel left: only the project's errors, a bounded amount of work."""
    mem, alloc, sessions_pa, _expected = build(sessions)
    damaged = apply_memory_edits(mem, data.draw(memory_edits(mem, used_pages(alloc)), label="edits"))
    decode_checked(damaged, sessions_pa)


@fuzz_settings()
@given(garbage_memory(), st.integers(0, 7), st.integers(0, PAGE_SIZE - 1))
def test_garbage_where_the_session_list_starts_fails_cleanly_within_budget(memory, page, offset):
    decode_checked(memory, memory.base + page % (memory.size // PAGE_SIZE) * PAGE_SIZE + offset // 8 * 8)
