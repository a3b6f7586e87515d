"""The preserved-memory metadata design space: how big, and how fast to write and read, each way of recording
the preserved folios is, for a synthetic host of a given size, folio-size mix, sparsity and number of memfds.

Structures compared (every one is really encoded and decoded, with a checksum of the decoded folios):

* ``radix`` — the 7.2 KHO radix tree (:mod:`workbench.abi.radix`); encoded folio by folio as
  ``kho_preserve_folio`` does, decoded by walking the tree.
* ``sparse_bitmaps`` — the xarray-like per-order bitmap map KHO used before the radix tree
  (:mod:`workbench.abi.alternatives`).
* ``flat_array`` — one u64 (pfn, order) per folio.
* ``memfd_arrays`` — what the memfd handler adds on top of the map: ``memfd_luo_ser`` and the
  ``memfd_luo_folio_ser`` array in ``kho_vmalloc`` chunks per memfd (:mod:`workbench.abi.memfd`).

The map is generated directly as radix leaf bitmaps (a 1 TiB host of 4 KiB pages is 32 MiB of bitmaps), and the
folio list is only ever materialised in windows of ``window`` folios: the flat array and the memfd arrays are
encoded and decoded window by window (a memfd longer than a window is timed as several), while their sizes are
computed exactly for the whole host. Folios are streamed in the radix walk order (by order, then pfn) and dealt
to memfds in contiguous runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numba
import numpy as np
import pandas as pd

from workbench.abi.alloc import PageAllocator
from workbench.abi.alternatives import (
    SPARSE_BITMAP_FOLIOS,
    SparseBitmaps,
    decode_sparse_bitmaps,
    encode_sparse_bitmaps,
    flat_array_bytes,
    pack_flat_entries,
    sparse_bitmaps_bytes,
    unpack_flat_entries,
)
from workbench.abi.block import entries_per_block
from workbench.abi.luo import FILE_SER_SIZE
from workbench.abi.memfd import FOLIO_SER_SIZE, decode_memfd, encode_memfd
from workbench.abi.physmem import PAGE_SIZE, BufferMemory
from workbench.abi.radix import (
    BITMAP_BITS,
    ORDER0_BIT,
    RadixBuilder,
    RadixTree,
    radix_node_counts,
    read_radix_tree,
    write_radix_tree,
)
from workbench.abi.vmalloc import vmalloc_chunk_count

__all__ = [
    "STRUCTURES",
    "Workload",
    "parse_folio_mix",
    "SyntheticMap",
    "generate_map",
    "metadata_footprint",
    "benchmark",
    "radix_timing",
    "sweep",
]

STRUCTURES = ("radix", "sparse_bitmaps", "flat_array", "memfd_arrays")
_LEAF_WORDS = PAGE_SIZE // 8
_MIN_BLOCK_ORDER = 9  # placement decisions are made per 2 MiB block at least
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_folio_mix(text: str | dict[int, float]) -> dict[int, float]:
    """``"4K:0.7,2M:0.3"`` (or a dict of folio bytes to share) to ``{4096: 0.7, 2097152: 0.3}``, normalised to
    sum to 1. Sizes are powers of two from 4 KiB to 1 GiB; shares are of preserved bytes."""
    if isinstance(text, dict):
        mix = {int(k): float(v) for k, v in text.items()}
    else:
        mix = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?\s*[:=]\s*([0-9.eE+-]+)", part, re.IGNORECASE)
            if not m:
                raise ValueError(f"{part!r} is not SIZE:SHARE (e.g. 2M:0.3)")
            size = int(m[1]) * _SIZE_UNITS.get(m[2].upper(), 1)
            mix[size] = mix.get(size, 0.0) + float(m[3])
    for size, share in mix.items():
        if size < PAGE_SIZE or size > 1 << 30 or size & (size - 1):
            raise ValueError(f"folio size {size} is not a power of two between 4K and 1G")
        if share < 0:
            raise ValueError(f"share {share} of folio size {size} is negative")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("the folio mix has no positive share")
    return {size: share / total for size, share in sorted(mix.items()) if share > 0}


@dataclass(frozen=True)
class Workload:
    """A synthetic host: ``memory_bytes`` of RAM, of which a ``1 - sparsity`` share is preserved in folios of
    the ``folio_mix`` sizes. ``fragmentation`` 0 makes the unpreserved memory whole blocks (2 MiB or the largest
    folio), 1 scatters it folio by folio. The preserved folios are held by ``memfds`` memfds."""

    memory_bytes: int
    folio_mix: dict[int, float] = field(default_factory=lambda: {PAGE_SIZE: 1.0})
    sparsity: float = 0.0
    fragmentation: float = 1.0
    memfds: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "folio_mix", parse_folio_mix(self.folio_mix))
        if not 0.0 <= self.sparsity <= 1.0 or not 0.0 <= self.fragmentation <= 1.0:
            raise ValueError("sparsity and fragmentation are fractions between 0 and 1")
        if self.memfds < 1:
            raise ValueError("there must be at least one memfd")
        block = PAGE_SIZE << self.block_order
        if self.memory_bytes <= 0 or self.memory_bytes % block:
            raise ValueError(f"memory size {self.memory_bytes} is not a positive multiple of {block} bytes")

    @property
    def orders(self) -> list[int]:
        return [size.bit_length() - 1 - 12 for size in self.folio_mix]

    @property
    def block_order(self) -> int:
        return max([_MIN_BLOCK_ORDER, *self.orders])

    def params(self) -> dict:
        out = asdict(self)
        out["folio_mix"] = {str(k): v for k, v in self.folio_mix.items()}
        return out


@numba.njit(cache=True, nogil=True)
def _set_bits(words, base, first, count):
    all_ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    if first % 64 == 0 and count % 64 == 0:
        for w in range(first // 64, (first + count) // 64):
            words[base + w] = all_ones
    else:
        for i in range(first, first + count):
            words[base + (i >> 6)] |= np.uint64(1) << np.uint64(i & 63)


@numba.njit(cache=True, nogil=True)
def _generate(n_blocks, block_order, cum_share, slot_orders, word_offsets, words, keep, fragmentation, seed):
    np.random.seed(seed)
    last_slot = slot_orders.shape[0] - 1
    for b in range(n_blocks):
        u = np.random.random()
        k = 0
        while k < last_slot and u >= cum_share[k]:
            k += 1
        per_block = np.int64(1) << np.int64(block_order - slot_orders[k])
        first = b * per_block
        base = word_offsets[k]
        if keep >= 1.0:
            _set_bits(words, base, first, per_block)
        elif np.random.random() >= fragmentation:
            if np.random.random() < keep:
                _set_bits(words, base, first, per_block)
        else:
            for i in range(first, first + per_block):
                if np.random.random() < keep:
                    words[base + (i >> 6)] |= np.uint64(1) << np.uint64(i & 63)


@dataclass
class SyntheticMap:
    """A generated preserved-memory map, as radix leaves (non-empty ones only, ascending keys)."""

    workload: Workload
    leaf_keys: np.ndarray
    bitmaps: np.ndarray
    generate_s: float

    def tree(self) -> RadixTree:
        """The leaves wrapped as a :class:`RadixTree` (no table nodes, addresses 0), for its folio iterators."""
        n = self.leaf_keys.size
        empty = np.empty(0, dtype=np.uint64)
        return RadixTree(0, empty, np.empty(0, np.uint8), np.zeros(n, np.uint64), self.leaf_keys, self.bitmaps)

    @property
    def folios(self) -> int:
        return self.tree().folio_count

    @property
    def pages(self) -> int:
        return self.tree().page_count

    def folios_per_order(self) -> dict[int, int]:
        tree = self.tree()
        counts, orders = tree.leaf_counts(), tree.leaf_orders()
        return {int(o): int(counts[orders == o].sum()) for o in np.unique(orders)}

    def iter_folios(self, window: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.tree().iter_folios(window)

    def sparse_bitmaps(self) -> SparseBitmaps:
        """The same folios as the sparse per-order bitmap map (each leaf is eight 4096-folio windows)."""
        per_leaf = (1 << BITMAP_BITS) // SPARSE_BITMAP_FOLIOS
        rows = self.bitmaps.reshape(-1, per_leaf, _LEAF_WORDS // per_leaf)
        orders = self.tree().leaf_orders()
        order_bits = np.uint64(1) << (np.uint64(ORDER0_BIT) - orders.astype(np.uint64))
        leaf_first = (self.leaf_keys ^ order_bits) << orders.astype(np.uint64)
        window = np.arange(per_leaf, dtype=np.uint64) * np.uint64(SPARSE_BITMAP_FOLIOS)
        first = leaf_first[:, None] + (window[None, :] << orders.astype(np.uint64)[:, None])
        keep = rows.any(axis=2)
        return SparseBitmaps(
            np.repeat(orders, per_leaf).reshape(-1, per_leaf)[keep], first[keep], rows[keep].reshape(-1, 64)
        )


def generate_map(workload: Workload) -> SyntheticMap:
    """The preserved folios of ``workload`` (deterministic for its seed), generated as leaf bitmaps."""
    started = time.perf_counter()
    orders = workload.orders
    memory_pages = workload.memory_bytes // PAGE_SIZE
    words_per_order = [max(1, -(-(memory_pages >> o) // 64)) for o in orders]
    leaf_words = [-(-w // _LEAF_WORDS) * _LEAF_WORDS for w in words_per_order]
    offsets = np.concatenate([[0], np.cumsum(leaf_words)[:-1]]).astype(np.int64)
    words = np.zeros(int(sum(leaf_words)), dtype=np.uint64)
    shares = np.cumsum(list(workload.folio_mix.values()))
    shares[-1] = 1.0
    n_blocks = workload.memory_bytes // (PAGE_SIZE << workload.block_order)
    _generate(
        n_blocks,
        workload.block_order,
        shares.astype(np.float64),
        np.array(orders, dtype=np.int64),
        offsets,
        words,
        1.0 - workload.sparsity,
        workload.fragmentation,
        workload.seed,
    )
    keys, bitmaps = [], []
    for order, offset, n in zip(orders, offsets.tolist(), leaf_words, strict=True):
        leaves = words[offset : offset + n].reshape(-1, _LEAF_WORDS)
        populated = np.flatnonzero(leaves.any(axis=1))
        keys.append((np.uint64(1) << np.uint64(ORDER0_BIT - order)) | (populated.astype(np.uint64) << np.uint64(15)))
        bitmaps.append(leaves[populated])
    leaf_keys = np.concatenate(keys)
    order = np.argsort(leaf_keys, kind="stable")
    all_bitmaps = np.concatenate(bitmaps)
    return SyntheticMap(workload, leaf_keys[order], all_bitmaps[order], time.perf_counter() - started)


def _memfd_folio_counts(folios: int, memfds: int) -> np.ndarray:
    counts = np.full(memfds, folios // memfds, dtype=np.int64)
    counts[: folios % memfds] += 1
    return counts


def _memfd_pages(folio_counts: np.ndarray) -> int:
    array_pages = -(-folio_counts * FOLIO_SER_SIZE // PAGE_SIZE)
    chunks = np.where(folio_counts > 0, vmalloc_chunk_count(array_pages), 0)
    file_blocks = -(-folio_counts.size // entries_per_block(FILE_SER_SIZE))
    return int(folio_counts.size + array_pages.sum() + chunks.sum() + file_blocks)


def metadata_footprint(smap: SyntheticMap) -> pd.DataFrame:
    """Exact metadata size of every structure for the map, without encoding anything."""
    folios = smap.folios
    radix_pages = sum(radix_node_counts(smap.leaf_keys).values())
    sparse = smap.sparse_bitmaps()
    sizes = {
        "radix": radix_pages * PAGE_SIZE,
        "sparse_bitmaps": sparse_bitmaps_bytes(sparse.orders),
        "flat_array": -(-flat_array_bytes(folios) // PAGE_SIZE) * PAGE_SIZE,
        "memfd_arrays": _memfd_pages(_memfd_folio_counts(folios, smap.workload.memfds)) * PAGE_SIZE,
    }
    preserved_pages = max(smap.pages, 1)
    return pd.DataFrame(
        {
            "structure": list(sizes),
            "metadata_bytes": list(sizes.values()),
            "metadata_pages": [s // PAGE_SIZE for s in sizes.values()],
            "bytes_per_preserved_page": [s / preserved_pages for s in sizes.values()],
        }
    )


@numba.njit(cache=True, nogil=True)
def _sparse_insert(pfns, orders, slot_of_order, window_rows, rows, row_orders, row_first, used):
    """Adds folios to the in-memory sparse map: a window lookup (the xarray's job) then a bit set."""
    for i in range(pfns.shape[0]):
        order = orders[i]
        shifted = pfns[i] >> np.uint64(order)
        window = np.int64(shifted >> np.uint64(12))
        slot = slot_of_order[order]
        row = window_rows[slot, window]
        if row < 0:
            row = used[0]
            used[0] += 1
            window_rows[slot, window] = row
            row_orders[row] = order
            row_first[row] = (np.uint64(window) << np.uint64(12)) << np.uint64(order)
        bit = shifted & np.uint64(SPARSE_BITMAP_FOLIOS - 1)
        rows[row, bit >> np.uint64(6)] |= np.uint64(1) << (bit & np.uint64(63))


@numba.njit(cache=True, nogil=True)
def _checksum_kernel(pfns, orders, s):
    for i in range(pfns.shape[0]):
        s += pfns[i] * np.uint64(0x9E3779B97F4A7C15) + np.uint64(orders[i])
    return s


def _checksum(pfns: np.ndarray, orders: np.ndarray, acc: int) -> int:
    """``acc`` plus an order-independent hash of the folios (wrapping at 64 bits)."""
    return int(_checksum_kernel(pfns, orders, np.uint64(acc)))


class _Timer:
    """Accumulates the wall time spent inside ``with`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> _Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start


def _warm_up(workload: Workload | None = None) -> None:
    """Runs every kernel once on a small map (of ``workload``'s folio sizes and sparsity when given) so that no
    timing includes the JIT or the first use of a code path."""
    if workload is None:
        workload = Workload(PAGE_SIZE << _MIN_BLOCK_ORDER, memfds=1)
    else:
        block = PAGE_SIZE << workload.block_order
        workload = Workload(block * 64, workload.folio_mix, workload.sparsity, workload.fragmentation, 2, 0)
    benchmark(workload, window=1 << 15, _warm=False)


def benchmark(workload: Workload, window: int = 1 << 22, *, _warm: bool = True) -> dict:
    """Generates the map of ``workload`` and encodes and decodes it with every structure.

    Returns a summary dict (the radix figures at the top level, ``decode_pages_per_s`` among them) with a
    ``tables`` entry: ``structures`` (one row per structure) and ``orders`` (folios per order).
    """
    if _warm:
        _warm_up(workload)
    smap = generate_map(workload)
    total_folios = smap.folios
    total_pages = smap.pages
    footprint = metadata_footprint(smap).set_index("structure")
    expected = 0
    for pfns, orders in smap.iter_folios(window):
        expected = _checksum(pfns, orders, expected)

    # Encoders fed folio by folio from the stream.
    radix_nodes = int(footprint.at["radix", "metadata_pages"])
    radix_memory = BufferMemory((radix_nodes + 1) * PAGE_SIZE, base=1 << 40)
    builder = RadixBuilder(PageAllocator(radix_memory), radix_nodes)

    sparse = smap.sparse_bitmaps()
    orders_present = sorted(workload.orders)
    slot_of_order = np.full(64, -1, dtype=np.int64)
    slot_of_order[orders_present] = np.arange(len(orders_present))
    windows = -(-(workload.memory_bytes // PAGE_SIZE) // SPARSE_BITMAP_FOLIOS)
    window_rows = np.full((len(orders_present), windows), -1, dtype=np.int64)
    rows = np.zeros((sparse.orders.size, 64), dtype=np.uint64)
    row_orders = np.zeros(sparse.orders.size, dtype=np.uint8)
    row_first = np.zeros(sparse.orders.size, dtype=np.uint64)
    rows_used = np.zeros(1, dtype=np.int64)

    flat_buffer = np.empty(max(window, 1 << BITMAP_BITS), dtype=np.uint64)
    memfd_counts = _memfd_folio_counts(total_folios, workload.memfds)
    memfd_ends = np.cumsum(memfd_counts)
    memfd_page_offset = np.zeros(workload.memfds, dtype=np.int64)
    scratch_pages = -(-flat_buffer.size * FOLIO_SER_SIZE // PAGE_SIZE) + 2 * (flat_buffer.size // 511 + 8)
    scratch = BufferMemory(scratch_pages * PAGE_SIZE, base=1 << 41)

    t = {name: (_Timer(), _Timer()) for name in STRUCTURES}
    checks = {name: 0 for name in ("flat_array", "memfd_arrays")}
    streamed = 0
    for pfns, orders in smap.iter_folios(window):
        with t["radix"][0]:
            builder.insert(pfns, orders)
        with t["sparse_bitmaps"][0]:
            _sparse_insert(pfns, orders, slot_of_order, window_rows, rows, row_orders, row_first, rows_used)
        with t["flat_array"][0]:
            entries = pack_flat_entries(pfns, orders, flat_buffer)
        with t["flat_array"][1]:
            back_pfns, back_orders = unpack_flat_entries(entries)
        checks["flat_array"] = _checksum(back_pfns, back_orders, checks["flat_array"])

        start = streamed
        while start < streamed + pfns.size:
            k = int(np.searchsorted(memfd_ends, start, side="right"))
            stop = min(int(memfd_ends[k]), streamed + pfns.size)
            seg = slice(start - streamed, stop - streamed)
            seg_pages = np.int64(1) << orders[seg].astype(np.int64)
            index = memfd_page_offset[k] + np.cumsum(seg_pages) - seg_pages
            size = int(memfd_page_offset[k] + seg_pages.sum()) * PAGE_SIZE
            allocator = PageAllocator(scratch)
            with t["memfd_arrays"][0]:
                memfd = encode_memfd(pfns[seg], index, size, allocator)
            with t["memfd_arrays"][1]:
                back = decode_memfd(scratch, memfd.phys, check_folios_in_memory=False)
            back_pfns = back.folios["pfn"].to_numpy(dtype=np.uint64)
            checks["memfd_arrays"] = _checksum(back_pfns, orders[seg], checks["memfd_arrays"])
            memfd_page_offset[k] += int(seg_pages.sum())
            start = stop
        streamed += pfns.size

    # Serialise the structures that were built in memory, then decode them from physical memory.
    with t["sparse_bitmaps"][0]:
        used = int(rows_used[0])
        built = SparseBitmaps(row_orders[:used], row_first[:used], rows[:used])
        sparse_memory = BufferMemory(int(footprint.at["sparse_bitmaps", "metadata_bytes"]) + PAGE_SIZE, base=1 << 42)
        sparse_head = encode_sparse_bitmaps(built, PageAllocator(sparse_memory))

    decoded = {}
    with t["radix"][1]:
        tree = read_radix_tree(radix_memory, builder.root_phys)
        total = 0
        for pfns, orders in tree.iter_folios(window):
            total = _checksum(pfns, orders, total)
    decoded["radix"] = total
    with t["sparse_bitmaps"][1]:
        sparse_read = decode_sparse_bitmaps(sparse_memory, sparse_head)
        total = 0
        for pfns, orders in sparse_read.iter_folios(window):
            total = _checksum(pfns, orders, total)
    decoded["sparse_bitmaps"] = total
    decoded |= checks
    for name, value in decoded.items():
        if value != expected:
            raise RuntimeError(f"{name}: decoded folios differ from the generated ones (checksum mismatch)")

    # The bitmap-native build of the radix tree, for comparison with folio-by-folio insertion.
    bitmap_memory = BufferMemory((radix_nodes + 1) * PAGE_SIZE, base=1 << 43)
    with _Timer() as build:
        write_radix_tree(smap.leaf_keys, smap.bitmaps, PageAllocator(bitmap_memory))

    rows_out = []
    for name in STRUCTURES:
        encode_s, decode_s = t[name][0].seconds, t[name][1].seconds
        pages = int(footprint.at[name, "metadata_pages"])
        rows_out.append(
            {
                "structure": name,
                "metadata_bytes": int(footprint.at[name, "metadata_bytes"]),
                "metadata_pages": pages,
                "bytes_per_preserved_page": float(footprint.at[name, "bytes_per_preserved_page"]),
                "encode_s": encode_s,
                "decode_s": decode_s,
                "encode_folios_per_s": total_folios / encode_s if encode_s else None,
                "decode_folios_per_s": total_folios / decode_s if decode_s else None,
                "decode_pages_per_s": total_pages / decode_s if decode_s else None,
                "pages_touched": pages,
            }
        )
    structures = pd.DataFrame(rows_out)
    radix = rows_out[0]
    per_order = smap.folios_per_order()
    return {
        "workload": workload.params(),
        "preserved_folios": total_folios,
        "preserved_pages": total_pages,
        "generate_s": smap.generate_s,
        "decode_pages_per_s": radix["decode_pages_per_s"],
        "decode_folios_per_s": radix["decode_folios_per_s"],
        "decode_s": radix["decode_s"],
        "encode_s": radix["encode_s"],
        "encode_folios_per_s": radix["encode_folios_per_s"],
        "build_from_bitmaps_s": build.seconds,
        "radix_metadata_bytes": radix["metadata_bytes"],
        "radix_nodes_per_level": {str(k): v for k, v in tree.nodes_per_level().items()},
        "structures": rows_out,
        "tables": {
            "structures": structures,
            "orders": pd.DataFrame({"order": list(per_order), "folios": list(per_order.values())}),
        },
    }


def _size_label(size: int) -> str:
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size >> 10}K"


def radix_timing(smap: SyntheticMap, window: int = 1 << 22) -> dict:
    """Lays the map out as a radix tree from its bitmaps and times a full decode from memory (the tree walk
    plus every (pfn, order)): cheap enough for maps of several TiB."""
    nodes = sum(radix_node_counts(smap.leaf_keys).values())
    memory = BufferMemory((nodes + 1) * PAGE_SIZE, base=1 << 40)
    with _Timer() as build:
        root = write_radix_tree(smap.leaf_keys, smap.bitmaps, PageAllocator(memory))
    folios = 0
    with _Timer() as decode:
        tree = read_radix_tree(memory, root)
        for pfns, _ in tree.iter_folios(window):
            folios += pfns.size
    pages = smap.pages
    return {
        "build_from_bitmaps_s": build.seconds,
        "decode_s": decode.seconds,
        "decode_folios_per_s": folios / decode.seconds if decode.seconds else None,
        "decode_pages_per_s": pages / decode.seconds if decode.seconds else None,
    }


def sweep(workloads: list[Workload]) -> pd.DataFrame:
    """For each workload: the exact metadata size of every structure and the radix decode time, one row per
    (workload, structure), with the workload's parameters and the preserved folio and page counts."""
    _warm_up()
    frames = []
    for workload in workloads:
        smap = generate_map(workload)
        frame = metadata_footprint(smap)
        timing = radix_timing(smap)
        frame["radix_decode_s"] = timing["decode_s"]
        frame["radix_decode_pages_per_s"] = timing["decode_pages_per_s"]
        frame["memory_bytes"] = workload.memory_bytes
        frame["sparsity"] = workload.sparsity
        frame["fragmentation"] = workload.fragmentation
        frame["memfds"] = workload.memfds
        frame["folio_mix"] = ",".join(f"{_size_label(size)}:{share:g}" for size, share in workload.folio_mix.items())
        frame["preserved_folios"] = smap.folios
        frame["preserved_pages"] = smap.pages
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
