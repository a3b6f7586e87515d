"""The KHO preserved-memory map: the radix tree of ``struct kho_radix_node`` tables and ``struct kho_radix_leaf``
bitmaps that the ``preserved-memory-map`` property of the KHO FDT points to (Linux 7.2, ``kho-v4``).

Each preserved folio is one bit. Its key puts a single "order bit" at position ``52 - order`` above the pfn
shifted right by the order; the low 15 bits of the key index a 4 KiB leaf bitmap and each further 9 bits index a
512-entry table of physical addresses, six levels in all (root = level 5, leaves = level 0). All the bits of one
leaf therefore share one order, and a leaf covers 32768 consecutive folios of that order.

Decoding and encoding of the bits run in numba kernels; walking the few table nodes is plain Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd

from workbench.abi._bits import ctlz, cttz, popcount
from workbench.abi.alloc import OutOfPages, PageAllocator
from workbench.abi.errors import AddressNotInMemory, LoopDetected, MalformedData
from workbench.abi.physmem import PAGE_SIZE, PhysicalMemory

__all__ = [
    "PAGE_SHIFT",
    "ORDER0_BIT",
    "TABLE_BITS",
    "BITMAP_BITS",
    "TREE_DEPTH",
    "ROOT_LEVEL",
    "MAX_ORDER",
    "encode_key",
    "decode_key",
    "encode_keys",
    "RadixTree",
    "read_radix_tree",
    "preserved_pages",
    "decode_leaves",
    "leaves_from_folios",
    "write_radix_tree",
    "radix_node_counts",
    "RadixBuilder",
    "encode_radix_tree",
]

PAGE_SHIFT = 12
ORDER0_BIT = 64 - PAGE_SHIFT  # KHO_ORDER_0_LOG2: where the order bit of an order-0 key sits
TABLE_BITS = 9  # KHO_TABLE_SIZE_LOG2: 512 u64 entries per table node
BITMAP_BITS = PAGE_SHIFT + 3  # KHO_BITMAP_SIZE_LOG2: 32768 bits per leaf
TREE_DEPTH = -(-(ORDER0_BIT - BITMAP_BITS + 1) // TABLE_BITS) + 1  # KHO_TREE_MAX_DEPTH (6)
ROOT_LEVEL = TREE_DEPTH - 1
MAX_ORDER = ORDER0_BIT - BITMAP_BITS  # beyond this the order bit would fall inside the leaf index
_WORDS = PAGE_SIZE // 8
_LEAF_MASK = (1 << BITMAP_BITS) - 1


def _level_shift(level: int) -> int:
    """How far right a key is shifted to get its table index at ``level`` (1..ROOT_LEVEL)."""
    return (level - 1) * TABLE_BITS + BITMAP_BITS


def encode_key(pfn: int, order: int) -> int:
    """The radix key of a folio (``kho_radix_encode_key``); ``pfn`` must be aligned to ``2**order`` pages."""
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order {order} is outside 0..{MAX_ORDER}")
    if pfn < 0 or pfn >= 1 << ORDER0_BIT or pfn & ((1 << order) - 1):
        raise ValueError(f"pfn {pfn:#x} is not a valid order-{order} aligned page frame number")
    return (1 << (ORDER0_BIT - order)) | (pfn >> order)


def decode_key(key: int) -> tuple[int, int]:
    """``(pfn, order)`` of a radix key (``kho_radix_decode_key``)."""
    msb = key.bit_length() - 1
    order = ORDER0_BIT - msb
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"key {key:#x} has its highest bit at {msb}: no valid order")
    return (key ^ (1 << msb)) << order, order


def _check_folios(pfns: np.ndarray, orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pfns = np.ascontiguousarray(pfns, dtype=np.uint64)
    orders = np.ascontiguousarray(orders, dtype=np.uint8)
    if pfns.shape != orders.shape or pfns.ndim != 1:
        raise ValueError(f"pfns {pfns.shape} and orders {orders.shape} must be 1-D arrays of one length")
    if orders.size:
        if int(orders.max()) > MAX_ORDER:
            raise ValueError(f"order {int(orders.max())} is larger than {MAX_ORDER}")
        misaligned = np.flatnonzero(pfns & ((np.uint64(1) << orders.astype(np.uint64)) - np.uint64(1)))
        if misaligned.size:
            i = int(misaligned[0])
            raise ValueError(f"pfn {int(pfns[i]):#x} is not aligned to its order {int(orders[i])}")
        if int(pfns.max()) >= 1 << ORDER0_BIT:
            raise ValueError(f"pfn {int(pfns.max()):#x} does not fit in {ORDER0_BIT} bits")
    return pfns, orders


def encode_keys(pfns: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Vectorised :func:`encode_key` (uint64 keys)."""
    pfns, orders = _check_folios(pfns, orders)
    o = orders.astype(np.uint64)
    return (np.uint64(1) << (np.uint64(ORDER0_BIT) - o)) | (pfns >> o)


