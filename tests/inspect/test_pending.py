"""Pending incoming sessions read from handover bytes, as a next kernel holds them before LUO deserializes them:
decoded from a session list the encoder wrote (the lab test reads the real kernel's)."""

from __future__ import annotations

import numpy as np

from tests.abi.helpers import area
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
