"""The design-space benchmark: synthetic maps with the requested shape, exact metadata sizes checked against
the encoders, and a benchmark run whose every structure decodes back to the generated folios."""

import numpy as np
import pytest

from tests.abi.helpers import area, as_set
from workbench.abi.alloc import PageAllocator
from workbench.abi.alternatives import encode_flat_array, encode_sparse_bitmaps, sparse_bitmaps_from_folios
from workbench.abi.block import encode_block_list
from workbench.abi.design_space import (
    STRUCTURES,
    Workload,
    benchmark,
    generate_map,
    metadata_footprint,
    parse_folio_mix,
)
from workbench.abi.luo import FILE_SER_SIZE
from workbench.abi.memfd import encode_memfd
from workbench.abi.physmem import PAGE_SIZE, BufferMemory
from workbench.abi.radix import write_radix_tree

MiB, GiB = 1 << 20, 1 << 30


def test_parse_folio_mix():
    assert parse_folio_mix("4K:0.7,2M:0.3") == {4096: 0.7, 2 * MiB: 0.3}
    assert parse_folio_mix("4K:7, 64K:1, 2M:2") == {4096: 0.7, 64 * 1024: 0.1, 2 * MiB: 0.2}
    assert parse_folio_mix({4096: 1}) == {4096: 1.0}
    for bad in ("3K:1", "4K:-1", "4K:0", "junk", "2G:1", "2K:1"):
        with pytest.raises(ValueError):
            parse_folio_mix(bad)


def test_workload_validation():
    assert Workload(64 * MiB, "4K:1,1G:0").block_order == 9
    assert Workload(GiB, "1G:1").block_order == 18
    with pytest.raises(ValueError):
        Workload(GiB + 4096)
    with pytest.raises(ValueError):
        Workload(512 * MiB, "1G:1")
    with pytest.raises(ValueError):
        Workload(GiB, sparsity=1.5)
    with pytest.raises(ValueError):
        Workload(GiB, memfds=0)


def page_bits(smap, order=0):
    tree = smap.tree()
    return tree.bitmaps[tree.leaf_orders() == order].reshape(-1)


def test_full_map_and_determinism():
    full = generate_map(Workload(512 * MiB))
    assert full.pages == full.folios == 512 * MiB // PAGE_SIZE
    a = generate_map(Workload(512 * MiB, sparsity=0.3, seed=1))
    b = generate_map(Workload(512 * MiB, sparsity=0.3, seed=1))
    c = generate_map(Workload(512 * MiB, sparsity=0.3, seed=2))
    np.testing.assert_array_equal(a.bitmaps, b.bitmaps)
    assert not np.array_equal(a.bitmaps, c.bitmaps)


def test_sparsity_and_mix_shape_the_map():
    total = GiB // PAGE_SIZE
    half = generate_map(Workload(GiB, sparsity=0.5))
    assert abs(half.pages / total - 0.5) < 0.01
    mixed = generate_map(Workload(GiB, "4K:0.5,2M:0.5"))
    per_order = mixed.folios_per_order()
    assert set(per_order) == {0, 9} and mixed.pages == total
    assert abs(per_order[9] * 512 / total - 0.5) < 0.1


def test_fragmentation_zero_keeps_whole_blocks():
    smap = generate_map(Workload(GiB, sparsity=0.5, fragmentation=0.0))
    blocks = page_bits(smap).reshape(-1, 8)  # 8 words = 512 pages = one 2 MiB block
    full = (blocks == np.uint64(2**64 - 1)).all(axis=1)
    empty = (blocks == 0).all(axis=1)
    assert (full | empty).all() and 0.4 < full.mean() < 0.6
    scattered = generate_map(Workload(GiB, sparsity=0.5, fragmentation=1.0))
    blocks = page_bits(scattered).reshape(-1, 8)
    assert ((blocks != 0) & (blocks != np.uint64(2**64 - 1))).any(axis=1).mean() > 0.99


def test_footprint_matches_the_encoders():
    workload = Workload(512 * MiB, "4K:0.6,64K:0.1,2M:0.3", sparsity=0.4, fragmentation=0.5, memfds=5, seed=3)
    smap = generate_map(workload)
    footprint = metadata_footprint(smap).set_index("structure")["metadata_bytes"].to_dict()
    pfns, orders = smap.tree().folios()

    mem, alloc = area(4096)
    write_radix_tree(smap.leaf_keys, smap.bitmaps, alloc)
    assert footprint["radix"] == alloc.used_bytes

    mem, alloc = area(4096)
    sparse = smap.sparse_bitmaps()
    assert as_set(*sparse.folios()) == as_set(pfns, orders)
    encode_sparse_bitmaps(sparse_bitmaps_from_folios(pfns, orders), alloc)
    assert footprint["sparse_bitmaps"] == alloc.used_bytes

    mem = BufferMemory(64 * MiB, base=1 << 40)
    alloc = PageAllocator(mem)
    encode_flat_array(pfns, orders, alloc)
    assert footprint["flat_array"] == alloc.used_bytes

    alloc = PageAllocator(BufferMemory(256 * MiB, base=1 << 40))
    counts = [pfns.size // 5 + (i < pfns.size % 5) for i in range(5)]
    for n in counts:
        encode_memfd(np.zeros(n), np.arange(n), max(n, 1) * PAGE_SIZE, alloc)
    encode_block_list([bytes(FILE_SER_SIZE)] * 5, FILE_SER_SIZE, alloc)
    assert footprint["memfd_arrays"] == alloc.used_bytes


def test_benchmark_decodes_every_structure_back():
    workload = Workload(256 * MiB, "4K:0.7,2M:0.3", sparsity=0.2, memfds=3, seed=4)
    result = benchmark(workload, window=1 << 15)
    smap = generate_map(workload)
    assert result["preserved_folios"] == smap.folios and result["preserved_pages"] == smap.pages
    table = result["tables"]["structures"]
    assert table["structure"].tolist() == list(STRUCTURES)
    assert (table["decode_s"] > 0).all() and (table["encode_s"] > 0).all()
    assert table.set_index("structure").loc["radix", "metadata_bytes"] == result["radix_metadata_bytes"]
    assert result["decode_pages_per_s"] == pytest.approx(smap.pages / result["decode_s"])
    assert result["tables"]["orders"].set_index("order")["folios"].to_dict() == smap.folios_per_order()
    assert result["radix_nodes_per_level"]["5"] == 1
