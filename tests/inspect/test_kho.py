"""KHO helpers: the radix tree walk on synthetic trees (every order, against the ABI encoder), then the real lab
kernel at each pause of one cycle (tests/inspect/conftest.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.abi.helpers import area, as_set, random_folios
from tests.inspect.synthetic import program_over, radix_root
from workbench.abi.radix import encode_keys, encode_radix_tree
from workbench.inspect import kho
from workbench.inspect.errors import UnsupportedLayout


# -- synthetic trees ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_radix_walk_matches_the_abi_encoder_for_mixed_orders(seed):
    memory, allocator = area(pages=8192)
    pfns, orders = random_folios(seed, count=1500)
    root = encode_radix_tree(pfns, orders, allocator)
    prog = program_over(memory)
    df = kho.preserved_folios(prog, radix_root(prog, root))
    assert list(df.columns) == ["pfn", "order"]
    assert df["pfn"].is_monotonic_increasing
    assert as_set(df["pfn"], df["order"]) == as_set(pfns, orders)
    assert len(df) == len(pfns)
    assert list(kho.for_each_preserved_folio(prog, radix_root(prog, root)))[:3] == list(
        zip(df["pfn"][:3].tolist(), df["order"][:3].tolist(), strict=True)
    )


def test_radix_nodes_are_listed_parents_first_with_levels():
    memory, allocator = area(pages=256)
    pfns = np.array([0x1000, 0x1001, 0x80000, 1 << 30], dtype=np.uint64)
    orders = np.array([0, 0, 9, 0], dtype=np.uint8)
    root = encode_radix_tree(pfns, orders, allocator)
    prog = program_over(memory)
    nodes = list(kho.for_each_radix_node(radix_root(prog, root)))
    assert nodes[0][:2] == (5, root)
    levels = [level for level, _phys, _key in nodes]
    assert levels.count(0) == len(set((encode_keys(pfns, orders) >> np.uint64(15)).tolist())) == 3
    assert min(levels) == 0 and max(levels) == 5
    assert all(phys % 4096 == 0 for _level, phys, _key in nodes)


def test_empty_tree_has_only_its_root():
    memory, allocator = area(pages=8)
    root = allocator.alloc()
    prog = program_over(memory)
    assert kho.preserved_folios(prog, radix_root(prog, root)).empty
    assert [level for level, _p, _k in kho.for_each_radix_node(radix_root(prog, root))] == [5]


def test_a_tree_that_loops_is_reported():
    memory, allocator = area(pages=8)
    root = allocator.alloc()
    memory.write_u64(root, root)  # the root's first entry points back at the root
    prog = program_over(memory)
    with pytest.raises(UnsupportedLayout, match="twice"):
        list(kho.for_each_radix_node(radix_root(prog, root)))


def test_runs_merge_contiguous_folios_of_one_order():
    runs = kho._runs(np.array([0, 1, 2, 8, 16, 18], dtype=np.int64), np.array([0, 0, 0, 0, 1, 1], dtype=np.uint8))
    assert sorted(runs) == [(0, 3, 0), (8, 9, 0), (16, 20, 1)]


# -- the lab kernel -------------------------------------------------------------------------------------------
lab = pytest.mark.lab


@lab
def test_kho_is_on_and_has_nothing_to_finalize_in_7_2(inspection):
    assert not inspection.errors, "\n".join(inspection.errors)
    for phase in ("prepare", "preserve", "restore"):
        facts = inspection.snapshots[phase].kho
        assert facts["enabled"] is True
        assert facts["finalized"] is None  # 7.2 has no finalize step
        assert facts["out_compatible"] == "kho-v4"
        assert set(facts["out_subtrees"]) == {"LUO", "kexec-metadata"}
        assert facts["out_subtrees"]["kexec-metadata"]["size"] == 73  # packed struct kho_kexec_metadata


@lab
def test_scratch_areas_are_lowmem_global_and_one_per_node(inspection):
    scratch = inspection.snapshots["prepare"].tables["scratch"]
    assert list(scratch["kind"]) == ["lowmem", "global", "node 0"]
    assert (scratch["addr"] % (4 << 20) == 0).all()  # SCRATCH_ALIGNMENT_BYTES: MAX_ORDER_NR_PAGES pages
    # the next kernel gets the very same areas (kho_in.scratch_phys)
    after = inspection.snapshots["restore"].tables["scratch"]
    pd.testing.assert_frame_equal(scratch, after)


@lab
def test_preserved_memory_grows_by_the_memfd_and_its_metadata(inspection, lab_kernel):
    before = inspection.snapshots["prepare"].kho
    during = inspection.snapshots["preserve"].kho
    pages = 8 << 20 >> 12
    # at prepare: the FDT, kexec-metadata, luo_ser and the FLB page; preserve adds the memfd's pages, its
    # memfd_luo_ser, the vmalloc'ed folio array (2048 x 16 bytes = 8 pages + 1 chunk page) and LUO's blocks
    assert before["preserved_pages"] == 4
    assert during["preserved_pages"] >= before["preserved_pages"] + pages
    assert during["preserved_pages"] - before["preserved_pages"] - pages < 32
    assert set(during["preserved_by_order"]) == {0}
    frames = np.load(inspection.run_dir / "guest" / "frames-before.npy")
    preserved = inspection.snapshots["preserve"].tables["preserved"]
    assert np.isin(frames.ravel(), preserved["pfn"].to_numpy()).all()


@lab
def test_drgn_and_abi_views_of_the_radix_tree_agree_page_for_page(inspection):
    for phase in ("prepare", "preserve", "restore"):
        drgn_view = inspection.snapshots[phase].tables["preserved"]
        abi_view = inspection.abi_preserved[phase].sort_values("pfn").reset_index(drop=True)
        assert len(drgn_view) == len(abi_view) > 0, phase
        assert (drgn_view["pfn"].to_numpy(np.uint64) == abi_view["pfn"].to_numpy(np.uint64)).all(), phase
        assert (drgn_view["order"].to_numpy(np.uint8) == abi_view["order"].to_numpy(np.uint8)).all(), phase


@lab
def test_incoming_handover_after_the_kexec(inspection, lab_kernel):
    cold = inspection.snapshots["preserve"].kho
    assert cold["kexec_boot"] is False and cold["kexec_count"] == 0 and cold["previous_release"] == ""
    assert cold["out_kexec_count"] == 1
    warm = inspection.snapshots["restore"].kho
    assert warm["kexec_boot"] is True
    assert warm["kexec_count"] == 1
    assert warm["previous_release"] == lab_kernel.release
    assert warm["out_kexec_count"] == 2  # what this kernel would hand over next
    # the incoming FDT is the one the first kernel built
    assert warm["in_fdt_phys"] == cold["out_fdt_phys"]
    assert warm["in_subtrees"] == cold["out_subtrees"]


@lab
def test_memory_map_covers_ram_scratch_preserved_and_free(inspection):
    mm = inspection.snapshots["preserve"].tables["memory_map"]
    kinds = set(mm["kind"])
    assert {"System RAM", "scratch", "preserved", "radix tree", "free"} <= kinds
    ram = mm[mm["kind"] == "System RAM"]
    assert 900 << 20 < int(ram["size"].sum()) <= 1 << 30
    preserved = mm[mm["kind"] == "preserved"]
    assert int(preserved["size"].sum()) == inspection.snapshots["preserve"].kho["preserved_bytes"]
    free = mm[mm["kind"] == "free"]
    # preserved folios and free blocks never overlap
    for row in preserved.itertuples():
        assert not ((free["start"] < row.end) & (free["end"] > row.start)).any()


@lab
def test_abi_decoder_on_the_elf_dump_agrees_with_drgn_on_the_same_dump(inspection, lab_kernel):
    from workbench.abi import ElfVmcore, decode_handover
    from workbench.inspect import open_vmcore

    path = inspection.result["vmcores"]["preserve"]
    prog = open_vmcore(path, lab_kernel.vmlinux)
    drgn_view = kho.preserved_folios(prog)
    fdt = kho.kho_out_fdt(prog)
    with ElfVmcore(path) as mem:
        handover = decode_handover(mem, fdt.phys)
        abi_view = handover.preserved().sort_values("pfn").reset_index(drop=True)
        assert handover.fdt.subtree("kexec-metadata").data_phys == fdt.subtree("kexec-metadata").phys
    assert (drgn_view["pfn"].to_numpy(np.uint64) == abi_view["pfn"].to_numpy(np.uint64)).all()
    assert (drgn_view["order"].to_numpy(np.uint8) == abi_view["order"].to_numpy(np.uint8)).all()
    assert fdt.memory_map_phys == handover.fdt.memory_map_phys
