"""The preserved-memory radix tree: decoded exactly like the kernel's walk, against a slow pure-Python reference
written from the ABI description, for trees built by both encoders; every kind of damage is reported."""

import struct

import numpy as np
import pytest

from tests.abi.helpers import area, as_set, random_folios
from workbench.abi.alloc import OutOfPages
from workbench.abi.errors import AddressNotInMemory, LoopDetected, MalformedData
from workbench.abi.physmem import PAGE_SIZE
from workbench.abi.radix import (
    MAX_ORDER,
    RadixBuilder,
    decode_key,
    decode_leaves,
    encode_key,
    encode_radix_tree,
    leaves_from_folios,
    preserved_pages,
    radix_node_counts,
    read_radix_tree,
    write_radix_tree,
)


def reference_walk(mem, root: int) -> list[tuple[int, int]]:
    """kho_radix_walk_tree in plain Python: 512 u64 per table, 5 table levels, 32768-bit leaves where bit i is
    bit i%8 of byte i/8; key -> (pfn, order) by fls64."""
    found = []

    def walk(node: int, level: int, start: int) -> None:
        table = struct.unpack("<512Q", mem.read(node, PAGE_SIZE))
        for i, child in enumerate(table):
            if not child:
                continue
            key = start | (i << ((level - 1) * 9 + 15))
            if level > 1:
                walk(child, level - 1, key)
                continue
            leaf = mem.read(child, PAGE_SIZE)
            for byte_index, byte in enumerate(leaf):
                if not byte:
                    continue
                for bit in range(8):
                    if byte >> bit & 1:
                        k = key | (byte_index * 8 + bit)
                        order = 52 - k.bit_length() + 1
                        phys = (k << (12 + order)) & (2**64 - 1)
                        found.append((phys >> 12, order))

    walk(root, 5, 0)
    return found


def test_key_encoding_matches_the_abi_table():
    assert encode_key(0x12345, 0) == (1 << 52) | 0x12345
    assert encode_key(0x200, 1) == (1 << 51) | 0x100
    assert encode_key(0x400, 9) == (1 << 43) | 0x2
    assert decode_key((1 << 43) | 0x2) == (0x400, 9)
    for pfn, order in [(0, 0), (0xFFFFFFFFFFFFF, 0), (1 << 37, 37), (0xABC000, 12)]:
        assert decode_key(encode_key(pfn, order)) == (pfn, order)
    with pytest.raises(ValueError):
        encode_key(0x201, 1)  # not aligned
    with pytest.raises(ValueError):
        encode_key(0, MAX_ORDER + 1)
    with pytest.raises(ValueError):
        decode_key(0x7FFF)


