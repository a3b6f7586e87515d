"""Hostile handovers (workbench/abi/handover.py): whole handovers the encoder writes for hypothesis-chosen sessions,
memfds, FLBs and other preserved folios, then damaged anywhere (pointers rewired between structures, extreme
values, memory cut short), decoded strictly and leniently from memory, from a scan, and from an FDT blob (the real
7.2 debugfs capture among them), with everything ``workbench abi decode`` reports from the result."""

from __future__ import annotations

import struct

import libfdt
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.fuzz.contract import Budget, CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import (
    REAL_KHO_OUT_7_2,
    apply_blob_edits,
    apply_memory_edits,
    blob_edits,
    memory_edits,
    used_pages,
)
from workbench.abi.errors import AbiError, LoopDetected, MalformedData
from workbench.abi.handover import MemfdSpec, decode_fdt_blob, decode_handover, encode_handover
from workbench.abi.luo import LuoFile, LuoFlb
from workbench.abi.physmem import PAGE_SIZE, BufferMemory

REAL_7_2 = REAL_KHO_OUT_7_2
HANDOVER_BUDGET = Budget(memory_factor=256)  # the radix tree's folios: see tests/fuzz/test_radix.py

NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
MEMFD = st.tuples(st.integers(0, (1 << 64) - 1), st.lists(st.integers(0, 2), max_size=40))  # token, folio orders
HANDOVERS = st.tuples(
    st.dictionaries(NAMES, st.lists(MEMFD, max_size=3, unique_by=lambda m: m[0]), max_size=3),
    st.lists(st.tuples(NAMES, st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1)), max_size=2),
    st.integers(0, 24),  # other folios preserved
    st.text(max_size=70),  # release
    st.integers(0, (1 << 32) - 1),  # kexec count
)


