"""The numba loops: the fill pattern differs on every page and is the same every time, the copies are exact."""

import mmap

import numpy as np
import pytest

from tests.kernels.conversion.helpers import THREADS
from workbench.kernels.conversion import copy
from workbench.kernels.conversion.copy import compile_kernels, copy_mapping, fill_mapping, touch_pages_parallel
from workbench.kernels.pagehash import PAGE_SIZE, page_hashes

SIZE = 64 * PAGE_SIZE


def _filled() -> mmap.mmap:
    mem = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE)
    fill_mapping(mem)
    return mem


def test_the_pattern_is_distinct_on_every_page_and_repeatable():
    first, second = _filled(), _filled()
    try:
        assert len(np.unique(page_hashes(first))) == SIZE // PAGE_SIZE
        assert first[:] == second[:]
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(("copier", "threads"), [("numpy", 1)] + [("numba", t) for t in THREADS])
def test_copies_are_exact(copier, threads):
    src, dst = _filled(), mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE)
    try:
        copy_mapping(dst, src, copier, threads)
        assert dst[:] == src[:]
    finally:
        src.close()
        dst.close()


def test_an_unknown_copier_is_refused():
    src, dst = _filled(), mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE)
    try:
        with pytest.raises(ValueError, match="unknown copier 'memmove'"):
            copy_mapping(dst, src, "memmove", 1)
    finally:
        src.close()
        dst.close()


def test_touching_writes_the_first_byte_of_every_page():
    data = np.zeros(5 * PAGE_SIZE, dtype=np.uint8)
    touch_pages_parallel(data, PAGE_SIZE)
    assert list(np.flatnonzero(data)) == [page * PAGE_SIZE for page in range(5)]


def test_compile_kernels_compiles_every_kernel_timed_later():
    compile_kernels()
    for kernel in (copy.fill_pattern, copy.parallel_copy, copy.touch_pages):
        assert kernel.signatures, kernel.__name__
