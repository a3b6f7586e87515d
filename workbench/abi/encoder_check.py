"""Checking the workbench's encoders against what a kernel wrote: :func:`compare_with_encoders` re-encodes a
decoded handover and compares it page by page with the kernel's bytes, translating only the u64 fields that hold
addresses of metadata pages (the encoders allocate their pages elsewhere).

The kernel's bytes come from guest memory captured where the handover is complete: a lab VM stopped at
``machine_kexec`` by the lab's kexec capture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.abi.alloc import PageAllocator
from workbench.abi.block import BLOCK_HEADER_SIZE, read_block_list
from workbench.abi.errors import AbiError
from workbench.abi.fdt import encode_kho_fdt
from workbench.abi.handover import Handover, MemfdSpec, encode_handover
from workbench.abi.luo import FILE_SER_SIZE, SESSION_SER_SIZE
from workbench.abi.physmem import PAGE_SIZE, BufferMemory, PhysicalMemory
from workbench.abi.radix import encode_radix_tree, read_radix_tree

__all__ = ["compare_with_encoders"]

_ENCODE_BASE = 0x100_0000_0000  # 1 TiB: far from any lab guest's RAM, so no encoded address equals a kernel one


@dataclass
class _Pair:
    what: str
    kernel_phys: int
    encoded_phys: int
    size: int = PAGE_SIZE
    pointers: tuple[int, ...] | None = ()  # byte offsets of u64 addresses; None: every nonzero word is one


def compare_with_encoders(kernel: Handover, mem: PhysicalMemory, release: str | None = None) -> pd.DataFrame:
    """Re-encodes a decoded handover with the workbench's encoders and compares, page by page, what they write
    with what the kernel wrote in ``mem``.

    The radix tree is re-encoded from the kernel's preserved folios (:func:`encode_radix_tree`); the rest (FDT,
    ``kexec-metadata``, every memfd, the LUO blob and its block lists) by :func:`encode_handover` from the
    decoded sessions. The encoders take their pages from their own area, so every physical address of a
    metadata page differs from the kernel's: before comparing, each u64 field that holds such an address (the
    ``pointers`` of each structure) is translated through the pairing of kernel pages with encoded pages. One row
    per compared page: ``what``, both addresses, ``bytes`` compared, ``pointer_words`` translated,
    ``raw_differing_bytes`` (before translation: the bytes that legitimately differ) and ``differing_bytes``
    (after: 0 means the encoder reproduces the kernel's bytes exactly, up to where pages are). The FDT is compared
    over its ``totalsize``, re-encoded with the kernel's own addresses (its u64 cells are not at fixed offsets).

    :param kernel: the handover decoded completely from ``mem`` (memory map, LUO, ``kexec-metadata``)
    :param mem: the guest physical memory the kernel wrote it in
    :param release: the release to encode in ``kexec-metadata`` (default: the one the kernel wrote)
    :raises AbiError: the encoders lay out a different number of pages than the kernel did
    """
    if kernel.memory_map is None or kernel.luo is None or kernel.kexec_metadata is None:
        raise ValueError("the handover must be decoded completely (memory map, LUO, kexec-metadata)")
    tree = kernel.memory_map
    pfns, orders = tree.folios()
    order_of = dict(zip(pfns.tolist(), orders.tolist(), strict=True))
    metadata_pages = sum(len(m.metadata_pages()) for m in kernel.memfds.values()) + len(kernel.luo.metadata_pages())
    pages = 2 * tree.node_pages + 2 * metadata_pages + 64
    memory = BufferMemory(pages * PAGE_SIZE, base=_ENCODE_BASE)
    allocator = PageAllocator(memory)
    pairs: list[_Pair] = []

    # The radix tree, from the kernel's folios in the kernel's walk order.
    root = encode_radix_tree(pfns, orders, allocator)
    encoded_tree = read_radix_tree(memory, root)
    if encoded_tree.table_phys.size != tree.table_phys.size or encoded_tree.leaf_phys.size != tree.leaf_phys.size:
        raise AbiError(
            f"the re-encoded radix tree has {encoded_tree.table_phys.size} tables and {encoded_tree.leaf_phys.size} "
            f"leaves, the kernel's {tree.table_phys.size} and {tree.leaf_phys.size} (empty nodes left by "
            "unpreserved folios?)"
        )
    for k, e, level in zip(
        tree.table_phys.tolist(), encoded_tree.table_phys.tolist(), tree.table_levels.tolist(), strict=True
    ):
        pairs.append(_Pair(f"radix table (level {level})", k, e, pointers=None))
    for k, e in zip(tree.leaf_phys.tolist(), encoded_tree.leaf_phys.tolist(), strict=True):
        pairs.append(_Pair("radix leaf", k, e))

    # Everything else, from the decoded sessions.
    specs: dict[str, list[MemfdSpec]] = {}
    for session in kernel.luo.sessions:
        specs[session.name] = []
        for f in session.files:
            memfd = kernel.memfds[(session.name, f.token)]
            folio_pfns = memfd.folios["pfn"].to_numpy(dtype=np.uint64)
            spec = MemfdSpec(
                token=f.token,
                pfns=folio_pfns,
                orders=np.array([order_of.get(int(p), 0) for p in folio_pfns], dtype=np.uint8),
                indexes=memfd.folios["index"].to_numpy(dtype=np.uint64),
                size=memfd.ser.size,
                pos=memfd.ser.pos,
                seals=memfd.ser.seals,
            )
            specs[session.name].append(spec)
    encoded = encode_handover(
        allocator,
        specs,
        flbs=kernel.luo.flbs,
        release=release if release is not None else kernel.kexec_metadata.previous_release,
        kexec_count=kernel.kexec_metadata.kexec_count,
        liveupdate_num=kernel.luo.liveupdate_num,
    )
    pairs.append(_Pair("kexec-metadata", kernel.kexec_metadata.phys, encoded.kexec_metadata.phys))
    k_luo, e_luo = kernel.luo, encoded.luo
    pairs.append(_Pair("luo_ser", k_luo.phys, e_luo.phys, pointers=(16, 24)))
    pairs.append(_Pair("LUO FLB page", k_luo.flbs_pa, e_luo.flbs_pa))
    k_blocks = read_block_list(mem, k_luo.sessions_pa, SESSION_SER_SIZE)
    for block, e in zip(k_blocks.blocks, e_luo.session_block_pages, strict=False):
        offsets = (0, *(BLOCK_HEADER_SIZE + i * SESSION_SER_SIZE + 64 for i in range(block.count)))
        pairs.append(_Pair("LUO session block", block.phys, e, pointers=offsets))
    _check_count("LUO session blocks", len(k_blocks.blocks), len(e_luo.session_block_pages))
    for k_session, e_session in zip(k_luo.sessions, e_luo.sessions, strict=True):
        k_files = read_block_list(mem, k_session.files_phys, FILE_SER_SIZE)
        _check_count(f"file blocks of {k_session.name!r}", len(k_files.blocks), len(e_session.block_pages))
        for block, e in zip(k_files.blocks, e_session.block_pages, strict=False):
            offsets = (0, *(BLOCK_HEADER_SIZE + i * FILE_SER_SIZE + 48 for i in range(block.count)))
            pairs.append(_Pair("LUO file block", block.phys, e, pointers=offsets))
    for key, k_memfd in kernel.memfds.items():
        e_memfd = encoded.memfds[key]
        pairs.append(_Pair("memfd_luo_ser", k_memfd.phys, e_memfd.phys, pointers=(32,)))
        k_area, e_area = k_memfd.area, e_memfd.area
        if k_area is None or e_area is None:
            _check_count(f"folio array of memfd {key}", int(k_area is not None), int(e_area is not None))
            continue
        _check_count(f"vmalloc chunks of memfd {key}", len(k_area.chunk_phys), len(e_area.chunk_phys))
        _check_count(f"folio array pages of memfd {key}", k_area.page_phys.size, e_area.page_phys.size)
        for k, e in zip(k_area.chunk_phys, e_area.chunk_phys, strict=True):
            pairs.append(_Pair("kho_vmalloc chunk", k, e, pointers=None))
        for k, e in zip(k_area.page_phys.tolist(), e_area.page_phys.tolist(), strict=True):
            pairs.append(_Pair("memfd folio array page", k, e))

    mapping = {p.kernel_phys: p.encoded_phys for p in pairs}
    rows = [_compare_pair(p, mem, memory, mapping) for p in pairs]
    blob = encode_kho_fdt(
        kernel.fdt.memory_map_phys, [(s.name, s.data_phys, s.blob_size) for s in reversed(kernel.fdt.subtrees)]
    )
    fdt_bytes = np.frombuffer(kernel.fdt.blob, np.uint8)
    fdt_same = len(blob) == fdt_bytes.size
    differing = int(np.count_nonzero(np.frombuffer(blob, np.uint8) != fdt_bytes)) if fdt_same else fdt_bytes.size
    rows.append(
        {
            "what": "KHO FDT",
            "kernel_phys": kernel.fdt.phys if kernel.fdt.phys is not None else 0,
            "encoded_phys": encoded.fdt_phys,
            "bytes": int(fdt_bytes.size),
            "pointer_words": 0,
            "raw_differing_bytes": differing,
            "differing_bytes": differing,
        }
    )
    return pd.DataFrame(rows).astype({"kernel_phys": "uint64", "encoded_phys": "uint64"})


def _check_count(what: str, kernel: int, encoded: int) -> None:
    if kernel != encoded:
        raise AbiError(f"{what}: the kernel wrote {kernel}, the encoder {encoded}")


def _compare_pair(pair: _Pair, mem: PhysicalMemory, encoded: PhysicalMemory, mapping: dict[int, int]) -> dict:
    k_raw = np.frombuffer(mem.read(pair.kernel_phys, pair.size), dtype="<u8")
    e_raw = np.frombuffer(encoded.read(pair.encoded_phys, pair.size), dtype="<u8")
    translated = k_raw.copy()
    slots = np.flatnonzero(k_raw) if pair.pointers is None else np.array(pair.pointers, dtype=np.int64) // 8
    for slot in slots.tolist():
        value = int(k_raw[slot])
        if value:
            # An address with no counterpart stays as it is and shows up as differing.
            translated[slot] = mapping.get(value, value)
    raw = int(np.count_nonzero(k_raw.view(np.uint8) != e_raw.view(np.uint8)))
    after = int(np.count_nonzero(translated.view(np.uint8) != e_raw.view(np.uint8)))
    return {
        "what": pair.what,
        "kernel_phys": pair.kernel_phys,
        "encoded_phys": pair.encoded_phys,
        "bytes": pair.size,
        "pointer_words": int(np.count_nonzero(k_raw[slots])) if slots.size else 0,
        "raw_differing_bytes": raw,
        "differing_bytes": after,
    }