@numba.njit(cache=True, nogil=True)
def _leaf_popcounts(bitmaps):
    counts = np.zeros(bitmaps.shape[0], dtype=np.int64)
    for i in range(bitmaps.shape[0]):
        c = 0
        for w in range(bitmaps.shape[1]):
            c += popcount(bitmaps[i, w])
        counts[i] = c
    return counts


@numba.njit(cache=True, nogil=True)
def _leaf_orders(leaf_keys):
    orders = np.empty(leaf_keys.shape[0], dtype=np.uint8)
    for i in range(leaf_keys.shape[0]):
        orders[i] = np.uint8(np.uint64(ORDER0_BIT) - (np.uint64(63) - ctlz(leaf_keys[i])))
    return orders


@numba.njit(cache=True, nogil=True)
def _decode_leaf_bits(bitmaps, leaf_keys, first, last, pfn_out, order_out):
    """Writes the (pfn, order) of every set bit of leaves ``first..last`` in key order; returns how many."""
    all_ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    one = np.uint64(1)
    n = 0
    for leaf in range(first, last):
        key = leaf_keys[leaf]
        msb = np.uint64(63) - ctlz(key)
        order = np.uint64(ORDER0_BIT) - msb
        order8 = np.uint8(order)
        base = (key ^ (one << msb)) << order
        row = bitmaps[leaf]
        for w in range(row.shape[0]):
            word = row[w]
            if word == 0:
                continue
            word_base = base + (np.uint64(w * 64) << order)
            if word == all_ones:
                for b in range(64):
                    pfn_out[n + b] = word_base + (np.uint64(b) << order)
                    order_out[n + b] = order8
                n += 64
            else:
                while word:
                    pfn_out[n] = word_base + (cttz(word) << order)
                    order_out[n] = order8
                    n += 1
                    word &= word - one
    return n


def _check_leaf_keys(leaf_keys: np.ndarray, bitmaps: np.ndarray, leaf_phys: np.ndarray | None = None) -> None:
    if leaf_keys.size == 0:
        return
    keys = leaf_keys.astype(np.uint64)
    low = keys & np.uint64(_LEAF_MASK)
    too_high = keys >> np.uint64(ORDER0_BIT + 1)
    too_low = keys < np.uint64(1 << BITMAP_BITS)
    bad = np.flatnonzero((low != 0) | (too_high != 0) | too_low)
    if bad.size:
        populated = bad[_leaf_popcounts(bitmaps[bad]) > 0] if bitmaps.size else bad
        if populated.size:
            i = int(populated[0])
            where = f"leaf at {int(leaf_phys[i]):#x}" if leaf_phys is not None else f"leaf {i}"
            raise MalformedData(
                f"{where} has preserved bits under key prefix {int(keys[i]):#x}, which encodes no valid order "
                f"(the order bit must lie between bit {BITMAP_BITS} and bit {ORDER0_BIT})",
                int(leaf_phys[i]) if leaf_phys is not None else None,
            )


