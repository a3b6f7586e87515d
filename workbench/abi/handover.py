"""The whole handover as the next kernel would find it: the KHO FDT, the preserved-memory map, the
``kexec-metadata`` and ``LUO`` blobs, and every preserved memfd, decoded from physical memory.

:func:`decode_handover` starts from memory alone (scanning for the FDT when its address is not given);
:func:`decode_fdt_blob` starts from an FDT read from ``/sys/kernel/debug/kho/{in,out}/fdt``. In 7.2 the ``out``
file's length is fixed when ``kho_init`` registers it (after ``kexec-metadata`` is added), so once LUO adds its
node at ``late_initcall`` the file shows a truncated FDT; :func:`decode_fdt_blob` then finds the complete FDT in
memory by its bytes. :func:`encode_handover` builds the same state in a buffer, for tests and experiments.

What a dump shows depends on when it is taken. The FDT, its sub-nodes and the radix tree are live from boot
(memfd folios, their ``memfd_luo_ser`` and folio arrays enter the tree at PRESERVE_FD time), but ``sessions_pa``,
the file lists and the FLB entries are only written by ``liveupdate_reboot()`` inside ``kernel_kexec()``: a dump
taken before the kexec reboot shows no sessions; one taken with the guest stopped at ``machine_kexec`` shows
everything. After the kexec, the next kernel frees ``luo_ser`` early and reuses the old tree's pages.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pandas as pd

from workbench.abi.alloc import PageAllocator
from workbench.abi.errors import AbiError, MalformedData, TruncatedData
from workbench.abi.fdt import (
    FDT_HEADER_SIZE,
    FDT_MAGIC,
    FdtNode,
    KhoFdt,
    KhoSubtree,
    decode_kho_fdt,
    encode_kho_fdt,
    find_kho_fdt,
    find_kho_fdts,
    parse_fdt,
    read_fdt_blob,
    read_kho_fdt,
)
from workbench.abi.kexec_metadata import (
    KEXEC_METADATA_SIZE,
    KHO_METADATA_NODE_NAME,
    KexecMetadata,
    decode_kexec_metadata,
    encode_kexec_metadata,
)
from workbench.abi.luo import (
    LUO_KHO_ENTRY_NAME,
    LUO_SER_SIZE,
    LuoFile,
    LuoFlb,
    LuoState,
    decode_luo,
    encode_luo,
)
from workbench.abi.memfd import MEMFD_LUO_FH_COMPATIBLE, Memfd, decode_memfd, encode_memfd
from workbench.abi.moment import NO_SESSIONS_BEFORE_REBOOT, handover_moment
from workbench.abi.physmem import PAGE_SIZE, BufferMemory, PhysicalMemory
from workbench.abi.radix import RadixTree, encode_radix_tree, read_radix_tree

__all__ = [
    "Handover",
    "decode_handover",
    "decode_fdt_blob",
    "MemfdSpec",
    "EncodedHandover",
    "encode_handover",
]

_MAX_SUBTREE_FDT = 1 << 20
T = TypeVar("T")


@dataclass
class Handover:
    """Everything reachable from one KHO FDT. ``errors`` lists what could not be decoded (non-strict mode)."""

    fdt: KhoFdt
    memory_map: RadixTree | None
    kexec_metadata: KexecMetadata | None
    luo: LuoState | None
    memfds: dict[tuple[str, int], Memfd]
    subtree_fdts: dict[str, FdtNode] = field(default_factory=dict)
    errors: list[AbiError] = field(default_factory=list)
    #: ``outgoing`` (the running kernel's own, the default), ``incoming`` (handed over by the previous kernel) or
    #: ``older``; set by :func:`~workbench.abi.handovers.decode_handovers` from the kexec metadata
    role: str = "outgoing"
    role_reason: str = ""
    #: the next kernel consumed this handover's preserved-memory map at boot (its pages are free memory there)
    memory_map_consumed: bool = False

    def preserved(self) -> pd.DataFrame:
        """DataFrame ``[pfn, order]`` of the preserved-memory map (empty when it was not decoded)."""
        if self.memory_map is None:
            return pd.DataFrame({"pfn": np.empty(0, np.uint64), "order": np.empty(0, np.uint8)})
        return self.memory_map.frame()

    def files(self) -> pd.DataFrame:
        """One row per preserved LUO file: ``session``, ``token``, ``compatible``, ``data``."""
        if self.luo is None:
            return pd.DataFrame(columns=["session", "token", "compatible", "data"])
        return self.luo.files_frame()

    def memfd_folios(self) -> pd.DataFrame:
        """Every folio of every memfd: ``session``, ``token``, ``pfn``, ``flags``, ``index``."""
        frames = [m.folios.assign(session=s, token=np.uint64(t)) for (s, t), m in self.memfds.items()]
        columns = ["session", "token", "pfn", "flags", "index"]
        return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)

    def referenced_pages(self) -> pd.DataFrame:
        """Pages the next kernel restores by address, each of which must start a preserved folio: ``what``
        references it and its ``pfn``."""
        rows: list[tuple[str, int]] = []
        if self.fdt.phys is not None:
            rows.append(("KHO FDT", self.fdt.phys // PAGE_SIZE))
        if self.kexec_metadata is not None:
            rows.append(("kexec-metadata", self.kexec_metadata.phys // PAGE_SIZE))
        if self.luo is not None:
            rows += [("LUO metadata", p // PAGE_SIZE) for p in self.luo.metadata_pages()]
        for (session, token), memfd in self.memfds.items():
            rows += [(f"memfd {session}/{token:#x} metadata", p // PAGE_SIZE) for p in memfd.metadata_pages()]
            rows += [(f"memfd {session}/{token:#x} folio", int(p)) for p in memfd.folios["pfn"] if p]
        return pd.DataFrame(rows, columns=["what", "pfn"]).astype({"pfn": "uint64"})

    def unpreserved_references(self) -> pd.DataFrame:
        """The rows of :meth:`referenced_pages` whose pfn is not the start of any preserved folio; none when the
        map was consumed (:attr:`memory_map_consumed`), since there is nothing left to check against."""
        refs = self.referenced_pages()
        if self.memory_map_consumed:
            return refs.iloc[:0]
        preserved = self.preserved()["pfn"].to_numpy(dtype=np.uint64)
        return refs[~np.isin(refs["pfn"].to_numpy(dtype=np.uint64), preserved)].reset_index(drop=True)

    def unpreserved_check(self) -> str:
        """Whether :meth:`unpreserved_references` could check anything, in words."""
        if self.memory_map_consumed:
            return (
                "skipped: the next kernel consumed this preserved-memory map at boot (its bits became memblock "
                "reservations and its pages free memory), so there is nothing to check the references against"
            )
        if self.memory_map is None:
            return "skipped: the preserved-memory map was not decoded"
        return "done"

    def summary(self) -> dict:
        """A JSON-ready digest: where the FDT and the map are, the sessions, the kexec metadata, the moment of the
        live update the bytes show (:func:`~workbench.abi.moment.handover_moment`) and the errors."""
        out = {
            "fdt_phys": self.fdt.phys,
            "subtrees": [s.name for s in self.fdt.subtrees],
            "memory_map_phys": self.fdt.memory_map_phys,
            "errors": [str(e) for e in self.errors],
            "role": self.role,
            "memory_map_consumed": self.memory_map_consumed,
            "unpreserved_check": self.unpreserved_check(),
        }
        if self.role_reason:
            out["role_reason"] = self.role_reason
        if self.memory_map is not None:
            out |= {
                "preserved_folios": self.memory_map.folio_count,
                "preserved_pages": self.memory_map.page_count,
                "memory_map_pages": self.memory_map.node_pages,
            }
        if self.luo is not None:
            out |= {
                "liveupdate_num": self.luo.liveupdate_num,
                "sessions": [s.name for s in self.luo.sessions],
                "files": sum(len(s.files) for s in self.luo.sessions),
                "flbs": [f.name for f in self.luo.flbs],
            }
        if self.kexec_metadata is not None:
            out |= {
                "previous_release": self.kexec_metadata.previous_release,
                "kexec_count": self.kexec_metadata.kexec_count,
            }
        reading = handover_moment(self)
        out |= reading.as_dict()
        if self.luo is not None and not self.luo.sessions and reading.moment in ("before_preserve", "preserved"):
            out["sessions_note"] = NO_SESSIONS_BEFORE_REBOOT
        return out


def decode_handover(
    mem: PhysicalMemory, fdt_phys: int | None = None, *, memory_map: bool = True, strict: bool = True
) -> Handover:
    """Decodes the handover whose KHO FDT is at ``fdt_phys`` (found by scanning ``mem`` when ``None``).

    With ``strict`` any :class:`AbiError` propagates; otherwise the parts that fail are left out and their
    errors collected in :attr:`Handover.errors`. ``memory_map=False`` skips the radix tree walk.
    """
    if fdt_phys is None:
        fdt_phys = find_kho_fdt(mem)
    return _decode_from_fdt(mem, read_kho_fdt(mem, fdt_phys), memory_map=memory_map, strict=strict)


def decode_fdt_blob(
    blob: bytes, mem: PhysicalMemory, fdt_phys: int | None = None, *, memory_map: bool = True, strict: bool = True
) -> Handover:
    """Decodes the handover described by an FDT blob (e.g. read from ``/sys/kernel/debug/kho/in/fdt``),
    following its pointers into ``mem``.

    A blob shorter than its header's ``totalsize`` (the 7.2 ``kho/out/fdt`` file once LUO is up) is replaced by
    the complete FDT in ``mem`` that starts with the same bytes.
    """
    try:
        fdt = decode_kho_fdt(blob, fdt_phys)
    except TruncatedData:
        if len(blob) < FDT_HEADER_SIZE or struct.unpack_from(">I", blob)[0] != FDT_MAGIC:
            raise
        candidates = [fdt_phys] if fdt_phys is not None else find_kho_fdts(mem)
        matches = [p for p in candidates if _starts_with(mem, p, blob)]
        if len(matches) != 1:
            raise TruncatedData(
                f"the FDT blob has {len(blob)} of its {struct.unpack_from('>I', blob, 4)[0]} bytes (7.2's "
                f"debugfs kho/out/fdt keeps the size it had at boot) and {len(matches)} FDT(s) in memory start "
                "with these bytes, so the complete one cannot be chosen",
                fdt_phys,
            ) from None
        fdt = read_kho_fdt(mem, matches[0])
    return _decode_from_fdt(mem, fdt, memory_map=memory_map, strict=strict)


def _starts_with(mem: PhysicalMemory, phys: int, prefix: bytes) -> bool:
    return mem.contains(phys, len(prefix)) and mem.read(phys, len(prefix)) == bytes(prefix)


def _holds_fdt(mem: PhysicalMemory, phys: int, size: int) -> bool:
    if not FDT_HEADER_SIZE <= size <= _MAX_SUBTREE_FDT or not mem.contains(phys, 4):
        return False
    return struct.unpack(">I", mem.read(phys, 4))[0] == FDT_MAGIC


def _decode_from_fdt(mem: PhysicalMemory, fdt: KhoFdt, *, memory_map: bool, strict: bool) -> Handover:
    handover = Handover(fdt, None, None, None, {})

    def attempt(decode: Callable[[], T]) -> T | None:
        try:
            return decode()
        except AbiError as exc:
            if strict:
                raise
            handover.errors.append(exc)
            return None

    if memory_map:
        handover.memory_map = attempt(lambda: read_radix_tree(mem, fdt.memory_map_phys))
    subtree_fdt_bytes = [0]
    for sub in fdt.subtrees:
        if sub.name == KHO_METADATA_NODE_NAME:
            handover.kexec_metadata = attempt(lambda s=sub: decode_kexec_metadata(mem, s.data_phys, s.blob_size))
        elif sub.name == LUO_KHO_ENTRY_NAME:
            handover.luo = attempt(lambda s=sub: decode_luo(mem, s.data_phys, s.blob_size))
        elif _holds_fdt(mem, sub.data_phys, sub.blob_size):
            node = attempt(lambda s=sub: _read_subtree_fdt(mem, s, subtree_fdt_bytes))
            if node is not None:
                handover.subtree_fdts[sub.name] = node
    if handover.luo is not None:
        folio_array_pages: dict[int, str] = {}
        for session in handover.luo.sessions:
            for f in session.files:
                if f.compatible == MEMFD_LUO_FH_COMPATIBLE:
                    what = f"memfd {session.name}/{f.token:#x} (memfd_luo_ser at {f.data:#x})"
                    memfd = attempt(lambda f=f, what=what: decode_memfd(mem, f.data, what, claimed=folio_array_pages))
                    if memfd is not None:
                        handover.memfds[(session.name, f.token)] = memfd
    return handover


def _read_subtree_fdt(mem: PhysicalMemory, sub: KhoSubtree, total: list[int]) -> FdtNode:
    """The tree of a sub-node's FDT blob. ``total`` counts the bytes of the sub-FDTs read so far: in memory they
    cannot add up to more than there is, unless several sub-nodes point into the same bytes, which would have them
    read again and again."""
    size = struct.unpack(">I", mem.read(sub.data_phys + 4, 4))[0]  # its totalsize, before reading it
    total[0] += size if size <= _MAX_SUBTREE_FDT else 0  # a larger one: read_fdt_blob says what is wrong
    if total[0] > mem.size:
        raise MalformedData(
            f"KHO sub-node {sub.name!r}: its FDT at {sub.data_phys:#x} brings the sub-FDTs to {total[0]} bytes, more "
            f"than the {mem.size} bytes of memory: sub-nodes point into the same FDT",
            sub.data_phys,
        )
    return parse_fdt(read_fdt_blob(mem, sub.data_phys), sub.data_phys)


@dataclass
class MemfdSpec:
    """A memfd to preserve in :func:`encode_handover`: its folios (``pfns``, ``orders``, file ``indexes``)."""

    token: int
    pfns: np.ndarray
    orders: np.ndarray
    indexes: np.ndarray
    size: int
    pos: int = 0
    seals: int = 0


@dataclass
class EncodedHandover:
    """Where :func:`encode_handover` put things, and the folios it preserved."""

    fdt_phys: int
    memory_map_phys: int
    luo: LuoState
    memfds: dict[tuple[str, int], Memfd]
    kexec_metadata: KexecMetadata
    preserved: pd.DataFrame  # pfn, order


def encode_handover(
    allocator: PageAllocator,
    sessions: dict[str, Sequence[MemfdSpec]],
    *,
    flbs: Sequence[LuoFlb] = (),
    other_folios: tuple[np.ndarray, np.ndarray] | None = None,
    release: str = "7.2.13",
    kexec_count: int = 1,
    liveupdate_num: int = 1,
) -> EncodedHandover:
    """Builds, in ``allocator``'s memory, the state a 7.2 kernel leaves for the next one after
    ``liveupdate_reboot()``: every page it would preserve is in the radix tree (the tree's own pages are not,
    as in the kernel). ``other_folios`` adds ``(pfns, orders)`` preserved by other users."""
    memory: BufferMemory = allocator.memory
    fdt_phys = allocator.alloc()
    metadata = encode_kexec_metadata(release, kexec_count, allocator)
    folios: list[tuple[np.ndarray, np.ndarray]] = []
    single_pages: list[int] = [fdt_phys, metadata.phys]
    memfds: dict[tuple[str, int], Memfd] = {}
    luo_sessions = []
    for name, specs in sessions.items():
        files = []
        for spec in specs:
            memfd = encode_memfd(spec.pfns, spec.indexes, spec.size, allocator, pos=spec.pos, seals=spec.seals)
            memfds[(name, spec.token)] = memfd
            single_pages += memfd.metadata_pages()
            folios.append((np.asarray(spec.pfns, np.uint64), np.asarray(spec.orders, np.uint8)))
            files.append(LuoFile(MEMFD_LUO_FH_COMPATIBLE, memfd.phys, spec.token))
        luo_sessions.append((name, files))
    luo = encode_luo(luo_sessions, allocator, flbs, liveupdate_num)
    single_pages += luo.metadata_pages()
    page_pfns = np.array(single_pages, dtype=np.uint64) // np.uint64(PAGE_SIZE)
    folios.append((page_pfns, np.zeros(page_pfns.size, np.uint8)))
    if other_folios is not None:
        folios.append((np.asarray(other_folios[0], np.uint64), np.asarray(other_folios[1], np.uint8)))
    pfns = np.concatenate([f[0] for f in folios])
    orders = np.concatenate([f[1] for f in folios])
    root = encode_radix_tree(pfns, orders, allocator)
    subtrees = [
        (KHO_METADATA_NODE_NAME, metadata.phys, KEXEC_METADATA_SIZE),
        (LUO_KHO_ENTRY_NAME, luo.phys, LUO_SER_SIZE),
    ]
    blob = encode_kho_fdt(root, subtrees)
    memory.write(fdt_phys, blob)
    return EncodedHandover(fdt_phys, root, luo, memfds, metadata, pd.DataFrame({"pfn": pfns, "order": orders}))
