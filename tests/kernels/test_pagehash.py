"""Page fingerprints: agreement with the reference XXH64, bit flips, and bad buffers."""

import json
import mmap
import subprocess
import sys

import numpy as np
import pytest

from workbench.kernels.pagehash import PAGE_SIZE, diff_pages, page_hashes, page_hashes_reference, read_words


def test_known_vectors():
    # XXH64 with seed 0 of a zero page and of a page of 0x01 bytes, as computed by the reference xxhash package
    zero = np.zeros(PAGE_SIZE, dtype=np.uint8)
    ones = np.ones(PAGE_SIZE, dtype=np.uint8)
    assert page_hashes(zero)[0] == page_hashes_reference(zero.tobytes())[0]
    assert page_hashes(ones)[0] == page_hashes_reference(ones.tobytes())[0]
    assert page_hashes(zero)[0] != page_hashes(ones)[0]


def test_matches_reference_on_random_pages():
    data = np.random.default_rng(7).integers(0, 256, PAGE_SIZE * 33, dtype=np.uint8)
    np.testing.assert_array_equal(page_hashes(data), page_hashes_reference(data.tobytes()))


def test_other_page_sizes_match_reference():
    data = np.random.default_rng(8).integers(0, 256, 64 * 10, dtype=np.uint8)
    np.testing.assert_array_equal(page_hashes(data, 64), page_hashes_reference(data.tobytes(), 64))


@pytest.mark.parametrize("page", [0, 5, 63])
def test_single_flipped_bit_in_any_page_is_caught(page):
    rng = np.random.default_rng(page)
    data = rng.integers(0, 256, PAGE_SIZE * 64, dtype=np.uint8)
    before = page_hashes(data)
    for bit in (0, 7, 8 * 2047 + 3, 8 * PAGE_SIZE - 1):
        flipped = data.copy()
        flipped[page * PAGE_SIZE + bit // 8] ^= np.uint8(1 << (bit % 8))
        assert list(diff_pages(before, page_hashes(flipped))) == [page]


def test_works_on_mmap_without_copy():
    with mmap.mmap(-1, PAGE_SIZE * 4) as m:
        m[PAGE_SIZE : PAGE_SIZE + 5] = b"hello"
        hashes = page_hashes(m)
        assert hashes[0] == hashes[2] == hashes[3] != hashes[1]
        assert read_words(m) == int.from_bytes(b"hello", "little")


def test_odd_size_rejected_clearly():
    with pytest.raises(ValueError, match="not a whole number of 4096-byte pages"):
        page_hashes(np.zeros(PAGE_SIZE + 1, dtype=np.uint8))


def test_unaligned_buffer_rejected_clearly():
    backing = np.zeros(PAGE_SIZE * 2 + 8, dtype=np.uint8)
    with pytest.raises(ValueError, match="not 8-byte aligned"):
        page_hashes(backing[3 : 3 + PAGE_SIZE])


def test_bad_page_size_rejected():
    with pytest.raises(ValueError, match="multiple of 32"):
        page_hashes(np.zeros(100, dtype=np.uint8), page_size=100)


def test_diff_pages_counts_missing_pages():
    a = np.array([1, 2, 3], dtype=np.uint64)
    assert list(diff_pages(a, np.array([1, 9], dtype=np.uint64))) == [1, 2]


def test_bench_hash_cli_json(tmp_path):
    out = tmp_path / "hash.json"
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "bench",
            "hash",
            "--size",
            "8M",
            "--repeats",
            "2",
            "--json",
            "--data",
            str(tmp_path / "data"),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(printed)
    assert result == json.loads(out.read_text())
    assert result["size"] == 8 << 20 and result["bytes_per_s"] > 0 and result["ratio_to_read"] > 0
    assert result["record_id"]
