"""Hostile KHO state read with drgn (workbench/inspect/kho.py): the KHO FDT and the radix tree walk, over a
synthetic program whose memory holds encoded structures, damaged, or FDTs mutated from the real 7.2 capture."""

from __future__ import annotations

import drgn
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.abi.helpers import area
from tests.fuzz.abi.test_radix import FOLIOS, RADIX_BUDGET
from tests.fuzz.abi.test_radix import build as build_tree
from tests.fuzz.contract import CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import (
    REAL_KHO_OUT_7_2,
    apply_blob_edits,
    apply_memory_edits,
    blob_edits,
    memory_edits,
    used_pages,
)
from tests.inspect.synthetic import DIRECT_MAP, radix_root
from workbench.abi.fdt import encode_kho_fdt
from workbench.abi.physmem import PAGE_SIZE, BufferMemory
from workbench.inspect import kho
from workbench.inspect.errors import InspectError

# drgn's helpers let drgn.FaultError (which names the address) through for reads outside memory, as elsewhere in
# workbench/inspect.
ERRORS = (InspectError, drgn.FaultError)


def program_over(memory: CountingMemory) -> drgn.Program:
    """A drgn program seeing ``memory`` through the direct map (as tests/inspect/synthetic.py), reads counted."""
    prog = drgn.Program(
        drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
    )
    (r,) = memory.ranges
    prog.add_memory_segment(DIRECT_MAP + r.phys_start, r.size, lambda a, n, off, p: memory.read(r.phys_start + off, n))
    prog.cache["workbench.inspect.direct_map"] = DIRECT_MAP
    return prog


def read_fdt_checked(memory: BufferMemory, phys: int):
    counted = CountingMemory(memory)
    prog = program_over(counted)
    return check_contract(lambda: kho.read_kho_fdt(prog, phys), input_size=memory.size, errors=ERRORS, memory=counted)


@fuzz_settings()
@given(st.data(), st.sampled_from(["encoded", "real 7.2"]))
@example(data=None, seed="name outside the strings block")  # was a segmentation fault in pylibfdt
def test_damaged_fdts_fail_cleanly_within_budget(data, seed):
    memory = BufferMemory(4 * PAGE_SIZE, base=0x30_0000)
    if seed == "name outside the strings block":
        blob = bytearray(encode_kho_fdt(0x1000, [("LUO", 1, 2)]))
        at = int.from_bytes(blob[8:12], "big") + 16  # the root's BEGIN_NODE "", then its first PROP's nameoff
        blob[at : at + 4] = (1000).to_bytes(4, "big")
    else:
        blob = encode_kho_fdt(0x1234000, [("LUO", 0x5000, 32)]) if seed == "encoded" else REAL_KHO_OUT_7_2
        blob = apply_blob_edits(blob, data.draw(blob_edits(len(blob)), label="edits"))
    memory.write(memory.base, bytes(blob)[: memory.size])
    outcome = read_fdt_checked(memory, memory.base)
    if seed == "name outside the strings block":
        assert isinstance(outcome.error, InspectError) and "damaged" in str(outcome.error)


def walk_checked(memory: BufferMemory, root: int):
    counted = CountingMemory(memory)
    prog = program_over(counted)
    return check_contract(
        lambda: kho.preserved_folios(prog, radix_root(prog, root)),
        input_size=memory.size,
        errors=ERRORS,
        memory=counted,
        budget=RADIX_BUDGET,
    )


@fuzz_settings()
@given(st.data(), FOLIOS)
def test_damaged_radix_trees_fail_cleanly_within_budget(data, folios):
    memory, allocator, root = build_tree(folios)
    damaged = apply_memory_edits(memory, data.draw(memory_edits(memory, used_pages(allocator)), label="edits"))
    walk_checked(damaged, root)


@pytest.mark.parametrize("bits", [1, 0])
def test_a_leaf_under_a_key_with_no_valid_order_is_corrupt_if_it_holds_folios(bits):
    """A path through slot 511 at every level gives a key whose top bit is above the order-0 bit: no order (was
    an OverflowError, with or without bits in the leaf)."""
    memory, allocator = area(8)
    nodes = [allocator.alloc() for _ in range(6)]
    for parent, child in zip(nodes, nodes[1:], strict=False):
        memory.write_u64(parent + 511 * 8, child)
    memory.write_u64(nodes[-1], bits)
    outcome = walk_checked(memory, nodes[0])
    if bits:
        assert isinstance(outcome.error, InspectError) and "order" in str(outcome.error)
    else:
        assert outcome.error is None and outcome.result.empty