def decode_leaves(leaf_keys: np.ndarray, bitmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pfn, order)`` arrays (uint64, uint8) of every set bit, leaf by leaf in the order given."""
    leaf_keys = np.ascontiguousarray(leaf_keys, dtype=np.uint64)
    bitmaps = np.ascontiguousarray(bitmaps, dtype=np.uint64).reshape(-1, _WORDS)
    _check_leaf_keys(leaf_keys, bitmaps)
    total = int(_leaf_popcounts(bitmaps).sum())
    pfns = np.empty(total, dtype=np.uint64)
    orders = np.empty(total, dtype=np.uint8)
    if total:
        _decode_leaf_bits(bitmaps, leaf_keys, 0, leaf_keys.size, pfns, orders)
    return pfns, orders


@dataclass
class RadixTree:
    """A decoded ``preserved-memory-map``: the ``struct kho_radix_node`` tables and ``struct kho_radix_leaf``
    bitmaps reachable from ``root_phys``, leaves in the kernel's walk order (ascending keys)."""

    root_phys: int
    table_phys: np.ndarray  # uint64: every table node, root first, in walk order
    table_levels: np.ndarray  # uint8: the level (ROOT_LEVEL..1) of each table node
    leaf_phys: np.ndarray  # uint64
    leaf_keys: np.ndarray  # uint64: the key of bit 0 of each leaf
    bitmaps: np.ndarray  # (leaves, 512) uint64

    @property
    def node_pages(self) -> int:
        """Pages of the tree itself (tables and leaves)."""
        return int(self.table_phys.size + self.leaf_phys.size)

    @property
    def metadata_bytes(self) -> int:
        return self.node_pages * PAGE_SIZE

    def nodes_per_level(self) -> dict[int, int]:
        counts = {level: int(np.count_nonzero(self.table_levels == level)) for level in range(ROOT_LEVEL, 0, -1)}
        counts[0] = int(self.leaf_phys.size)
        return counts

    def leaf_counts(self) -> np.ndarray:
        """Number of preserved folios in each leaf."""
        return _leaf_popcounts(self.bitmaps)

    @property
    def folio_count(self) -> int:
        return int(self.leaf_counts().sum())

    def leaf_orders(self) -> np.ndarray:
        """The order shared by all bits of each leaf (uint8)."""
        return _leaf_orders(self.leaf_keys)

    @property
    def page_count(self) -> int:
        """Number of 4 KiB pages covered by the preserved folios."""
        return int((self.leaf_counts() << self.leaf_orders().astype(np.int64)).sum())

    def folios(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pfn, order)`` of every preserved folio, in walk order."""
        return decode_leaves(self.leaf_keys, self.bitmaps)

    def iter_folios(self, max_folios: int = 1 << 22) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The same folios as :meth:`folios` in pieces of at most ``max(max_folios, 32768)`` entries; the arrays
        are reused between pieces (copy what you keep)."""
        counts = self.leaf_counts()
        capacity = max(max_folios, 1 << BITMAP_BITS)
        pfns = np.empty(capacity, dtype=np.uint64)
        orders = np.empty(capacity, dtype=np.uint8)
        first = 0
        while first < counts.size:
            last, filled = first, 0
            while last < counts.size and filled + counts[last] <= capacity:
                filled += int(counts[last])
                last += 1
            n = _decode_leaf_bits(self.bitmaps, self.leaf_keys, first, last, pfns, orders)
            yield pfns[:n], orders[:n]
            first = last

    def frame(self) -> pd.DataFrame:
        """The preserved folios as a DataFrame with columns ``pfn`` (uint64) and ``order`` (uint8)."""
        pfns, orders = self.folios()
        return pd.DataFrame({"pfn": pfns, "order": orders})


def _read_page_words(mem: PhysicalMemory, phys: int) -> np.ndarray:
    return np.frombuffer(mem.view(phys, PAGE_SIZE), dtype="<u8")


