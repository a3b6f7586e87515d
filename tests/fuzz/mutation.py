"""Hypothesis strategies that damage valid inputs the way a buggy or hostile kernel could.

Two kinds of input are mutated:

* byte strings (an FDT blob, an ELF or kdump file): :func:`blob_edits` flips bits, overwrites bytes, writes
  extreme 32/64-bit values in either byte order, and cuts or extends the end; :func:`apply_blob_edits` applies them;
* physical memory holding encoded structures: :func:`memory_edits` works on the pages the encoders allocated. Besides
  bit flips and extreme values in any word, it rewires pointers (every word whose value points into the memory):
  to another structure's page (a cycle, or two lists sharing pages), to a misaligned address, outside the memory,
  or many pointers at once to the same page; ``cut`` drops pages from the end of memory. :func:`apply_memory_edits`
  returns the damaged memory; :func:`garbage_memory` makes a few pages of pointer-rich garbage from nothing.

Seeds are the encoders' output and the one real capture the repository holds (:data:`REAL_KHO_OUT_7_2`). Edits are
plain tuples, so a failing example reads as the list of damage done.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from workbench.abi.alloc import PageAllocator
from workbench.abi.physmem import PAGE_SIZE, BufferMemory

__all__ = [
    "REAL_KHO_OUT_7_2",
    "EXTREME_U64",
    "EXTREME_U32",
    "blob_edits",
    "apply_blob_edits",
    "used_pages",
    "pointer_words",
    "memory_edits",
    "apply_memory_edits",
    "garbage_memory",
]

# A real capture: 7.2's debugfs kho/out/fdt, cut short as 7.2 shows it (its header claims more bytes than it has)
REAL_KHO_OUT_7_2 = (Path(__file__).parents[1] / "lab" / "kho-out-7.2-debugfs.fdt").read_bytes()
EXTREME_U64 = (0, 1, 0xFFF, PAGE_SIZE, 1 << 31, 1 << 32, (1 << 32) - 1, 1 << 52, 1 << 63, (1 << 64) - 1)
EXTREME_U32 = (0, 1, 2, 0xFF, 0xFFFF, 1 << 16, 1 << 20, 1 << 31, (1 << 32) - 1)


def blob_edits(size: int, max_edits: int = 8) -> st.SearchStrategy[list[tuple]]:
    """Edits of a blob of ``size`` bytes: ``("flip", at, bit)``, ``("bytes", at, data)``,
    ``("u32", at, value, order)``, ``("u64", at, value, order)``, ``("cut", length)``, ``("extend", data)``."""
    at = st.integers(0, max(size - 1, 0))
    order = st.sampled_from(["<", ">"])
    u32 = st.one_of(st.sampled_from(EXTREME_U32), st.integers(0, (1 << 32) - 1))
    u64 = st.one_of(st.sampled_from(EXTREME_U64), st.integers(0, (1 << 64) - 1))
    edit = st.one_of(
        st.tuples(st.just("flip"), at, st.integers(0, 7)),
        st.tuples(st.just("bytes"), at, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("u32"), at, u32, order),
        st.tuples(st.just("u64"), at, u64, order),
        st.tuples(st.just("cut"), st.integers(0, size)),
        st.tuples(st.just("extend"), st.binary(max_size=64)),
    )
    return st.lists(edit, min_size=1, max_size=max_edits)


def apply_blob_edits(blob: bytes, edits: Sequence[tuple]) -> bytes:
    """``blob`` with ``edits`` (from :func:`blob_edits`) applied in order; writes past the end are clipped."""
    data = bytearray(blob)
    for edit in edits:
        kind = edit[0]
        if kind == "cut":
            del data[edit[1] :]
        elif kind == "extend":
            data += edit[1]
        elif kind == "flip":
            if edit[1] < len(data):
                data[edit[1]] ^= 1 << edit[2]
        else:
            at = edit[1]
            raw = edit[2] if kind == "bytes" else struct.pack(edit[3] + ("I" if kind == "u32" else "Q"), edit[2])
            raw = raw[: max(len(data) - at, 0)]
            data[at : at + len(raw)] = raw
    return bytes(data)


def used_pages(allocator: PageAllocator) -> list[int]:
    """Physical address of every page the encoders took from ``allocator``."""
    return [phys + i * PAGE_SIZE for phys, n in allocator.allocated for i in range(n)]


def pointer_words(memory: BufferMemory, pages: Sequence[int]) -> list[int]:
    """Physical addresses of the 8-byte-aligned words in ``pages`` whose value is an address inside ``memory``:
    the pointers of the encoded structures (and the odd value that looks like one)."""
    (r,) = memory.ranges
    found = []
    for page in pages:
        words = memory.words(page, PAGE_SIZE // 8)
        hits = np.flatnonzero((words >= np.uint64(r.phys_start)) & (words < np.uint64(r.phys_end)))
        found += [page + 8 * int(i) for i in hits]
    return found


@st.composite
def memory_edits(draw, memory: BufferMemory, pages: Sequence[int], max_edits: int = 6) -> list[tuple]:
    """Edits of ``memory`` whose structures occupy ``pages``: ``("flip", phys, bit)``, ``("u64", phys, value)``,
    ``("share", [phys, ...], value)`` (several pointers set to one value) and ``("cut", pages)``."""
    (r,) = memory.ranges
    pointers = pointer_words(memory, pages)
    word = st.sampled_from(pages).flatmap(lambda p: st.integers(0, PAGE_SIZE // 8 - 1).map(lambda i: p + 8 * i))
    structure_page = st.sampled_from(pages)
    target = st.one_of(
        structure_page,  # a cycle, or two structures sharing a page
        structure_page.map(lambda p: p + 8),  # misaligned
        st.sampled_from([0, r.phys_start - PAGE_SIZE, r.phys_end, r.phys_end - 8, (1 << 64) - PAGE_SIZE]),
        st.sampled_from(EXTREME_U64),
        st.integers(0, (1 << 64) - 1),
    )
    edits = [
        st.tuples(
            st.just("flip"),
            st.sampled_from(pages).flatmap(lambda p: st.integers(p, p + PAGE_SIZE - 1)),
            st.integers(0, 7),
        ),
        st.tuples(st.just("u64"), word, st.one_of(st.sampled_from(EXTREME_U64), st.integers(0, (1 << 64) - 1))),
        st.tuples(st.just("cut"), st.integers(1, max(r.size // PAGE_SIZE - 1, 1))),
    ]
    if pointers:
        edits.append(st.tuples(st.just("u64"), st.sampled_from(pointers), target))
    if len(pointers) > 1:
        edits.append(st.tuples(st.just("share"), st.lists(st.sampled_from(pointers), min_size=2, unique=True), target))
    return draw(st.lists(st.one_of(*edits), min_size=1, max_size=max_edits))


def apply_memory_edits(memory: BufferMemory, edits: Sequence[tuple]) -> BufferMemory:
    """A copy of ``memory`` with ``edits`` (from :func:`memory_edits`) applied; ``cut`` edits drop pages from its
    end."""
    data = memory.array.copy()
    base = memory.base
    keep = data.size
    for edit in edits:
        kind = edit[0]
        if kind == "flip":
            data[edit[1] - base] ^= np.uint8(1 << edit[2])
        elif kind == "u64":
            data[edit[1] - base : edit[1] - base + 8] = np.frombuffer(struct.pack("<Q", edit[2]), np.uint8)
        elif kind == "share":
            for phys in edit[1]:
                data[phys - base : phys - base + 8] = np.frombuffer(struct.pack("<Q", edit[2]), np.uint8)
        else:
            keep = min(keep, data.size - edit[1] * PAGE_SIZE)
    return BufferMemory(data[:keep], base=base)


@st.composite
def garbage_memory(draw, base: int = 0x10_0000, max_pages: int = 8) -> BufferMemory:
    """A few pages of garbage at ``base``: zeros with words written at random, most of them pointers to pages of
    this memory (aligned or not) or extreme values, so that decoders follow the garbage a long way."""
    pages = draw(st.integers(1, max_pages))
    page_start = st.integers(0, pages - 1).map(lambda p: base + p * PAGE_SIZE)
    value = st.one_of(
        page_start,
        page_start.map(lambda p: p + 8),
        st.sampled_from(EXTREME_U64),
        st.integers(0, (1 << 64) - 1),
    )
    words = np.zeros(pages * PAGE_SIZE // 8, dtype="<u8")
    for index, word in draw(st.lists(st.tuples(st.integers(0, words.size - 1), value), max_size=64)):
        words[index] = word
    return BufferMemory(words.view(np.uint8), base=base)