def build(sessions, flbs, others, release, kexec_count):
    memory, allocator = area(
        96 + sum(sum(4 << o for o in orders) for specs in sessions.values() for _, orders in specs)
    )
    specs = {}
    for name, memfds in sessions.items():
        specs[name] = []
        for token, orders in memfds:
            pfns = np.array([allocator.alloc(o) // PAGE_SIZE for o in orders], dtype=np.uint64)
            indexes = np.cumsum([0] + [1 << o for o in orders])[:-1]
            size = int(sum(1 << o for o in orders)) * PAGE_SIZE
            specs[name].append(MemfdSpec(token, pfns, np.array(orders), indexes, size))
    other = np.arange(others, dtype=np.uint64) * 7 + memory.base // PAGE_SIZE
    encoded = encode_handover(
        allocator,
        specs,
        flbs=[LuoFlb(n, d, c) for n, d, c in flbs],
        other_folios=(other, np.zeros(others, np.uint8)),
        release=release,
        kexec_count=kexec_count,
    )
    return memory, allocator, encoded


def report(handover) -> tuple:
    """What ``workbench abi decode`` computes from a handover."""
    return (
        handover.summary(),
        handover.files(),
        handover.memfd_folios(),
        handover.preserved().groupby("order").size(),
        handover.unpreserved_references(),
    )


def decode_checked(memory: BufferMemory, decode):
    """``decode(counted_memory)`` and its report, under the contract."""
    counted = CountingMemory(memory)

    def call():
        handover = decode(counted)
        return handover, report(handover)

    return check_contract(call, input_size=memory.size, errors=AbiError, memory=counted, budget=HANDOVER_BUDGET)


@fuzz_settings()
@given(HANDOVERS)
def test_valid_handovers_decode_exactly(spec):
    memory, _allocator, encoded = build(*spec)
    outcome = decode_checked(memory, lambda m: decode_handover(m, encoded.fdt_phys))
    assert outcome.error is None
    handover, (summary, _files, folios, _orders, unpreserved) = outcome.result
    assert unpreserved.empty and summary["files"] == sum(len(v) for v in spec[0].values())
    assert len(folios) == sum(len(orders) for specs in spec[0].values() for _, orders in specs)


@fuzz_settings()
@given(st.data(), HANDOVERS, st.booleans(), st.booleans())
def test_damaged_handovers_fail_cleanly_within_budget(data, spec, strict, scan):
    memory, allocator, encoded = build(*spec)
    damaged = apply_memory_edits(memory, data.draw(memory_edits(memory, used_pages(allocator)), label="edits"))
    outcome = decode_checked(damaged, lambda m: decode_handover(m, None if scan else encoded.fdt_phys, strict=strict))
    if not strict and outcome.error is None:
        assert all(isinstance(e, AbiError) for e in outcome.result[0].errors)


@fuzz_settings()
@given(st.data(), HANDOVERS, st.sampled_from(["encoded", "real 7.2"]), st.booleans())
def test_damaged_fdt_blobs_fail_cleanly_within_budget(data, spec, seed, strict):
    """decode_fdt_blob with a blob from debugfs: damaged, or cut short (then completed from memory)."""
    memory, _allocator, encoded = build(*spec)
    blob = memory.read(encoded.fdt_phys, PAGE_SIZE) if seed == "encoded" else REAL_7_2
    blob = blob[: struct.unpack_from(">I", blob, 4)[0]] if seed == "encoded" else blob
    damaged = apply_blob_edits(blob, data.draw(blob_edits(len(blob)), label="edits"))
    fdt_phys = data.draw(st.sampled_from([None, encoded.fdt_phys]), label="fdt_phys")
    decode_checked(memory, lambda m: decode_fdt_blob(damaged, m, fdt_phys, strict=strict))


def test_files_sharing_one_folio_array_are_refused_without_rereading_it():
    """Every file of a session naming the same memfd_luo_ser: a decoder that read its folio array once per file
    would do work growing with the square of the input."""
    memory, allocator = area(64)
    pfns = np.arange(1500, dtype=np.uint64) % 64 + memory.base // PAGE_SIZE  # 6 pages of folio array
    memfd = MemfdSpec(1, pfns, np.zeros(1500, np.uint8), np.arange(1500), 1500 * PAGE_SIZE)
    encoded = encode_handover(allocator, {"s": [memfd]})
    (ser_phys,) = [m.phys for m in encoded.memfds.values()]
    session_files = encoded.luo.sessions[0].files_phys
    files = [LuoFile("memfd-v2", ser_phys, token).pack() for token in range(63)]
    memory.write(session_files + 16, b"".join(files))
    memory.write(session_files, struct.pack("<QQ", 0, 63))
    memory.write(encoded.luo.session_block_pages[0] + 16 + 72, struct.pack("<Q", 63))  # the session's file count
    outcome = decode_checked(memory, lambda m: decode_handover(m, encoded.fdt_phys, strict=False))
    assert outcome.error is None
    handover = outcome.result[0]
    assert len(handover.memfds) == 1 and len(handover.errors) == 62
    assert all(isinstance(e, LoopDetected) and "share" in str(e) for e in handover.errors)


def test_sub_nodes_pointing_into_one_fdt_are_refused_without_rereading_it():
    """500 KHO sub-nodes naming the same 12 KiB sub-FDT in 256 KiB of memory: each would be read again."""
    memory, allocator = area(64)
    sub_fdt = allocator.alloc_for(16 << 10)
    memory.write(sub_fdt, _fdt_with_subtrees(0, [], padding=12 << 10))
    subtrees = [(f"s{i}", sub_fdt, 16 << 10) for i in range(500)]
    blob = _fdt_with_subtrees(allocator.alloc(), subtrees)
    root = allocator.alloc_for(len(blob))
    memory.write(root, blob)
    outcome = decode_checked(memory, lambda m: decode_handover(m, root, memory_map=False, strict=False))
    assert outcome.error is None
    handover = outcome.result[0]
    assert 0 < len(handover.subtree_fdts) <= 21 and len(handover.subtree_fdts) + len(handover.errors) == 500
    assert all(isinstance(e, MalformedData) and "same FDT" in str(e) for e in handover.errors)


def _fdt_with_subtrees(memory_map: int, subtrees, padding: int = 0) -> bytes:
    """A KHO FDT with these ``(name, data, size)`` sub-nodes, made ``padding`` bytes larger by a property."""
    sw = libfdt.FdtSw(64 << 10)
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", "kho-v4")
    if padding:
        sw.property("padding", bytes(padding))
    sw.property("preserved-memory-map", struct.pack("<Q", memory_map))
    for name, data, size in subtrees:
        sw.begin_node(name)
        sw.property("preserved-data", struct.pack("<Q", data))
        sw.property("blob-size", struct.pack("<Q", size))
        sw.end_node()
    sw.end_node()
    fdt = sw.as_fdt()
    return bytes(fdt.as_bytearray())[: fdt.totalsize()]