def read_radix_tree(mem: PhysicalMemory, root_phys: int) -> RadixTree:
    """Walks the tree at ``root_phys`` the way ``kho_radix_walk_tree`` does, checking every pointer.

    Raises :class:`MalformedData` (zero or misaligned node pointer, bits under an impossible key),
    :class:`AddressNotInMemory` (a node outside ``mem``) and :class:`LoopDetected` (a node reached twice).
    """
    if root_phys == 0:
        raise MalformedData("preserved-memory-map is 0: there is no radix tree root", 0)
    if root_phys % PAGE_SIZE:
        raise MalformedData(f"radix tree root {root_phys:#x} is not page aligned", root_phys)
    if not mem.contains(root_phys, PAGE_SIZE):
        raise AddressNotInMemory(f"radix tree root {root_phys:#x} is outside memory", root_phys)

    seen: dict[int, str] = {root_phys: "the root"}
    table_phys: list[int] = []
    table_levels: list[int] = []
    leaf_phys: list[int] = []
    leaf_keys: list[int] = []
    stack: list[tuple[int, int, int]] = [(root_phys, ROOT_LEVEL, 0)]
    while stack:
        phys, level, prefix = stack.pop()
        table_phys.append(phys)
        table_levels.append(level)
        table = _read_page_words(mem, phys)
        shift = _level_shift(level)
        children = []
        for slot in np.flatnonzero(table).tolist():
            child = int(table[slot])
            where = f"slot {slot} of level-{level} node {phys:#x}"
            if child % PAGE_SIZE:
                raise MalformedData(f"radix node pointer {child:#x} in {where} is not page aligned", phys)
            if not mem.contains(child, PAGE_SIZE):
                raise AddressNotInMemory(
                    f"radix level-{level - 1} node {child:#x} (from {where}) is outside memory", child
                )
            if child in seen:
                raise LoopDetected(
                    f"radix node {child:#x} is reached twice: from {seen[child]} and from {where}", child
                )
            seen[child] = where
            children.append((child, prefix | (slot << shift)))
        if level == 1:
            for child, key in children:
                leaf_phys.append(child)
                leaf_keys.append(key)
        else:
            stack.extend((child, level - 1, key) for child, key in reversed(children))

    bitmaps = np.empty((len(leaf_phys), _WORDS), dtype=np.uint64)
    for i, phys in enumerate(leaf_phys):
        bitmaps[i] = _read_page_words(mem, phys)
    tree = RadixTree(
        root_phys=root_phys,
        table_phys=np.array(table_phys, dtype=np.uint64),
        table_levels=np.array(table_levels, dtype=np.uint8),
        leaf_phys=np.array(leaf_phys, dtype=np.uint64),
        leaf_keys=np.array(leaf_keys, dtype=np.uint64),
        bitmaps=bitmaps,
    )
    _check_leaf_keys(tree.leaf_keys, tree.bitmaps, tree.leaf_phys)
    return tree


def preserved_pages(mem: PhysicalMemory, root_phys: int) -> pd.DataFrame:
    """DataFrame ``[pfn, order]`` of every folio preserved in the tree at ``root_phys``."""
    return read_radix_tree(mem, root_phys).frame()


@numba.njit(cache=True, nogil=True)
def _set_leaf_bits(keys, leaf_index, bitmaps):
    for i in range(keys.shape[0]):
        b = keys[i] & np.uint64(_LEAF_MASK)
        bitmaps[leaf_index[i], b >> np.uint64(6)] |= np.uint64(1) << (b & np.uint64(63))


