"""Per-page fingerprints: the XXH3-64 hash (seed 0, default secret) of every page of a buffer, computed in parallel
with numba.

The lab cycle fingerprints every page of every memfd before preservation and again after the kexec; a single
flipped bit changes the page's fingerprint. XXH3-64 is used because it is fast, well specified (the xxHash
specification, ``doc/xxhash_spec.md`` in https://github.com/Cyan4973/xxHash) and has an independent reference
implementation (``xxhash.xxh3_64_intdigest`` from the ``xxhash`` package) to check this one against.

Only XXH3's algorithm for inputs larger than 240 bytes is implemented (shorter inputs use different algorithms), so
pages must be at least :data:`MIN_PAGE_SIZE` bytes. A page is hashed as: 8 accumulators; each 1024-byte block is
16 stripes of 64 bytes, each stripe accumulated with an 8-byte step through the secret, then the accumulators are
scrambled; the last, partial block is accumulated without scrambling; the page's last 64 bytes are accumulated once
more with their own piece of the secret; the accumulators are merged and avalanched into 64 bits.

Speed: the stripe accumulation is written as one LLVM ``<8 x i64>`` vector operation per stripe (the 8 lanes of a
stripe), through a numba intrinsic that emits only target-independent LLVM instructions (load, xor, and, shift,
multiply, shuffle, add). LLVM lowers it to whatever the CPU has: AVX-512, AVX2, SSE2 (``pmuludq``) or scalar code;
nothing CPU-specific is hard-coded, so the kernel also runs in a QEMU TCG guest. numba does not run LLVM's SLP
vectorizer, and its loop vectorizer turns the lane-strided stripe loop into gathers, so plain numba code reaches only
about 60% of a plain read of the same memory, where this one keeps up with it.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "ALGORITHM",
    "PAGE_SIZE",
    "MIN_PAGE_SIZE",
    "page_hashes",
    "page_hashes_reference",
    "read_words",
    "as_pages",
    "diff_pages",
]

#: the fingerprint of a page: XXH3-64, seed 0, default 192-byte secret
ALGORITHM = "xxh3-64"
PAGE_SIZE = 4096
#: XXH3 hashes inputs of 240 bytes or less with other algorithms, which this kernel does not implement
MIN_PAGE_SIZE = 256

# XXH3's default secret (xxHash specification, "Seed and Secret"), 192 bytes read as little-endian 64-bit words
_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
assert len(_SECRET) == 192


def _secret_words(offset: int, count: int) -> np.ndarray:
    return np.frombuffer(_SECRET, dtype="<u8", count=count, offset=offset).astype(np.uint64)


_STRIPE_WORDS = 8  # a stripe is 64 bytes: 8 lanes of 64 bits
_BLOCK_STRIPES = (len(_SECRET) - 64) // 8  # 16 stripes per block with the default secret
_BLOCK_BYTES = _BLOCK_STRIPES * 64  # 1024
_KEY_STRIPES = _secret_words(0, 24)  # stripe s of a block is keyed by secret words s .. s + 7
_KEY_LAST = _secret_words(len(_SECRET) - 71, 8)  # the page's last 64 bytes
_KEY_SCRAMBLE = _secret_words(len(_SECRET) - 64, 8)
_KEY_MERGE = _secret_words(11, 8)

_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S37 = np.uint64(37)
_S47 = np.uint64(47)
_P32_1 = np.uint64(0x9E3779B1)
_P32_2 = np.uint64(0x85EBCA77)
_P32_3 = np.uint64(0xC2B2AE3D)
_P64_1 = np.uint64(0x9E3779B185EBCA87)
_P64_2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P64_3 = np.uint64(0x165667B19E3779F9)
_P64_4 = np.uint64(0x85EBCA77C2B2AE63)
_P64_5 = np.uint64(0x27D4EB2F165667C5)
_PRIME_MX1 = np.uint64(0x165667919E3779F9)

_U64x8 = types.UniTuple(types.uint64, 8)


@intrinsic
def _accumulate(typingctx, words, start, nstripes, keys, acc):
    """``acc`` after XXH3's accumulation of ``nstripes`` stripes of ``words`` from word ``start`` on, stripe ``s``
    keyed by ``keys[s : s + 8]``: per lane ``i``, ``acc[i ^ 1] += data[i]`` and
    ``acc[i] += (data[i] ^ key[i]) % 2**32 * ((data[i] ^ key[i]) >> 32)``, the 8 lanes as one ``<8 x i64>`` vector.

    ``words`` and ``keys`` are C-contiguous uint64 arrays; the caller keeps every stripe inside them.
    """
    for arr in (words, keys):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C" and arr.dtype == types.uint64):
            return None
    if not (isinstance(start, types.Integer) and isinstance(nstripes, types.Integer) and acc == _U64x8):
        return None

    def codegen(context, builder, signature, args):
        words_val, start_val, nstripes_val, keys_val, acc_val = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vec_t = ir.VectorType(i64, 8)
        start_val = context.cast(builder, start_val, signature.args[1], types.intp)
        nstripes_val = context.cast(builder, nstripes_val, signature.args[2], types.intp)
        data_base = builder.gep(context.make_array(signature.args[0])(context, builder, words_val).data, [start_val])
        key_base = context.make_array(signature.args[3])(context, builder, keys_val).data
        vec = ir.Constant(vec_t, None)
        for i in range(8):
            vec = builder.insert_element(vec, builder.extract_value(acc_val, i), ir.Constant(i32, i))
        slot = cgutils.alloca_once(builder, vec_t)
        builder.store(vec, slot)
        low32 = ir.Constant(vec_t, [0xFFFFFFFF] * 8)
        shift32 = ir.Constant(vec_t, [32] * 8)
        swap_pairs = ir.Constant(ir.VectorType(i32, 8), [1, 0, 3, 2, 5, 4, 7, 6])
        with cgutils.for_range(builder, nstripes_val) as loop:
            stripe = loop.index
            offset = builder.mul(stripe, ir.Constant(stripe.type, _STRIPE_WORDS))
            data = builder.load(builder.bitcast(builder.gep(data_base, [offset]), vec_t.as_pointer()), align=8)
            key = builder.load(builder.bitcast(builder.gep(key_base, [stripe]), vec_t.as_pointer()), align=8)
            keyed = builder.xor(data, key)
            product = builder.mul(builder.and_(keyed, low32), builder.lshr(keyed, shift32))
            swapped = builder.shuffle_vector(data, data, swap_pairs)
            builder.store(builder.add(builder.load(slot), builder.add(swapped, product)), slot)
        vec = builder.load(slot)
        out = ir.Constant(acc_val.type, None)
        for i in range(8):
            out = builder.insert_value(out, builder.extract_element(vec, ir.Constant(i32, i)), i)
        return out

    return acc(words, start, nstripes, keys, acc), codegen


@numba.njit(inline="always")
def _scramble_lane(a, key):
    a = a ^ (a >> _S47)
    a = a ^ key
    return a * _P32_1


@numba.njit(inline="always")
def _scramble(acc):
    k = _KEY_SCRAMBLE
    return (
        _scramble_lane(acc[0], k[0]),
        _scramble_lane(acc[1], k[1]),
        _scramble_lane(acc[2], k[2]),
        _scramble_lane(acc[3], k[3]),
        _scramble_lane(acc[4], k[4]),
        _scramble_lane(acc[5], k[5]),
        _scramble_lane(acc[6], k[6]),
        _scramble_lane(acc[7], k[7]),
    )


@numba.njit(inline="always")
def _mul128_fold64(a, b):
    """The low 64 bits xor the high 64 bits of the 128-bit product ``a * b``, from 32-bit halves."""
    a_lo, a_hi, b_lo, b_hi = a & _M32, a >> _S32, b & _M32, b >> _S32
    lo_lo, hi_lo, lo_hi, hi_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (lo_lo >> _S32) + (hi_lo & _M32) + lo_hi  # cannot overflow
    upper = (hi_lo >> _S32) + (cross >> _S32) + hi_hi
    lower = (cross << _S32) | (lo_lo & _M32)
    return lower ^ upper


@numba.njit(inline="always")
def _merge(acc, start):
    k = _KEY_MERGE
    h = start
    h += _mul128_fold64(acc[0] ^ k[0], acc[1] ^ k[1])
    h += _mul128_fold64(acc[2] ^ k[2], acc[3] ^ k[3])
    h += _mul128_fold64(acc[4] ^ k[4], acc[5] ^ k[5])
    h += _mul128_fold64(acc[6] ^ k[6], acc[7] ^ k[7])
    h = h ^ (h >> _S37)
    h = h * _PRIME_MX1
    return h ^ (h >> _S32)


@numba.njit(inline="always")
def _xxh3_words(words):
    """XXH3-64 (seed 0, default secret) of ``words`` (more than 240 bytes, a whole number of 64-bit words)."""
    nwords = words.shape[0]
    nbytes = nwords * 8
    acc = (_P32_3, _P64_1, _P64_2, _P64_3, _P64_4, _P32_2, _P64_5, _P32_1)
    nblocks = (nbytes - 1) // _BLOCK_BYTES
    for b in range(nblocks):
        acc = _scramble(_accumulate(words, b * _BLOCK_STRIPES * _STRIPE_WORDS, _BLOCK_STRIPES, _KEY_STRIPES, acc))
    last_block = nblocks * _BLOCK_STRIPES * _STRIPE_WORDS
    acc = _accumulate(words, last_block, (nbytes - 1 - nblocks * _BLOCK_BYTES) // 64, _KEY_STRIPES, acc)
    acc = _accumulate(words, nwords - _STRIPE_WORDS, 1, _KEY_LAST, acc)  # the last 64 bytes, again
    return _merge(acc, np.uint64(nbytes) * _P64_1)


@numba.njit(parallel=True, cache=True, nogil=True)
def _hash_pages(pages, out):
    for p in numba.prange(pages.shape[0]):
        out[p] = _xxh3_words(pages[p])


@numba.njit(parallel=True, cache=True, nogil=True)
def _read_pages(pages):
    total = np.uint64(0)
    for p in numba.prange(pages.shape[0]):
        acc = np.uint64(0)
        row = pages[p]
        for i in range(row.shape[0]):
            acc ^= row[i]
        total += acc
    return total


def as_pages(buf, page_size: int = PAGE_SIZE) -> np.ndarray:
    """A ``(npages, page_size // 8)`` uint64 view of ``buf`` (bytes-like, mmap, or numpy array), without copying.

    Raises ``ValueError`` when the buffer cannot be split into whole, 8-byte aligned pages.
    """
    if page_size <= 0 or page_size % 32:
        raise ValueError(f"page size {page_size} is not a positive multiple of 32 bytes")
    arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf.reshape(-1).view(np.uint8)
    if arr.size % page_size:
        raise ValueError(
            f"buffer of {arr.size} bytes is not a whole number of {page_size}-byte pages "
            f"({arr.size % page_size} bytes left over): pad or trim it to a page multiple"
        )
    if arr.ctypes.data % 8:
        raise ValueError(
            f"buffer at address {arr.ctypes.data:#x} is not 8-byte aligned: hash a page-aligned mapping "
            "(mmap) or a copy made with numpy"
        )
    return arr.view(np.uint64).reshape(-1, page_size // 8)


def _check_hash_page_size(page_size: int) -> None:
    if page_size < MIN_PAGE_SIZE:
        raise ValueError(
            f"page size {page_size} is too small to fingerprint: XXH3-64 is computed here for pages larger than "
            f"240 bytes only (shorter inputs use other XXH3 algorithms); use a page of {MIN_PAGE_SIZE} bytes or more"
        )


def page_hashes(buf, page_size: int = PAGE_SIZE) -> np.ndarray:
    """XXH3-64 (seed 0) of each ``page_size`` page of ``buf``, as a uint64 array, computed in parallel.

    ``page_size`` is a multiple of 32 bytes, at least :data:`MIN_PAGE_SIZE`.
    """
    pages = as_pages(buf, page_size)
    _check_hash_page_size(page_size)
    out = np.empty(pages.shape[0], dtype=np.uint64)
    if pages.shape[0]:
        _hash_pages(pages, out)
    return out


def read_words(buf, page_size: int = PAGE_SIZE) -> int:
    """Reads every 64-bit word of ``buf`` in the same parallel pattern as :func:`page_hashes`: the baseline."""
    pages = as_pages(buf, page_size)
    return int(_read_pages(pages)) if pages.shape[0] else 0


def page_hashes_reference(buf, page_size: int = PAGE_SIZE) -> np.ndarray:
    """The same fingerprints computed one page at a time by the ``xxhash`` package (slow; for checking)."""
    import xxhash

    _check_hash_page_size(page_size)
    data = memoryview(buf).cast("B")
    if len(data) % page_size:
        raise ValueError(f"buffer of {len(data)} bytes is not a whole number of {page_size}-byte pages")
    return np.array(
        [xxhash.xxh3_64_intdigest(data[i : i + page_size]) for i in range(0, len(data), page_size)],
        dtype=np.uint64,
    )


def diff_pages(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Indexes of the pages whose fingerprints differ (pages missing on either side count as differing)."""
    n = min(len(before), len(after))
    differing = np.flatnonzero(before[:n] != after[:n])
    if len(before) != len(after):
        differing = np.concatenate([differing, np.arange(n, max(len(before), len(after)))])
    return differing


def benchmark(size: int, repeats: int = 5) -> dict:
    """Hash and plain-read throughput over the same ``size`` bytes of anonymous memory, best of ``repeats``."""
    import mmap
    import time

    if size <= 0 or size % PAGE_SIZE:
        raise ValueError(f"size {size} is not a positive multiple of {PAGE_SIZE}")
    mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # anonymous memory, not shmem
    arr = np.frombuffer(mem, dtype=np.uint64)
    arr[:] = np.arange(arr.size, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    page_hashes(mem[: PAGE_SIZE * 8])  # compile before timing
    read_words(mem[: PAGE_SIZE * 8])
    hash_times, read_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        read_words(mem)
        t1 = time.perf_counter()
        page_hashes(mem)
        t2 = time.perf_counter()
        read_times.append(t1 - t0)
        hash_times.append(t2 - t1)
    del arr
    mem.close()
    hash_s, read_s = min(hash_times), min(read_times)
    return {
        "algorithm": ALGORITHM,
        "size": size,
        "pages": size // PAGE_SIZE,
        "threads": numba.get_num_threads(),
        "repeats": repeats,
        "hash_s": hash_s,
        "read_s": read_s,
        "bytes_per_s": size / hash_s,
        "read_bytes_per_s": size / read_s,
        "ratio_to_read": read_s / hash_s,
    }
