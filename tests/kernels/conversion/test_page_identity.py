"""Page identity: pagemap entries parsed, frames compared, and the real frames of this machine's conversions."""

import mmap
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workbench.kernels.conversion import STRATEGIES, Options, RemoteSource
from workbench.kernels.conversion.page_identity import (
    EXPLANATIONS,
    KPF_HUGE,
    KPF_THP,
    PAGEMAP_PFN_MASK,
    PAGEMAP_PRESENT,
    PageIdentity,
    count_identity,
    explain,
    frames_from_pagemap,
    huge_frame_count,
    mapping_frames,
    read_kpageflags,
    read_pagemap,
    source_frames,
)
from workbench.kernels.pagehash import PAGE_SIZE

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="physical frames need root")

pfns = st.integers(1, PAGEMAP_PFN_MASK)
soft_dirty_and_exclusive = st.sampled_from([0, 1 << 55, 1 << 56, (1 << 55) | (1 << 56) | (1 << 61)])


@given(st.lists(st.tuples(pfns, st.booleans(), soft_dirty_and_exclusive), max_size=64))
def test_a_present_entry_gives_its_pfn_and_an_absent_one_zero(entries):
    raw = np.array([(pfn | extra | (PAGEMAP_PRESENT if present else 0)) for pfn, present, extra in entries], np.uint64)
    expected = [pfn if present else 0 for pfn, present, _ in entries]
    assert frames_from_pagemap(raw).tolist() == expected


def test_frames_hidden_from_an_unprivileged_reader_are_refused_not_counted():
    hidden = np.array([PAGEMAP_PRESENT, PAGEMAP_PRESENT | (1 << 61)], dtype=np.uint64)  # present, PFN zeroed
    with pytest.raises(PermissionError, match="run as root"):
        frames_from_pagemap(hidden)
    assert frames_from_pagemap(np.array([0, 1 << 62], dtype=np.uint64)).tolist() == [0, 0]  # absent, swapped


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=100))
def test_moved_copied_and_absent_pages_add_up_to_every_page(pairs):
    source = np.array([a for a, _ in pairs], dtype=np.uint64)
    memfd = np.array([b for _, b in pairs], dtype=np.uint64)
    found = count_identity(source, memfd)
    assert found.moved_pages == sum(a == b != 0 for a, b in pairs)
    assert found.copied_pages == sum(a != b and a != 0 and b != 0 for a, b in pairs)
    assert found.moved_pages + found.copied_pages + found.absent_pages == len(pairs)
    assert found.compared_pages == found.moved_pages + found.copied_pages


def test_identity_needs_two_arrays_of_the_same_pages():
    assert count_identity(np.array([7, 8, 9]), np.array([7, 3, 0])) == PageIdentity(1, 1, 1)
    with pytest.raises(ValueError, match="same length"):
        count_identity(np.array([1, 2]), np.array([1]))


def test_the_explanation_names_the_code_path_and_flags_a_contradiction():
    assert set(EXPLANATIONS) == set(STRATEGIES)
    assert "iter_file_splice_write" in explain("vmsplice-gift", PageIdentity(0, 10))
    assert explain("vmsplice-gift", PageIdentity(3, 7)).startswith("3 pages kept their frame")


def test_huge_frames_are_those_flagged_thp_or_hugetlb():
    flags = np.array([0, 1 << KPF_THP, 1 << KPF_HUGE, (1 << KPF_THP) | 1, 1 << 12], dtype=np.uint64)
    assert huge_frame_count(flags) == 3


def test_pagemap_reads_need_a_page_aligned_address():
    with pytest.raises(ValueError, match="not aligned"):
        read_pagemap(PAGE_SIZE + 8, 1)


@root_only
@pytest.mark.parametrize("name", ["copy-fresh", "write", "vmsplice-gift"])
def test_this_machines_conversions_copy_every_page_into_other_frames(source, name):
    before = source_frames(source)
    assert np.all(before != 0) and len(np.unique(before)) == len(before)
    converted = STRATEGIES[name].convert(source, Options("numpy" if name.startswith("copy") else "kernel", 1, 1 << 16))
    try:
        mem = mmap.mmap(converted.fd, source.size, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            after = mapping_frames(mem)
        finally:
            mem.close()
    finally:
        os.close(converted.fd)
    assert count_identity(before, after) == PageIdentity(0, source.size // PAGE_SIZE)
    assert len(read_kpageflags(after)) == len(after)


@root_only
def test_another_processes_frames_are_read_from_its_pagemap():
    remote = RemoteSource.start(16 * PAGE_SIZE)
    try:
        frames = source_frames(remote)
    finally:
        remote.close()
    assert len(frames) == 16 and np.all(frames != 0)
