"""Hostile preserved-memory radix trees (workbench/abi/radix.py): trees the encoder writes for hypothesis-chosen
folios, then damaged (node pointers rewired into cycles, shared subtrees, misaligned or outside memory; bitmaps
and tables overwritten), and raw garbage as the root."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.abi.helpers import area, as_set
from tests.fuzz.contract import Budget, CountingMemory, check_contract, fuzz_settings
from tests.fuzz.mutation import apply_memory_edits, garbage_memory, memory_edits, used_pages
from workbench.abi.errors import AbiError
from workbench.abi.physmem import PAGE_SIZE, BufferMemory
from workbench.abi.radix import MAX_ORDER, encode_radix_tree, radix_node_counts, read_radix_tree

# A full leaf decodes into 32768 folios of 9 bytes each, and a DataFrame copies them: the output itself is up to
# ~150 times the size of the leaf page it comes from.
RADIX_BUDGET = Budget(memory_factor=256)

FOLIOS = st.lists(
    st.integers(0, MAX_ORDER).flatmap(
        lambda o: st.tuples(
            st.one_of(st.integers(0, 1 << 12), st.integers(0, (1 << (52 - o)) - 1)).map(lambda m: m << o), st.just(o)
        )
    ),
    max_size=12,
    unique=True,
)


def build(folios):
    pfns = np.array([p for p, _ in folios], dtype=np.uint64)
    orders = np.array([o for _, o in folios], dtype=np.uint8)
    leaves = np.unique([(1 << (52 - o) | p >> o) >> 15 for p, o in folios]) if folios else np.empty(0)
    nodes = sum(radix_node_counts(np.asarray(leaves, dtype=np.uint64) << np.uint64(15)).values())
    memory, allocator = area(nodes + 2)
    return memory, allocator, encode_radix_tree(pfns, orders, allocator)


def decode_checked(memory: BufferMemory, root: int):
    """read_radix_tree and everything the handover report takes from it, under the contract."""
    counted = CountingMemory(memory)

    def decode():
        tree = read_radix_tree(counted, root)
        return tree, tree.frame(), tree.folio_count, tree.page_count, tree.nodes_per_level()

    outcome = check_contract(decode, input_size=memory.size, errors=AbiError, memory=counted, budget=RADIX_BUDGET)
    if outcome.error is None:
        tree = outcome.result[0]
        nodes = np.concatenate([tree.table_phys, tree.leaf_phys])
        assert np.unique(nodes).size == nodes.size == tree.node_pages  # every node read once
        assert counted.bytes_read == tree.node_pages * PAGE_SIZE
    return outcome


@fuzz_settings()
@given(FOLIOS)
def test_valid_trees_decode_exactly(folios):
    memory, _allocator, root = build(folios)
    outcome = decode_checked(memory, root)
    assert outcome.error is None
    frame = outcome.result[1]
    assert as_set(frame["pfn"], frame["order"]) == set(folios)


@fuzz_settings()
@given(st.data(), FOLIOS)
def test_damaged_trees_fail_cleanly_within_budget(data, folios):
    memory, allocator, root = build(folios)
    damaged = apply_memory_edits(memory, data.draw(memory_edits(memory, used_pages(allocator)), label="edits"))
    decode_checked(damaged, root)


@fuzz_settings()
@given(garbage_memory(max_pages=16), st.integers(0, 15))
def test_garbage_as_a_tree_fails_cleanly_within_budget(memory, page):
    decode_checked(memory, memory.base + page % (memory.size // PAGE_SIZE) * PAGE_SIZE)


def test_a_tree_whose_every_leaf_is_full_stays_within_budget():
    """The largest legitimate output per input byte: every bit of every leaf set."""
    memory, allocator = area(6)  # the root, four tables and the leaf
    root = encode_radix_tree(np.arange(1 << 15, dtype=np.uint64), np.zeros(1 << 15, np.uint8), allocator)
    outcome = decode_checked(memory, root)
    assert outcome.error is None and outcome.result[2] == 1 << 15
