"""Pending incoming sessions read from handover bytes, as a next kernel holds them before LUO deserializes them:
decoded from a session list the encoder wrote (the lab test reads the real kernel's)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.fuzz.contract import Budget, CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import apply_memory_edits, memory_edits, used_pages
from workbench.abi.errors import AbiError
from workbench.abi.luo import LuoFile, encode_luo
from workbench.abi.memfd import MEMFD_LUO_FH_COMPATIBLE, encode_memfd
from workbench.abi.physmem import PAGE_SIZE
from workbench.inspect.pending import PENDING_COLUMNS, incoming_sessions_from_bytes


def test_every_session_token_size_and_folio_count_comes_from_the_bytes():
    mem, alloc = area(256)
    pfns = np.array([alloc.alloc() // PAGE_SIZE for _ in range(3)])
    memfd = encode_memfd(pfns, np.arange(3), 3 * PAGE_SIZE - 100, alloc)
    garbage = alloc.alloc()
    mem.write(garbage, b"\xff" * PAGE_SIZE)  # not a memfd_luo_ser that decodes
    files = [
        LuoFile(MEMFD_LUO_FH_COMPATIBLE, memfd.phys, (1 << 64) - 1),
        LuoFile("other-v1", 0x1234, 5),
        LuoFile(MEMFD_LUO_FH_COMPATIBLE, garbage, 6),
    ]
    luo = encode_luo([("vm", files), ("empty", [])], alloc)
    table = incoming_sessions_from_bytes(mem, luo.sessions_pa)
    assert list(table.columns) == PENDING_COLUMNS
    rows = table.to_dict("records")
    assert [(r["session"], r["token"]) for r in rows] == [("vm", (1 << 64) - 1), ("vm", 5), ("vm", 6), ("empty", None)]
    first = rows[0]
    assert (first["size"], first["folios"], first["pages"], first["first_pfn"]) == (3 * PAGE_SIZE - 100, 3, 3, pfns[0])
    assert first["ser_phys"] == memfd.phys and first["error"] is None
    assert rows[1]["compatible"] == "other-v1" and rows[1]["size"] is None
    assert rows[2]["size"] is None and "memfd vm/0x6" in rows[2]["error"]


def test_no_sessions_at_all():
    mem, _alloc = area(4)
    assert incoming_sessions_from_bytes(mem, 0).empty


@fuzz_settings()
@given(st.data())
def test_damaged_session_lists_fail_cleanly_within_budget(data):
    """The bytes a buggy or hostile previous kernel left: only the project's errors, a bounded amount of work."""
    mem, alloc = area(64)
    pfns = np.array([alloc.alloc() // PAGE_SIZE for _ in range(4)])
    memfds = [encode_memfd(pfns[i : i + 2], np.arange(2), 2 * PAGE_SIZE, alloc) for i in (0, 2)]
    files = [LuoFile(MEMFD_LUO_FH_COMPATIBLE, m.phys, t) for t, m in enumerate(memfds)]
    luo = encode_luo([("a", files), ("b", files[:1])], alloc)
    damaged = apply_memory_edits(mem, data.draw(memory_edits(mem, used_pages(alloc)), label="edits"))
    counted = CountingMemory(damaged)
    outcome = check_contract(
        lambda: incoming_sessions_from_bytes(counted, luo.sessions_pa),
        input_size=damaged.size,
        errors=AbiError,
        memory=counted,
        budget=Budget(),
    )
    if outcome.error is None:
        assert list(outcome.result.columns) == PENDING_COLUMNS
