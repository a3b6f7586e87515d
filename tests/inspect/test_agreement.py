"""Kernel objects against handover bytes, fact by fact (the lab test compares the real kernel's)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.inspect.agreement import VIEW_COLUMNS, agreement_summary, compare_views


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
    assert agreement_summary(table) == {"checked": 0, "one_sided": 3, "agree": None, "disagreements": []}


def test_without_a_session_list_only_memfds_are_compared():
    from_bytes = view([("outgoing", "vm", 2, 4096, 1, (12,))])
    table = compare_views(KERNEL, from_bytes, listed=False)
    assert set(table["what"]) == {"size", "folios", "pfns"} and table["agree"].all()
