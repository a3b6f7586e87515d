"""Kexec HandOver (KHO) state of a kernel, read with drgn (``kernel/liveupdate/kexec_handover.c``).

The outgoing side is ``kho_out``: the root FDT in one preserved page (``compatible = "kho-v4"``, the physical
address of the preserved-memory radix tree, one sub-node per producer with ``preserved-data`` and ``blob-size``)
and ``kho_out.radix_tree`` whose leaves have one bit per preserved folio. The incoming side is ``kho_in``: the
physical addresses of the FDT and scratch array the previous kernel handed over and what its ``kexec-metadata``
said (previous release, kexec count). ``kho_scratch[kho_scratch_cnt]`` lists the scratch areas, in 7.2 ordered
lowmem, global, then one per NUMA node with memory.

Linux 7.2 has nothing to finalize: producers add FDT sub-nodes and preserve folios at any time, and LUO
serializes its sessions inside ``liveupdate_reboot()``. :func:`kho_finalized` therefore answers ``None`` unless the
kernel's ``struct kho_out`` has a ``finalized`` member (6.16-6.18).

After a kexec the old radix tree's pages are free memory in the new kernel (its bits were turned into memblock
reservations during boot), so only the incoming FDT is worth reading, not the tree it points to; of its sub-nodes'
blobs, ``kexec-metadata`` stays in place while LUO's ``luo_ser`` is freed as soon as LUO has read it.

The scratch areas are CMA pageblocks after boot: movable allocations use them, so they show up on the buddy free
lists (``memory_map`` reports both).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import drgn
import libfdt
import numpy as np
import pandas as pd
from drgn.helpers.linux.list import list_for_each

from workbench.inspect._util import (
    PAGE_SIZE,
    c_string,
    constant,
    direct_map_offset,
    global_object,
    has_member,
    member,
    page_pfn,
    read_phys,
    virt_to_phys_direct,
)
from workbench.inspect.errors import UnsupportedLayout

__all__ = [
    "KhoSubtree",
    "KhoFdt",
    "KhoIncoming",
    "KexecMetadata",
    "kho_enabled",
    "kho_finalized",
    "is_kho_boot",
    "kho_out_fdt",
    "kho_in_fdt",
    "read_kho_fdt",
    "for_each_kho_subtree",
    "kho_radix_root",
    "for_each_radix_node",
    "for_each_preserved_folio",
    "preserved_folios",
    "for_each_scratch_area",
    "scratch_areas",
    "kho_incoming",
    "kexec_metadata",
    "for_each_system_ram",
    "for_each_free_block",
    "memory_map",
    "kho_facts",
    "kho_summary",
]

_OPTION = "CONFIG_KEXEC_HANDOVER"
_FDT_MAGIC = 0xD00DFEED
_MAX_FDT = 1 << 20


# -- data ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KhoSubtree:
    """One producer's sub-node of the KHO FDT: its blob's physical address and size."""

    name: str
    phys: int
    size: int


@dataclass
class KhoFdt:
    """A decoded KHO root FDT (``kho_out.fdt`` or the incoming one at ``kho_in.fdt_phys``)."""

    phys: int
    totalsize: int
    compatible: list[str]
    memory_map_phys: int | None
    subtrees: list[KhoSubtree]
    properties: dict[str, bytes] = field(default_factory=dict)
    blob: bytes = b""

    def subtree(self, name: str) -> KhoSubtree | None:
        return next((s for s in self.subtrees if s.name == name), None)


@dataclass(frozen=True)
class KexecMetadata:
    """``struct kho_kexec_metadata``: who handed over and how many kexecs have happened in a row."""

    version: int | None
    previous_release: str
    kexec_count: int
    phys: int | None = None


@dataclass
class KhoIncoming:
    """``kho_in``: what the previous kernel handed over (all zero/empty after a cold boot)."""

    is_kexec_boot: bool
    fdt_phys: int
    scratch_phys: int
    previous_release: str
    kexec_count: int
    fdt: KhoFdt | None = None


# -- state -----------------------------------------------------------------------------------------------------
def kho_enabled(prog: drgn.Program) -> bool:
    """Whether KHO is on (``kho=on`` and scratch reserved): ``kho_enable``, or a set-up ``kho_out`` when that
    static is not in the debug info.

    :param prog: kernel program
    """
    try:
        return bool(prog["kho_enable"].value_())
    except LookupError:
        kho_out = global_object(prog, "kho_out", _OPTION)
        return bool(_kho_out_fdt_pointer(kho_out).value_())


def kho_finalized(prog: drgn.Program) -> bool | None:
    """``kho_out.finalized`` on kernels that have it; ``None`` on 7.2, which has no finalize step (the FDT is
    complete at any time and LUO serializes at ``liveupdate_reboot()``).

    :param prog: kernel program
    """
    kho_out = global_object(prog, "kho_out", _OPTION)
    for name in ("finalized", "ser.finalized"):
        if has_member(kho_out, name):
            return bool(kho_out.member_(name).value_())
    return None


def is_kho_boot(prog: drgn.Program) -> bool:
    """Whether this kernel was started by a KHO kexec (``kho_in.fdt_phys`` set, as ``is_kho_boot()``).

    :param prog: kernel program
    """
    return bool(global_object(prog, "kho_in", _OPTION).fdt_phys.value_())


def _kho_out_fdt_pointer(kho_out: drgn.Object) -> drgn.Object:
    return member(kho_out, "fdt", "ser.fdt")


def read_kho_fdt(prog: drgn.Program, phys: int) -> KhoFdt:
    """Decodes the KHO FDT at physical address ``phys`` (read through the direct map).

    :param prog: kernel program
    :param phys: ``phys_addr_t`` of the FDT header
    :raises UnsupportedLayout: no FDT there, or a damaged one
    """
    # imported here: workbench.abi loads its numba kernels on import, which not every inspection needs
    from workbench.abi.errors import AbiError
    from workbench.abi.fdt import fdt_node_name, fdt_node_properties

    header = read_phys(prog, phys, 40)
    magic, totalsize = struct.unpack_from(">II", header)
    if magic != _FDT_MAGIC or not 40 <= totalsize <= _MAX_FDT:
        raise UnsupportedLayout(f"no FDT at physical {phys:#x} (magic {magic:#x}, size {totalsize})")
    blob = read_phys(prog, phys, totalsize)
    try:
        fdt = libfdt.Fdt(blob)
        props = fdt_node_properties(fdt, 0, phys)
        subtrees = []
        node = fdt.first_subnode(0, quiet=(libfdt.NOTFOUND,))
        while node >= 0:
            sub = fdt_node_properties(fdt, node, phys)
            data, size = sub.get("preserved-data", b""), sub.get("blob-size", b"")
            subtrees.append(
                KhoSubtree(
                    fdt_node_name(fdt, node, phys),
                    struct.unpack("<Q", data)[0] if len(data) == 8 else 0,
                    struct.unpack("<Q", size)[0] if len(size) == 8 else 0,
                )
            )
            node = fdt.next_subnode(node, quiet=(libfdt.NOTFOUND,))
    except (libfdt.FdtException, AbiError) as exc:
        raise UnsupportedLayout(f"the FDT at physical {phys:#x} is damaged: {exc}") from exc
    mm = props.get("preserved-memory-map")
    return KhoFdt(
        phys=phys,
        totalsize=totalsize,
        compatible=[s.decode("utf-8", "replace") for s in props.get("compatible", b"").rstrip(b"\0").split(b"\0") if s],
        memory_map_phys=struct.unpack("<Q", mm)[0] if mm is not None and len(mm) == 8 else None,
        subtrees=subtrees,
        properties=props,
        blob=bytes(blob),
    )


def kho_out_fdt(prog: drgn.Program) -> KhoFdt | None:
    """The outgoing KHO FDT (``kho_out.fdt``), complete (the debugfs copy of 7.2 is cut at its boot size);
    ``None`` when KHO is off.

    :param prog: kernel program
    """
    pointer = _kho_out_fdt_pointer(global_object(prog, "kho_out", _OPTION))
    if not pointer.value_():
        return None
    return read_kho_fdt(prog, virt_to_phys_direct(prog, pointer.value_()))


def kho_in_fdt(prog: drgn.Program) -> KhoFdt | None:
    """The FDT the previous kernel handed over (``kho_in.fdt_phys``); ``None`` after a cold boot.

    :param prog: kernel program
    """
    phys = global_object(prog, "kho_in", _OPTION).fdt_phys.value_()
    return read_kho_fdt(prog, phys) if phys else None


def for_each_kho_subtree(prog: drgn.Program, incoming: bool = False) -> Iterator[KhoSubtree]:
    """The sub-nodes (``kho_add_subtree``) of the outgoing FDT, or of the incoming one.

    :param prog: kernel program
    :param incoming: read ``kho_in``'s FDT instead of ``kho_out``'s
    """
    fdt = kho_in_fdt(prog) if incoming else kho_out_fdt(prog)
    if fdt is not None:
        yield from fdt.subtrees


# -- the preserved-memory radix tree ----------------------------------------------------------------------------
def kho_radix_root(prog: drgn.Program) -> drgn.Object:
    """``struct kho_radix_node *`` root of the outgoing preserved-memory tree (``kho_out.radix_tree.root``).

    :param prog: kernel program
    """
    kho_out = global_object(prog, "kho_out", _OPTION)
    if not has_member(kho_out, "radix_tree"):
        raise UnsupportedLayout(
            "struct kho_out has no radix_tree: this kernel keeps preserved memory in another structure "
            "(6.16-6.18 used per-order xarrays); these helpers read the 7.2 radix tree"
        )
    return kho_out.radix_tree.root


def _geometry(prog: drgn.Program) -> tuple[int, int, int, int]:
    order0 = constant(prog, "KHO_ORDER_0_LOG2", 64 - 12)
    table = constant(prog, "KHO_TABLE_SIZE_LOG2", 9)
    bitmap = constant(prog, "KHO_BITMAP_SIZE_LOG2", 12 + 3)
    depth = constant(prog, "KHO_TREE_MAX_DEPTH", -(-(order0 - bitmap + 1) // table) + 1)
    return order0, table, bitmap, depth


def for_each_radix_node(root: drgn.Object) -> Iterator[tuple[int, int, int]]:
    """Every node of a KHO radix tree, parents before children: ``(level, phys, key_prefix)``; level 0 nodes are
    the ``struct kho_radix_leaf`` bitmaps, the root is level ``KHO_TREE_MAX_DEPTH - 1``.

    :param root: ``struct kho_radix_node *``
    """
    prog = root.prog_
    _, table_bits, bitmap_bits, depth = _geometry(prog)
    if not root.value_():
        return
    stack = [(depth - 1, virt_to_phys_direct(prog, root.value_()), 0)]
    seen: set[int] = set()
    while stack:
        level, phys, key = stack.pop()
        if phys in seen:
            raise UnsupportedLayout(f"KHO radix tree reaches node {phys:#x} twice: corrupt or changing under us")
        seen.add(phys)
        yield level, phys, key
        if level == 0:
            continue
        entries = np.frombuffer(read_phys(prog, phys, PAGE_SIZE), dtype="<u8")
        shift = (level - 1) * table_bits + bitmap_bits
        for index in np.flatnonzero(entries)[::-1]:
            stack.append((level - 1, int(entries[index]), key | (int(index) << shift)))


def _decode_leaf(bitmap: bytes, key: int, order0: int, bitmap_bits: int) -> tuple[np.ndarray, int]:
    bits = np.flatnonzero(np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little"))
    if not key:
        raise UnsupportedLayout("a KHO radix leaf with key 0 has no order bit: corrupt tree")
    msb = key.bit_length() - 1
    order = order0 - msb
    if not 0 <= order <= order0 - bitmap_bits:
        if bits.size:
            raise UnsupportedLayout(f"a KHO radix leaf with key {key:#x} has no valid order bit: corrupt tree")
        return np.empty(0, np.uint64), 0
    keys = np.uint64(key) | bits.astype(np.uint64)
    pfns = (keys ^ np.uint64(1 << msb)) << np.uint64(order)
    return pfns, order


def preserved_folios(prog: drgn.Program, root: drgn.Object | None = None) -> pd.DataFrame:
    """Every folio in the KHO radix tree as a DataFrame ``[pfn, order]`` (uint64, uint8), sorted by pfn.

    :param prog: kernel program
    :param root: ``struct kho_radix_node *`` (default: the outgoing tree, :func:`kho_radix_root`)
    """
    root = kho_radix_root(prog) if root is None else root
    order0, _table_bits, bitmap_bits, _depth = _geometry(prog)
    pfns, orders = [], []
    for level, phys, key in for_each_radix_node(root):
        if level:
            continue
        p, order = _decode_leaf(read_phys(prog, phys, PAGE_SIZE), key, order0, bitmap_bits)
        pfns.append(p)
        orders.append(np.full(p.size, order, dtype=np.uint8))
    df = pd.DataFrame(
        {
            "pfn": np.concatenate(pfns) if pfns else np.empty(0, np.uint64),
            "order": np.concatenate(orders) if orders else np.empty(0, np.uint8),
        }
    )
    return df.sort_values("pfn", kind="stable").reset_index(drop=True)


def for_each_preserved_folio(prog: drgn.Program, root: drgn.Object | None = None) -> Iterator[tuple[int, int]]:
    """``(pfn, order)`` of every preserved folio, in pfn order.

    :param prog: kernel program
    :param root: ``struct kho_radix_node *`` (default: the outgoing tree)
    """
    df = preserved_folios(prog, root)
    yield from zip(df["pfn"].tolist(), df["order"].tolist(), strict=True)


# -- scratch -----------------------------------------------------------------------------------------------------
def for_each_scratch_area(prog: drgn.Program) -> Iterator[drgn.Object]:
    """``struct kho_scratch *`` for each of the ``kho_scratch_cnt`` scratch areas.

    :param prog: kernel program
    """
    array = global_object(prog, "kho_scratch", _OPTION)
    count = global_object(prog, "kho_scratch_cnt", _OPTION).value_()
    if not array.value_():
        return
    for i in range(count):
        yield array + i


def scratch_areas(prog: drgn.Program) -> pd.DataFrame:
    """The scratch areas: ``index``, ``kind`` (``lowmem``, ``global``, ``node N`` in 7.2's order), ``addr``,
    ``size``, ``end``.

    :param prog: kernel program
    """
    rows = []
    for i, area in enumerate(for_each_scratch_area(prog)):
        kind = "lowmem" if i == 0 else "global" if i == 1 else f"node {i - 2}"
        addr, size = area.addr.value_(), area.size.value_()
        rows.append((i, kind, addr, size, addr + size))
    return pd.DataFrame(rows, columns=["index", "kind", "addr", "size", "end"]).astype(
        {"addr": "uint64", "size": "uint64", "end": "uint64"}
    )


# -- incoming ----------------------------------------------------------------------------------------------------
def kho_incoming(prog: drgn.Program) -> KhoIncoming:
    """``kho_in``: whether this kernel came from a KHO kexec, the handed-over FDT (decoded when present),
    scratch array address, and the previous kernel's release and kexec count.

    :param prog: kernel program
    """
    kho_in = global_object(prog, "kho_in", _OPTION)
    fdt_phys = kho_in.fdt_phys.value_()
    return KhoIncoming(
        is_kexec_boot=bool(fdt_phys),
        fdt_phys=fdt_phys,
        scratch_phys=kho_in.scratch_phys.value_() if has_member(kho_in, "scratch_phys") else 0,
        previous_release=c_string(kho_in.previous_release) if has_member(kho_in, "previous_release") else "",
        kexec_count=kho_in.kexec_count.value_() if has_member(kho_in, "kexec_count") else 0,
        fdt=read_kho_fdt(prog, fdt_phys) if fdt_phys else None,
    )


def kexec_metadata(prog: drgn.Program, incoming: bool = False) -> KexecMetadata | None:
    """The ``kexec-metadata`` this kernel will hand over (``struct kho_kexec_metadata`` of the outgoing FDT), or
    with ``incoming`` what the previous one handed over (as copied into ``kho_in``); ``None`` if absent.

    :param prog: kernel program
    :param incoming: the previous kernel's metadata instead of this one's
    """
    if incoming:
        info = kho_incoming(prog)
        if not info.is_kexec_boot:
            return None
        sub = info.fdt.subtree("kexec-metadata") if info.fdt else None
        return KexecMetadata(None, info.previous_release, info.kexec_count, sub.phys if sub else None)
    fdt = kho_out_fdt(prog)
    sub = fdt.subtree("kexec-metadata") if fdt else None
    if sub is None:
        return None
    try:
        obj = drgn.Object(prog, "struct kho_kexec_metadata", address=direct_map_offset(prog) + sub.phys)
        return KexecMetadata(obj.version.value_(), c_string(obj.previous_release), obj.kexec_count.value_(), sub.phys)
    except LookupError:  # no DWARF type: the 7.2 packed layout
        raw = read_phys(prog, sub.phys, min(sub.size, 4 + 65 + 4))
        version, release, count = struct.unpack_from("<I65sI", raw)
        return KexecMetadata(version, release.split(b"\0", 1)[0].decode(), count, sub.phys)


# -- physical memory ---------------------------------------------------------------------------------------------
def for_each_system_ram(prog: drgn.Program) -> Iterator[tuple[int, int]]:
    """``(start, end)`` (end exclusive) of each top-level ``System RAM`` resource of ``iomem_resource``.

    :param prog: kernel program
    """
    res = prog["iomem_resource"].child
    while res:
        if res.name and res.name.string_() == b"System RAM":
            yield res.start.value_(), res.end.value_() + 1
        res = res.sibling


def for_each_free_block(prog: drgn.Program, limit: int = 1 << 20) -> Iterator[tuple[int, int]]:
    """``(pfn, order)`` of every block on the buddy allocator's free lists (all nodes, zones, orders, migrate
    types). On a live kernel the lists change while they are walked: the answer is approximate, and a walk that
    meets a broken list stops that list.

    :param prog: kernel program
    :param limit: stop after this many blocks
    """
    from drgn.helpers.linux.mmzone import for_each_online_pgdat

    count = 0
    page_type = prog.type("struct page")
    link_offset = drgn.offsetof(page_type, "buddy_list" if page_type.has_member("buddy_list") else "lru")
    for pgdat in for_each_online_pgdat(prog):
        for z in range(len(pgdat.node_zones)):
            zone = pgdat.node_zones[z]
            for order in range(len(zone.free_area)):
                area = zone.free_area[order]
                if not area.nr_free.value_():
                    continue
                for mt in range(len(area.free_list)):
                    try:
                        for node in list_for_each(area.free_list[mt].address_of_()):
                            yield page_pfn(prog, node.value_() - link_offset), order
                            count += 1
                            if count >= limit:
                                return
                    except drgn.FaultError:
                        continue


def _runs(pfns: np.ndarray, orders: np.ndarray) -> list[tuple[int, int, int]]:
    """Merges folios of one order into maximal contiguous ``(start_pfn, end_pfn, order)`` runs."""
    out: list[tuple[int, int, int]] = []
    for order in np.unique(orders):
        p = np.sort(pfns[orders == order].astype(np.int64))
        if not p.size:
            continue
        n = 1 << int(order)
        breaks = np.flatnonzero(np.diff(p) != n) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [p.size]])
        out += [(int(p[s]), int(p[e - 1]) + n, int(order)) for s, e in zip(starts, ends, strict=True)]
    return out


def memory_map(prog: drgn.Program, free: bool = True) -> pd.DataFrame:
    """Physical memory as KHO sees it, one row per contiguous range: ``kind`` is ``System RAM``, ``scratch``
    (``detail`` = lowmem/global/node N), ``preserved`` (``order`` of its folios), ``radix tree`` (the tree's own
    pages, not preserved themselves) or ``free`` (buddy free lists, ``order``); ``start``/``end`` are physical
    byte addresses (end exclusive).

    :param prog: kernel program
    :param free: also walk the buddy free lists (slower, approximate on a live kernel)
    """
    rows: list[tuple[str, str, int, int, int]] = []
    rows += [("System RAM", "", s, e, -1) for s, e in for_each_system_ram(prog)]
    for area in scratch_areas(prog).itertuples():
        if area.size:
            rows.append(("scratch", area.kind, int(area.addr), int(area.end), -1))
    folios = preserved_folios(prog)
    for s, e, order in _runs(folios["pfn"].to_numpy(), folios["order"].to_numpy()):
        rows.append(("preserved", f"order {order}", s * PAGE_SIZE, e * PAGE_SIZE, order))
    node_pfns = np.array([phys // PAGE_SIZE for _l, phys, _k in for_each_radix_node(kho_radix_root(prog))], np.int64)
    for s, e, _o in _runs(node_pfns, np.zeros(node_pfns.size, np.uint8)):
        rows.append(("radix tree", "", s * PAGE_SIZE, e * PAGE_SIZE, 0))
    if free:
        blocks = list(for_each_free_block(prog))
        if blocks:
            arr = np.array(blocks, dtype=np.int64)
            for s, e, order in _runs(arr[:, 0], arr[:, 1].astype(np.uint8)):
                rows.append(("free", f"order {order}", s * PAGE_SIZE, e * PAGE_SIZE, order))
    df = pd.DataFrame(rows, columns=["kind", "detail", "start", "end", "order"])
    df["size"] = df["end"] - df["start"]
    return df.astype({"start": "uint64", "end": "uint64", "size": "uint64", "order": "int8"})


# -- summaries ---------------------------------------------------------------------------------------------------
def kho_facts(prog: drgn.Program) -> dict:
    """The KHO state as a JSON-ready dict (what :func:`kho_summary` tabulates).

    :param prog: kernel program
    """
    enabled = kho_enabled(prog)
    facts: dict = {"enabled": enabled, "finalized": kho_finalized(prog)}
    fdt = kho_out_fdt(prog) if enabled else None
    if fdt is not None:
        facts |= {
            "out_fdt_phys": fdt.phys,
            "out_fdt_size": fdt.totalsize,
            "out_compatible": ",".join(fdt.compatible),
            "out_memory_map_phys": fdt.memory_map_phys,
            "out_subtrees": {s.name: {"phys": s.phys, "size": s.size} for s in fdt.subtrees},
        }
        folios = preserved_folios(prog)
        nodes = list(for_each_radix_node(kho_radix_root(prog)))
        orders = folios["order"].to_numpy().astype(np.int64)
        facts |= {
            "preserved_folios": int(len(folios)),
            "preserved_pages": int((1 << orders).sum()) if orders.size else 0,
            "preserved_bytes": int((1 << orders).sum()) * PAGE_SIZE if orders.size else 0,
            "preserved_by_order": {int(o): int(c) for o, c in zip(*np.unique(orders, return_counts=True), strict=True)},
            "radix_nodes": len(nodes),
            "radix_leaves": sum(1 for level, _p, _k in nodes if level == 0),
        }
        meta = kexec_metadata(prog)
        if meta is not None:
            facts |= {"out_release": meta.previous_release, "out_kexec_count": meta.kexec_count}
    scratch = scratch_areas(prog)
    facts |= {
        "scratch_areas": int(len(scratch)),
        "scratch_bytes": int(scratch["size"].sum()) if len(scratch) else 0,
        "scratch": [
            {"kind": r.kind, "addr": int(r.addr), "size": int(r.size)} for r in scratch.itertuples(index=False)
        ],
    }
    incoming = kho_incoming(prog)
    facts |= {
        "kexec_boot": incoming.is_kexec_boot,
        "in_fdt_phys": incoming.fdt_phys,
        "in_scratch_phys": incoming.scratch_phys,
        "previous_release": incoming.previous_release,
        "kexec_count": incoming.kexec_count,
    }
    if incoming.fdt is not None:
        facts["in_subtrees"] = {s.name: {"phys": s.phys, "size": s.size} for s in incoming.fdt.subtrees}
    return facts


def kho_summary(prog: drgn.Program) -> pd.DataFrame:
    """KHO at a glance, one fact per row: ``field``, ``value`` (text).

    :param prog: kernel program
    """
    facts = kho_facts(prog)
    rows = []
    for key, value in facts.items():
        if key == "scratch":
            for s in value:
                rows.append((f"scratch {s['kind']}", f"{s['addr']:#x} + {s['size'] >> 20} MiB"))
        elif key.endswith("subtrees"):
            for name, sub in value.items():
                rows.append((f"{key[:-1]} {name}", f"{sub['phys']:#x} ({sub['size']} bytes)"))
        elif isinstance(value, int) and not isinstance(value, bool) and (key.endswith("phys")):
            rows.append((key, f"{value:#x}"))
        else:
            rows.append((key, str(value)))
    return pd.DataFrame(rows, columns=["field", "value"])
