"""Page fingerprints: agreement with the reference XXH3-64 (the xxhash package), bit flips, and bad buffers."""

import json
import mmap
import os
import subprocess
import sys

import numpy as np
import pytest

from workbench.kernels.pagehash import (
    ALGORITHM,
    MIN_PAGE_SIZE,
    PAGE_SIZE,
    as_pages,
    diff_pages,
    page_hashes,
    page_hashes_reference,
    read_words,
)


def test_known_vectors():
    xxhash = pytest.importorskip("xxhash")
    zero = np.zeros(PAGE_SIZE, dtype=np.uint8)
    ones = np.ones(PAGE_SIZE, dtype=np.uint8)
    # XXH3-64, seed 0, of a 4 KiB zero page, as computed by the reference xxhash package
    assert page_hashes(zero)[0] == 10653106456947493306 == xxhash.xxh3_64_intdigest(zero.tobytes())
    assert page_hashes(ones)[0] == xxhash.xxh3_64_intdigest(ones.tobytes()) == page_hashes_reference(ones)[0]
    assert page_hashes(zero)[0] != page_hashes(ones)[0]
    assert ALGORITHM == "xxh3-64"


def test_matches_reference_on_random_pages():
    data = np.random.default_rng(7).integers(0, 256, PAGE_SIZE * 33, dtype=np.uint8)
    np.testing.assert_array_equal(page_hashes(data), page_hashes_reference(data.tobytes()))


def test_parallel_result_equals_per_page_reference_on_many_pages():
    rng = np.random.default_rng(11)
    data = rng.integers(0, 256, PAGE_SIZE * 1000, dtype=np.uint8)
    data[PAGE_SIZE * 10 : PAGE_SIZE * 20] = 0  # some all-zero pages
    data[PAGE_SIZE * 30 : PAGE_SIZE * 40] = 0xFF
    hashes = page_hashes(data)
    np.testing.assert_array_equal(hashes, page_hashes_reference(data.tobytes()))
    assert len(set(hashes[10:20].tolist())) == 1  # equal pages, equal fingerprints
    assert len(set(hashes.tolist())) == 1000 - 9 - 9


@pytest.mark.parametrize(
    "page_size",
    # 256: smallest (3 stripes, no block); 1024: one block's worth, but the last block is never scrambled;
    # 1056/1088: one scrambled block then 0/1 stripes; 4064..4160 around the default page; larger: many blocks
    [256, 288, 320, 992, 1024, 1056, 1088, 2048, 3072, 4064, 4096, 4128, 4160, 8192, 16384, 65536],
)
def test_other_page_sizes_match_reference(page_size):
    data = np.random.default_rng(page_size).integers(0, 256, page_size * 9, dtype=np.uint8)
    np.testing.assert_array_equal(page_hashes(data, page_size), page_hashes_reference(data.tobytes(), page_size))


@pytest.mark.parametrize("page_size", [32, 64, 128, 224])
def test_page_sizes_xxh3_hashes_otherwise_rejected(page_size):
    data = np.zeros(page_size * 4, dtype=np.uint8)
    with pytest.raises(ValueError, match=f"page size {page_size} is too small.*larger than 240 bytes"):
        page_hashes(data, page_size)
    with pytest.raises(ValueError, match="larger than 240 bytes"):
        page_hashes_reference(data.tobytes(), page_size)
    assert MIN_PAGE_SIZE == 256


@pytest.mark.parametrize("page", [0, 5, 63])
def test_single_flipped_bit_in_any_page_is_caught(page):
    rng = np.random.default_rng(page)
    data = rng.integers(0, 256, PAGE_SIZE * 64, dtype=np.uint8)
    before = page_hashes(data)
    for bit in (0, 7, 8 * 2047 + 3, 8 * PAGE_SIZE - 1):
        flipped = data.copy()
        flipped[page * PAGE_SIZE + bit // 8] ^= np.uint8(1 << (bit % 8))
        assert list(diff_pages(before, page_hashes(flipped))) == [page]


@pytest.mark.parametrize("kind", ["random", "zero"])
def test_single_flipped_bit_in_every_word_position_is_caught(kind):
    # one copy of the page per 64-bit word, each with one bit of that word flipped (a different bit each time)
    words = PAGE_SIZE // 8
    page = np.random.default_rng(3).integers(0, 2**64, words, dtype=np.uint64)
    if kind == "zero":
        page[:] = 0
    copies = np.tile(page, (words, 1))
    idx = np.arange(words)
    copies[idx, idx] ^= np.left_shift(np.uint64(1), (idx * 37 % 64).astype(np.uint64))
    original = page_hashes(page)[0]
    hashes = page_hashes(copies)
    assert np.all(hashes != original)
    assert len(set(hashes.tolist())) == words
    np.testing.assert_array_equal(hashes[::31], page_hashes_reference(copies[::31].tobytes()))


@pytest.mark.parametrize("word", [0, 1, 7, 8, 255, 503, 504, 511])
def test_every_bit_of_a_word_is_caught(word):
    # words 504..511 are the page's last 64 bytes, which XXH3 accumulates twice
    page = np.random.default_rng(word).integers(0, 2**64, PAGE_SIZE // 8, dtype=np.uint64)
    copies = np.tile(page, (64, 1))
    copies[:, word] ^= np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64))
    hashes = page_hashes(copies)
    assert np.all(hashes != page_hashes(page)[0])
    assert len(set(hashes.tolist())) == 64


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
        page_hashes(np.zeros(300, dtype=np.uint8), page_size=300)
    with pytest.raises(ValueError, match="multiple of 32"):
        as_pages(np.zeros(100, dtype=np.uint8), page_size=100)


def test_odd_size_and_unaligned_rejected_for_other_page_sizes():
    with pytest.raises(ValueError, match="not a whole number of 8192-byte pages"):
        page_hashes(np.zeros(8192 + 4096, dtype=np.uint8), page_size=8192)
    backing = np.zeros(1024 * 3, dtype=np.uint8)
    with pytest.raises(ValueError, match="not 8-byte aligned"):
        page_hashes(backing[4 : 4 + 1024], page_size=1024)


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
    assert result["algorithm"] == "xxh3-64" and result["read_bytes_per_s"] > 0
    assert result["hash_s"] > 0 and result["read_s"] > 0
    assert result["record_id"]


def test_kernel_matches_reference_when_compiled_for_a_generic_cpu(tmp_path):
    # as in a QEMU TCG guest or an older CPU: no AVX, the <8 x i64> stripe arithmetic lowered to baseline code
    code = (
        "import numpy as np\n"
        "from workbench.kernels.pagehash import page_hashes, page_hashes_reference\n"
        "data = np.random.default_rng(5).integers(0, 256, 4096 * 17, dtype=np.uint8)\n"
        "assert (page_hashes(data) == page_hashes_reference(data.tobytes())).all()\n"
        "part = data[: 1056 * 60]\n"
        "assert (page_hashes(part, 1056) == page_hashes_reference(part.tobytes(), 1056)).all()\n"
    )
    env = {**os.environ, "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
