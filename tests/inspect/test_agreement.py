"""Kernel objects against handover bytes, fact by fact (the lab test compares the real kernel's)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.abi.helpers import area
from workbench.abi.luo import LuoFile, encode_luo
from workbench.abi.memfd import MEMFD_LUO_FH_COMPATIBLE, encode_memfd
from workbench.abi.physmem import PAGE_SIZE
from workbench.inspect.agreement import (
    UNDECODED,
    VIEW_COLUMNS,
    agreement_summary,
    bytes_view,
    compare_views,
    with_undecoded,
)


def view(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=VIEW_COLUMNS, dtype=object)


KERNEL = view(
    [
        ("outgoing", "vm", 1, 8192, 2, (10, 11)),
        ("outgoing", "vm", 2, 4096, 1, (12,)),
        ("incoming", "old", 3, None, None, None),
    ]
)


def test_serialized_sessions_tokens_and_memfds_agree():
    from_bytes = view([("outgoing", "vm", 1, 8192, 2, (10, 11)), ("outgoing", "vm", 2, 4096, 1, (12,))])
    table = compare_views(KERNEL, from_bytes, listed=True, preserved=np.array([10, 11, 12], dtype=np.uint64))
    assert set(table["what"]) == {"sessions", "tokens", "size", "folios", "pfns", "pfns preserved"}
    summary = agreement_summary(table)
    assert summary["agree"] is True and summary["checked"] == len(table) and summary["disagreements"] == []


def test_every_kind_of_difference_is_reported():
    from_bytes = view([("outgoing", "vm", 1, 8192, 2, (10, 99)), ("outgoing", "gone", 9, 0, 0, ())])
    table = compare_views(KERNEL, from_bytes, listed=True, preserved=np.array([10], dtype=np.uint64))
    bad = {(r["what"], r["token"]) for r in agreement_summary(table)["disagreements"]}
    assert bad == {("sessions", None), ("tokens", None), ("pfns", 1), ("pfns preserved", 1), ("pfns preserved", 2)}
    tokens = table[table["what"] == "tokens"].iloc[0]
    assert (tokens["session"], tokens["kernel"], tokens["bytes"]) == ("vm", "1, 2", "1")
    pfns = table[(table["what"] == "pfns") & (table["token"] == 1)].iloc[0]
    assert pfns["kernel"] == "2 pfn(s), first 0xa" and pfns["bytes"] == "2 pfn(s), first 0xa"


def test_facts_only_one_side_holds_are_shown_not_judged():
    from_bytes = view([("incoming", "old", 3, 4096, 1, (50,))])
    table = compare_views(KERNEL, from_bytes, listed=False)
    assert list(table["what"]) == ["size", "folios", "pfns"] and table["agree"].isna().all()
    assert list(table["kernel"]) == ["-", "-", "-"] and list(table["bytes"]) == ["4096", "1", "1 pfn(s), first 0x32"]
    assert agreement_summary(table) == {
        "checked": 0,
        "one_sided": 3,
        "agree": None,
        "disagreements": [],
        "undecoded": [],
    }


def test_without_a_session_list_only_memfds_are_compared():
    from_bytes = view([("outgoing", "vm", 2, 4096, 1, (12,))])
    table = compare_views(KERNEL, from_bytes, listed=False)
    assert set(table["what"]) == {"size", "folios", "pfns"} and table["agree"].all()


def serialized_vm():
    """Bytes as the kernel of :data:`KERNEL` serializes them: session ``vm`` with memfds 1 and 2."""
    mem, alloc = area(64)
    pfns = [np.array([alloc.alloc() // PAGE_SIZE for _ in range(n)], dtype=np.uint64) for n in (2, 1)]
    memfds = [encode_memfd(p, np.arange(len(p)), len(p) * PAGE_SIZE, alloc) for p in pfns]
    files = [LuoFile(MEMFD_LUO_FH_COMPATIBLE, m.phys, token) for token, m in zip((1, 2), memfds, strict=True)]
    luo = encode_luo([("vm", files)], alloc)
    kernel = view(
        [
            ("outgoing", "vm", t, len(p) * PAGE_SIZE, len(p), tuple(int(x) for x in p))
            for t, p in zip((1, 2), pfns, strict=True)
        ]
    )
    return mem, luo, memfds, kernel


def agreement_of(mem, sessions_pa, kernel, sers=()):
    from_bytes, listed, undecoded = bytes_view(mem, sessions_pa, list(sers))
    return with_undecoded(compare_views(kernel, from_bytes, listed=listed), undecoded)


def test_bytes_that_decode_agree_with_the_kernel():
    mem, luo, _memfds, kernel = serialized_vm()
    table = agreement_of(mem, luo.sessions_pa, kernel)
    summary = agreement_summary(table)
    assert summary["agree"] is True and summary["undecoded"] == [] and "tokens" in set(table["what"])


def test_a_session_list_that_does_not_decode_is_a_disagreement_not_nothing_in_common():
    mem, luo, _memfds, kernel = serialized_vm()
    mem.write(luo.sessions_pa, b"\xff" * PAGE_SIZE)
    table = agreement_of(mem, luo.sessions_pa, kernel)
    row = table[table["what"] == "session list"].iloc[0]
    assert not row["agree"] and row["bytes"].startswith(UNDECODED) and f"{luo.sessions_pa:#x}" in row["kernel"]
    summary = agreement_summary(table)
    assert summary["agree"] is False and summary["checked"] == 1
    assert len(summary["undecoded"]) == 1 and summary["undecoded"][0].startswith("session list (luo_ser_out")


def test_a_memfd_that_does_not_decode_is_a_disagreement_whichever_way_it_was_found():
    mem, luo, memfds, kernel = serialized_vm()
    mem.write(memfds[1].phys, b"\xff" * 64)
    sers = [("outgoing", "vm", token, m.phys) for token, m in zip((1, 2), memfds, strict=True)]
    for sessions_pa in (luo.sessions_pa, 0):  # through the session list, or through the kernel's own pointer
        table = agreement_of(mem, sessions_pa, kernel, sers)
        bad = agreement_summary(table)["disagreements"]
        assert [(r["what"], r["token"]) for r in bad] == [("memfd_luo_ser", 2)], sessions_pa
        assert f"{memfds[1].phys:#x}" in bad[0]["kernel"] and "memfd vm/0x2" in bad[0]["bytes"]
        facts = table[(table["token"] == 1) & table["what"].isin(["size", "folios", "pfns"])]
        assert len(facts) == 3 and facts["agree"].all()  # the memfd that decodes is still checked