def test_tree_bytes_follow_the_kernel_layout():
    mem, alloc = area(64)
    root = write_radix_tree(*leaves_from_folios(np.array([0x12345]), np.array([0])), alloc)
    key = (1 << 52) | 0x12345
    node = root
    for high, low in [(59, 51), (50, 42), (41, 33), (32, 24), (23, 15)]:
        slot = (key >> low) & ((1 << (high - low + 1)) - 1)
        table = struct.unpack("<512Q", mem.read(node, PAGE_SIZE))
        assert [i for i, v in enumerate(table) if v] == [slot]
        node = table[slot]
    leaf = mem.read(node, PAGE_SIZE)
    bit = key & 0x7FFF
    assert leaf[bit // 8] == 1 << (bit % 8) and sum(leaf) == leaf[bit // 8]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_matches_the_reference_for_both_encoders(seed):
    pfns, orders = random_folios(seed, count=400)
    mem, alloc = area(4096)
    root_a = encode_radix_tree(pfns, orders, alloc)
    root_b = write_radix_tree(*leaves_from_folios(pfns, orders), alloc)
    for root in (root_a, root_b):
        reference = reference_walk(mem, root)
        tree = read_radix_tree(mem, root)
        decoded = tree.folios()
        assert list(zip(*(a.tolist() for a in decoded), strict=True)) == reference  # same order as the kernel
        assert set(reference) == as_set(pfns, orders)
        assert tree.folio_count == pfns.size
        assert tree.page_count == int((np.int64(1) << orders.astype(np.int64)).sum())


def test_both_encoders_produce_the_same_tree_shape():
    pfns, orders = random_folios(5, count=2000)
    mem, alloc = area(16384)
    a = read_radix_tree(mem, encode_radix_tree(pfns, orders, alloc))
    b = read_radix_tree(mem, write_radix_tree(*leaves_from_folios(pfns, orders), alloc))
    assert a.nodes_per_level() == b.nodes_per_level()
    assert sum(a.nodes_per_level().values()) == sum(radix_node_counts(a.leaf_keys).values()) == a.node_pages
    np.testing.assert_array_equal(a.leaf_keys, b.leaf_keys)
    np.testing.assert_array_equal(a.bitmaps, b.bitmaps)


def test_insertion_order_does_not_change_the_content():
    pfns, orders = random_folios(6, count=1000)
    perm = np.random.default_rng(0).permutation(pfns.size)
    mem, alloc = area(8192)
    a = read_radix_tree(mem, encode_radix_tree(pfns, orders, alloc))
    b = read_radix_tree(mem, encode_radix_tree(pfns[perm], orders[perm], alloc))
    np.testing.assert_array_equal(a.bitmaps, b.bitmaps)


def test_dense_full_words_and_iteration_in_pieces():
    pfns = np.arange(1 << 17, dtype=np.uint64)  # four full leaves: the all-ones fast path
    extra = np.uint64(1 << 30) + np.arange(64, dtype=np.uint64) * np.uint64(512)  # one full word of 2 MiB folios
    all_pfns = np.concatenate([pfns, extra])
    orders = np.concatenate([np.zeros(pfns.size, np.uint8), np.full(extra.size, 9, np.uint8)])
    mem, alloc = area(64)
    tree = read_radix_tree(mem, encode_radix_tree(all_pfns, orders, alloc))
    got_p, got_o = tree.folios()
    assert as_set(got_p, got_o) == as_set(all_pfns, orders)
    pieces = [(p.copy(), o.copy()) for p, o in tree.iter_folios(1)]
    assert len(pieces) == 5
    np.testing.assert_array_equal(np.concatenate([p for p, _ in pieces]), got_p)
    frame = preserved_pages(mem, tree.root_phys)
    assert list(frame.columns) == ["pfn", "order"] and frame["pfn"].dtype == np.uint64 and len(frame) == got_p.size
    assert tree.page_count == pfns.size + 64 * 512


def test_empty_tree():
    mem, alloc = area(8)
    tree = read_radix_tree(mem, encode_radix_tree(np.empty(0), np.empty(0), alloc))
    assert tree.node_pages == 1 and tree.folio_count == 0 and len(tree.frame()) == 0


def small_tree():
    mem, alloc = area(64)
    root = encode_radix_tree(np.array([0x12345, 0x400]), np.array([0, 9]), alloc)
    tree = read_radix_tree(mem, root)
    return mem, alloc, tree


def test_pointer_outside_memory():
    mem, _, tree = small_tree()
    outside = mem.base + 1000 * PAGE_SIZE
    mem.write_u64(tree.root_phys + 2 * 8, outside)
    with pytest.raises(AddressNotInMemory, match=f"{outside:#x}") as exc:
        read_radix_tree(mem, tree.root_phys)
    assert exc.value.phys == outside
    with pytest.raises(AddressNotInMemory):
        read_radix_tree(mem, mem.base - PAGE_SIZE)


def test_misaligned_pointer_and_zero_root():
    mem, _, tree = small_tree()
    level1 = int(tree.table_phys[tree.table_levels == 1][0])
    table = struct.unpack("<512Q", mem.read(level1, PAGE_SIZE))
    slot = next(i for i, v in enumerate(table) if v)
    mem.write_u64(level1 + slot * 8, table[slot] + 8)
    with pytest.raises(MalformedData, match="not page aligned"):
        read_radix_tree(mem, tree.root_phys)
    with pytest.raises(MalformedData, match="no radix tree root"):
        read_radix_tree(mem, 0)


def test_node_reached_twice_is_a_loop():
    mem, _, tree = small_tree()
    level2 = int(tree.table_phys[tree.table_levels == 2][0])
    mem.write_u64(level2 + 511 * 8, tree.root_phys)
    with pytest.raises(LoopDetected, match=f"{tree.root_phys:#x}"):
        read_radix_tree(mem, tree.root_phys)


@pytest.mark.parametrize("root_slot", [0, 4])
def test_bits_under_keys_with_no_valid_order(root_slot):
    mem, alloc = area(16)
    nodes = [alloc.alloc() for _ in range(6)]
    mem.write_u64(nodes[0] + root_slot * 8, nodes[1])
    for parent, child in zip(nodes[1:-1], nodes[2:], strict=True):
        mem.write_u64(parent, child)
    mem.write(nodes[-1], b"\x01")
    with pytest.raises(MalformedData, match="no valid order"):
        read_radix_tree(mem, nodes[0])


def test_builder_runs_out_of_pool_pages():
    _, alloc = area(16)
    builder = RadixBuilder(alloc, 3)
    with pytest.raises(OutOfPages, match="full"):
        builder.insert(np.array([0x12345]), np.array([0]))


@pytest.mark.parametrize("key", [0, 0x4000, 1 << 53])
def test_decode_leaves_rejects_bad_leaf_keys(key):
    with pytest.raises(MalformedData):
        decode_leaves(np.array([key], dtype=np.uint64), np.ones((1, 512), dtype=np.uint64))
    pfns, orders = decode_leaves(np.array([0x8000], dtype=np.uint64), np.eye(1, 512, dtype=np.uint64))
    assert (pfns.tolist(), orders.tolist()) == ([0], [MAX_ORDER])