def leaves_from_folios(pfns: np.ndarray, orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The leaves holding a set of folios: ``(leaf_keys, bitmaps)`` sorted by key, no empty leaf."""
    keys = encode_keys(pfns, orders)
    leaf_keys, leaf_index = np.unique(keys & ~np.uint64(_LEAF_MASK), return_inverse=True)
    bitmaps = np.zeros((leaf_keys.size, _WORDS), dtype=np.uint64)
    if keys.size:
        _set_leaf_bits(keys, leaf_index.astype(np.int64), bitmaps)
    return leaf_keys.astype(np.uint64), bitmaps


def radix_node_counts(leaf_keys: np.ndarray) -> dict[int, int]:
    """Pages per level (ROOT_LEVEL..0) of the tree holding leaves with these keys; the root always exists."""
    keys = np.asarray(leaf_keys, dtype=np.uint64)
    counts = {ROOT_LEVEL: 1}
    for level in range(ROOT_LEVEL - 1, -1, -1):
        counts[level] = int(np.unique(keys >> np.uint64(_level_shift(level + 1))).size)
    return counts


def write_radix_tree(leaf_keys: np.ndarray, bitmaps: np.ndarray, allocator: PageAllocator) -> int:
    """Lays out a tree holding the given leaves in pages from ``allocator``; returns the root's address.

    Pages are taken top-down along each leaf's path in ascending key order, which is the order the kernel
    allocates them in when folios are preserved in ascending key order.
    """
    leaf_keys = np.asarray(leaf_keys, dtype=np.uint64)
    bitmaps = np.asarray(bitmaps, dtype=np.uint64).reshape(-1, _WORDS)
    _check_leaf_keys(leaf_keys, bitmaps)
    order = np.argsort(leaf_keys, kind="stable")
    memory = allocator.memory
    root = allocator.alloc()
    nodes: dict[tuple[int, int], int] = {}
    for i in order.tolist():
        key = int(leaf_keys[i])
        node = root
        for level in range(ROOT_LEVEL, 0, -1):
            shift = _level_shift(level)
            slot = (key >> shift) & ((1 << TABLE_BITS) - 1)
            child_id = (level, key >> shift)
            child = nodes.get(child_id)
            if child is None:
                child = allocator.alloc()
                nodes[child_id] = child
                memory.write_u64(node + slot * 8, child)
            node = child
        leaf_words = memory.words(node, _WORDS)
        leaf_words |= bitmaps[i]
    return root


@numba.njit(cache=True, nogil=True)
def _insert_folios(pool, base, used, pfns, orders):
    """``kho_radix_add_page`` for each folio, with nodes taken from ``pool`` (row i is at ``base + i*4096``).
    Returns how many folios were inserted before the pool ran out (all of them normally)."""
    one = np.uint64(1)
    for i in range(pfns.shape[0]):
        order = np.uint64(orders[i])
        key = (one << (np.uint64(ORDER0_BIT) - order)) | (pfns[i] >> order)
        node = 0
        for level in range(ROOT_LEVEL, 0, -1):
            slot = (key >> np.uint64((level - 1) * TABLE_BITS + BITMAP_BITS)) & np.uint64(511)
            child = pool[node, slot]
            if child == 0:
                if used[0] == pool.shape[0]:
                    return i
                new = used[0]
                used[0] += 1
                pool[node, slot] = base + np.uint64(new) * np.uint64(PAGE_SIZE)
                node = new
            else:
                node = np.int64((child - base) >> np.uint64(PAGE_SHIFT))
        b = key & np.uint64(_LEAF_MASK)
        pool[node, b >> np.uint64(6)] |= one << (b & np.uint64(63))
    return pfns.shape[0]


class RadixBuilder:
    """Builds a tree folio by folio, like repeated ``kho_preserve_folio`` calls, in a pool of ``max_nodes``
    consecutive pages taken from ``allocator`` (the root is the first)."""

    def __init__(self, allocator: PageAllocator, max_nodes: int):
        if max_nodes < 1:
            raise ValueError("a radix tree needs at least its root page")
        self.root_phys = allocator.alloc_run(max_nodes)
        self._pool = allocator.memory.words(self.root_phys, max_nodes * _WORDS).reshape(max_nodes, _WORDS)
        self._used = np.ones(1, dtype=np.int64)

    @property
    def nodes_used(self) -> int:
        return int(self._used[0])

    def insert(self, pfns: np.ndarray, orders: np.ndarray) -> None:
        pfns, orders = _check_folios(pfns, orders)
        done = _insert_folios(self._pool, np.uint64(self.root_phys), self._used, pfns, orders)
        if done < pfns.size:
            raise OutOfPages(
                f"radix node pool of {self._pool.shape[0]} pages at {self.root_phys:#x} is full "
                f"after {done} of {pfns.size} folios"
            )


def encode_radix_tree(pfns: np.ndarray, orders: np.ndarray, allocator: PageAllocator) -> int:
    """A tree holding these folios, inserted in the order given, in pages from ``allocator``; returns the root."""
    pfns, orders = _check_folios(pfns, orders)
    keys = encode_keys(pfns, orders)
    total = sum(radix_node_counts(np.unique(keys & ~np.uint64(_LEAF_MASK))).values())
    builder = RadixBuilder(allocator, total)
    builder.insert(pfns, orders)
    return builder.root_phys
