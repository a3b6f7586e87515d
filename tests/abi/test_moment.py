"""The moment of a live update that handover bytes show, on handovers built as a 7.2 kernel leaves them at each
moment: nothing preserved, files preserved but not serialized, serialized at reboot, and handed to a next kernel."""

from __future__ import annotations

import numpy as np
import pytest

from tests.abi.helpers import area
from workbench.abi import decode_handover
from workbench.abi.handover import MemfdSpec, encode_handover
from workbench.abi.moment import MOMENTS, NEXT_KERNEL_MOMENTS, MomentReading, handover_moment
from workbench.abi.physmem import PAGE_SIZE

SESSIONS_PA_OFFSET = 16  # struct luo_ser: compatible[8], liveupdate_num, sessions_pa


def one_memfd(alloc, token: int = 7, pages: int = 4) -> MemfdSpec:
    pfns = np.array([alloc.alloc() // PAGE_SIZE for _ in range(pages)])
    return MemfdSpec(token, pfns, np.zeros(pages, np.uint8), np.arange(pages), pages * PAGE_SIZE)


def test_serialized_names_the_sessions_pointer():
    mem, alloc = area(256)
    encoded = encode_handover(alloc, {"s": [one_memfd(alloc)]})
    reading = handover_moment(decode_handover(mem, encoded.fdt_phys))
    assert reading.moment == "serialized" and reading.certain
    assert (
        f"{encoded.luo.sessions_pa:#x}" in reading.evidence[0] and "1 session(s) with 1 file(s)" in reading.evidence[0]
    )


def test_before_serialization_the_decoder_says_why_it_finds_no_sessions():
    mem, alloc = area(256)
    encoded = encode_handover(alloc, {"s": [one_memfd(alloc, pages=6)]})
    mem.write(encoded.luo.phys + SESSIONS_PA_OFFSET, bytes(8))  # what the kernel holds before liveupdate_reboot()
    handover = decode_handover(mem, encoded.fdt_phys)
    assert handover.luo.sessions == []
    summary = handover.summary()
    assert summary["moment"] == "preserved" and summary["moment_certain"] is True
    assert "only at reboot" in summary["sessions_note"] and "before serialization" in summary["sessions_note"]
    assert any("more than the handover's own" in e for e in summary["moment_evidence"])


def test_nothing_preserved_is_before_preserve():
    mem, alloc = area(64)
    encoded = encode_handover(alloc, {})
    summary = decode_handover(mem, encoded.fdt_phys).summary()
    assert summary["sessions"] == [] and summary["moment"] == "before_preserve"
    assert "sessions_note" in summary
    assert any("only the handover's own" in e for e in summary["moment_evidence"])


def test_without_the_memory_map_the_moment_before_reboot_is_uncertain():
    mem, alloc = area(256)
    encoded = encode_handover(alloc, {"s": [one_memfd(alloc)]})
    mem.write(encoded.luo.phys + SESSIONS_PA_OFFSET, bytes(8))
    summary = decode_handover(mem, encoded.fdt_phys, memory_map=False).summary()
    assert summary["moment_certain"] is False and summary["moment_possible"] == ["before_preserve", "preserved"]


def test_an_incoming_handover_allows_every_moment_of_the_next_kernel():
    mem, alloc = area(256)
    encoded = encode_handover(alloc, {"s": [one_memfd(alloc)]})
    handover = decode_handover(mem, encoded.fdt_phys, memory_map=False)
    handover.role, handover.role_reason, handover.memory_map_consumed = "incoming", "test", True
    summary = handover.summary()
    assert summary["moment"] == "next_kernel_pending" and summary["moment_certain"] is False
    assert summary["moment_possible"] == list(NEXT_KERNEL_MOMENTS)
    assert summary["unpreserved_check"].startswith("skipped: the next kernel consumed")
    assert "sessions_note" not in summary


def test_a_reading_names_a_known_moment():
    assert MomentReading("finished", []).as_dict()["moment_possible"] == ["finished"]
    assert len(MOMENTS) == 7
    with pytest.raises(ValueError, match="not one of"):
        MomentReading("rebooting", [])
