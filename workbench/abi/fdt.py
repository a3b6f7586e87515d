"""The KHO FDT (Linux 7.2, ``compatible = "kho-v4"``): the root table of a kexec handover.

The root node has ``compatible`` and ``preserved-memory-map`` (the physical address of the radix tree root); each
producer adds one sub-node holding ``preserved-data`` (the physical address of its blob) and ``blob-size``. The
three u64 properties are stored in the CPU's byte order (little-endian on x86), not as big-endian FDT cells.

The kernel keeps the FDT in one preserved page and rewrites it (``fdt_open_into`` + ``fdt_pack``) each time a
sub-node is added, so in memory it is always complete and packed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import libfdt
import numpy as np

from workbench.abi.errors import (
    AbiError,
    AmbiguousHandover,
    HandoverNotFound,
    IncompatibleFormat,
    MalformedData,
    TruncatedData,
)
from workbench.abi.physmem import PAGE_SIZE, PhysicalMemory

__all__ = [
    "FDT_MAGIC",
    "FDT_HEADER_SIZE",
    "MAX_FDT_DEPTH",
    "KHO_FDT_COMPATIBLE",
    "MEMORY_MAP_PROP",
    "SUBTREE_DATA_PROP",
    "SUBTREE_SIZE_PROP",
    "FdtNode",
    "KhoSubtree",
    "KhoFdt",
    "parse_fdt",
    "fdt_node_name",
    "fdt_node_properties",
    "decode_kho_fdt",
    "read_fdt_blob",
    "read_kho_fdt",
    "find_kho_fdts",
    "find_kho_fdt",
    "encode_kho_fdt",
]

FDT_MAGIC = 0xD00DFEED
FDT_HEADER_SIZE = 40
KHO_FDT_COMPATIBLE = "kho-v4"  # KHO_FDT_COMPATIBLE
MEMORY_MAP_PROP = "preserved-memory-map"  # KHO_FDT_MEMORY_MAP_PROP_NAME
SUBTREE_DATA_PROP = "preserved-data"  # KHO_SUB_TREE_PROP_NAME
SUBTREE_SIZE_PROP = "blob-size"  # KHO_SUB_TREE_SIZE_PROP_NAME
MAX_FDT_SIZE = 1 << 20  # far above the one page the kernel gives the KHO FDT; bounds a read of garbage
MAX_FDT_DEPTH = 64  # the KHO FDT has two levels; deeper nesting is garbage (and libfdt's walk grows with depth)


def _at(phys: int | None) -> str:
    return f" at {phys:#x}" if phys is not None else ""


@dataclass
class FdtNode:
    """One node of a flattened device tree: its properties (raw bytes) and children, in blob order."""

    name: str
    path: str
    properties: dict[str, bytes] = field(default_factory=dict)
    children: list[FdtNode] = field(default_factory=list)

    def child(self, name: str) -> FdtNode | None:
        return next((c for c in self.children if c.name == name), None)

    def strings(self, name: str) -> list[str]:
        """A string-list property (``compatible``), empty if absent."""
        value = self.properties.get(name)
        if not value:
            return []
        return [s.decode("utf-8", "replace") for s in value.rstrip(b"\0").split(b"\0")]


@dataclass
class KhoSubtree:
    """A producer's sub-node of the KHO FDT (``kho_add_subtree``): where its blob is and how long it is."""

    name: str
    data_phys: int
    blob_size: int


@dataclass
class KhoFdt:
    """The decoded KHO root FDT."""

    phys: int | None
    totalsize: int
    compatible: list[str]
    memory_map_phys: int
    subtrees: list[KhoSubtree]
    root: FdtNode
    blob: bytes

    def subtree(self, name: str) -> KhoSubtree | None:
        return next((s for s in self.subtrees if s.name == name), None)


def _libfdt_error(exc: libfdt.FdtException, phys: int | None) -> AbiError:
    where = f"FDT{_at(phys)}"
    if exc.err == -libfdt.BADMAGIC:
        return IncompatibleFormat(f"{where} has a bad magic number", phys)
    if exc.err == -libfdt.TRUNCATED:
        return TruncatedData(f"{where} is truncated: {exc}", phys)
    if exc.err == -libfdt.BADVERSION:
        return IncompatibleFormat(f"{where} has an unsupported version: {exc}", phys)
    return MalformedData(f"{where} is malformed: {exc}", phys)


def _check_header(blob: bytes, phys: int | None) -> int:
    if len(blob) < FDT_HEADER_SIZE:
        raise TruncatedData(f"FDT{_at(phys)}: {len(blob)} bytes is less than the {FDT_HEADER_SIZE}-byte header", phys)
    magic, totalsize = struct.unpack_from(">II", blob)
    if magic != FDT_MAGIC:
        raise IncompatibleFormat(f"FDT{_at(phys)}: magic {magic:#010x} is not {FDT_MAGIC:#010x}", phys)
    if totalsize > len(blob):
        raise TruncatedData(f"FDT{_at(phys)}: the header says {totalsize} bytes but only {len(blob)} are present", phys)
    return totalsize


def parse_fdt(blob: bytes, phys: int | None = None) -> FdtNode:
    """The whole tree of an FDT blob; errors name ``phys`` when given. Nodes nested more than
    ``MAX_FDT_DEPTH`` levels deep are :class:`MalformedData`."""
    _check_header(blob, phys)
    try:
        return _tree(libfdt.Fdt(bytes(blob)), phys)
    except libfdt.FdtException as exc:
        raise _libfdt_error(exc, phys) from exc


def _tree(fdt: libfdt.Fdt, phys: int | None) -> FdtNode:
    root = FdtNode(name="", path="/")
    pending = [(0, root, 1)]  # (offset, node, depth): walked without recursion, whatever the nesting
    while pending:
        offset, node, depth = pending.pop()
        node.properties = fdt_node_properties(fdt, offset, phys)
        child = fdt.first_subnode(offset, quiet=(libfdt.NOTFOUND,))
        if child >= 0 and depth == MAX_FDT_DEPTH:
            raise MalformedData(f"FDT{_at(phys)}: nodes are nested deeper than {MAX_FDT_DEPTH} levels", phys)
        while child >= 0:
            name = fdt_node_name(fdt, child, phys)
            sub = FdtNode(name=name, path=node.path.rstrip("/") + "/" + name)
            node.children.append(sub)
            pending.append((child, sub, depth + 1))
            child = fdt.next_subnode(child, quiet=(libfdt.NOTFOUND,))
    return root


# pylibfdt's own name getters crash the interpreter on a name offset outside the strings block and fail with a
# SystemError on one that is not UTF-8: names are read from the blob here, at offsets libfdt has walked to.
def _blocks(fdt: libfdt.Fdt, phys: int | None) -> tuple[bytearray, int, int, int, int]:
    blob = fdt.as_bytearray()
    off_struct, off_strings, _rsvmap, version = struct.unpack_from(">IIII", blob, 8)
    size_strings, size_struct = struct.unpack_from(">II", blob, 32)
    if version < 16:
        raise IncompatibleFormat(f"FDT{_at(phys)}: version {version} is older than 16", phys)
    struct_end = off_struct + size_struct if version >= 17 else fdt.totalsize()  # version 16 has no block size
    return blob, off_struct, struct_end, off_strings, off_strings + size_strings


def _c_name(blob: bytearray, start: int, end: int, what: str, phys: int | None) -> str:
    stop = blob.find(b"\0", start, end) if 0 <= start < end else -1
    if stop < 0:
        raise MalformedData(f"FDT{_at(phys)}: {what} at {start:#x} does not end inside its block", phys)
    return blob[start:stop].decode("utf-8", "replace")


def fdt_node_name(fdt: libfdt.Fdt, offset: int, phys: int | None = None) -> str:
    """The name of the node at structure offset ``offset`` (from libfdt's walk); undecodable bytes replaced.

    :param fdt: the checked FDT
    :param offset: the node's offset, as libfdt returns it
    :param phys: where the FDT is, for error messages
    """
    blob, off_struct, struct_end, _strings, _strings_end = _blocks(fdt, phys)
    return _c_name(blob, off_struct + offset + 4, struct_end, "a node name", phys)


def fdt_node_properties(fdt: libfdt.Fdt, offset: int, phys: int | None = None) -> dict[str, bytes]:
    """The properties of the node at structure offset ``offset``, in blob order, as ``{name: value}``.

    :param fdt: the checked FDT
    :param offset: the node's offset, as libfdt returns it
    :param phys: where the FDT is, for error messages
    :raises MalformedData: a property's name or value lies outside its block
    """
    blob, off_struct, struct_end, off_strings, strings_end = _blocks(fdt, phys)
    properties = {}
    prop = fdt.first_property_offset(offset, quiet=(libfdt.NOTFOUND,))
    while prop >= 0:
        _tag, length, name_offset = struct.unpack_from(">III", blob, off_struct + prop)
        value_start = off_struct + prop + 12
        if value_start + length > struct_end:
            raise MalformedData(f"FDT{_at(phys)}: the property at {prop:#x} runs past the structure block", phys)
        name = _c_name(blob, off_strings + name_offset, strings_end, "a property name", phys)
        properties[name] = bytes(blob[value_start : value_start + length])
        prop = fdt.next_property_offset(prop, quiet=(libfdt.NOTFOUND,))
    return properties


def _u64_prop(node: FdtNode, name: str, phys: int | None) -> int:
    value = node.properties.get(name)
    if value is None:
        raise MalformedData(f"KHO FDT{_at(phys)}: node {node.path} has no {name!r} property", phys)
    if len(value) != 8:
        raise MalformedData(f"KHO FDT{_at(phys)}: {node.path}:{name} is {len(value)} bytes, not one 8-byte u64", phys)
    return struct.unpack("<Q", value)[0]


def decode_kho_fdt(blob: bytes, phys: int | None = None) -> KhoFdt:
    """Checks and decodes a KHO FDT blob (the whole of it: ``totalsize`` bytes or more)."""
    totalsize = _check_header(blob, phys)
    root = parse_fdt(blob, phys)
    compatible = root.strings("compatible")
    if KHO_FDT_COMPATIBLE not in compatible:
        raise IncompatibleFormat(
            f"FDT{_at(phys)}: root compatible {compatible or 'missing'} is not {KHO_FDT_COMPATIBLE!r}", phys
        )
    memory_map = _u64_prop(root, MEMORY_MAP_PROP, phys)
    subtrees = [
        KhoSubtree(child.name, _u64_prop(child, SUBTREE_DATA_PROP, phys), _u64_prop(child, SUBTREE_SIZE_PROP, phys))
        for child in root.children
    ]
    return KhoFdt(phys, totalsize, compatible, memory_map, subtrees, root, bytes(blob[:totalsize]))


def read_fdt_blob(mem: PhysicalMemory, phys: int, max_size: int = MAX_FDT_SIZE) -> bytes:
    """The ``totalsize`` bytes of the FDT whose header is at ``phys``."""
    header = mem.read(phys, FDT_HEADER_SIZE)
    magic, totalsize = struct.unpack_from(">II", header)
    if magic != FDT_MAGIC:
        raise IncompatibleFormat(f"no FDT at {phys:#x}: magic {magic:#010x} is not {FDT_MAGIC:#010x}", phys)
    if not FDT_HEADER_SIZE <= totalsize <= max_size:
        raise MalformedData(f"FDT at {phys:#x} claims an implausible total size of {totalsize} bytes", phys)
    if not mem.contains(phys, totalsize):
        raise TruncatedData(f"FDT at {phys:#x} claims {totalsize} bytes, which run past the end of memory", phys)
    return mem.read(phys, totalsize)


def read_kho_fdt(mem: PhysicalMemory, phys: int) -> KhoFdt:
    """The KHO FDT at physical address ``phys``."""
    return decode_kho_fdt(read_fdt_blob(mem, phys), phys)


def find_kho_fdts(mem: PhysicalMemory, step: int = PAGE_SIZE, chunk_bytes: int = 64 << 20) -> list[int]:
    """Physical addresses (multiples of ``step``) holding a valid KHO FDT, in ascending order.

    The kernel allocates the FDT as one whole page, so only page starts are looked at, and an FDT magic found
    there is decoded (and kept if its root is ``kho-v4``) only if its ``totalsize`` fits in a page: a garbage
    header claiming more would otherwise have every candidate read up to 1 MiB.
    """
    magic = np.array(FDT_MAGIC, dtype=">u4")
    found = []
    chunk_bytes = max(step, chunk_bytes - chunk_bytes % step)
    for r in mem.ranges:
        start = -(-r.phys_start // step) * step
        while start + FDT_HEADER_SIZE <= r.phys_end:
            pages = min(chunk_bytes, r.phys_end - start) // step
            if pages == 0:
                break
            words = np.frombuffer(mem.view(start, pages * step), dtype=">u4").reshape(pages, step // 4)[:, 0]
            for page in np.flatnonzero(words == magic).tolist():
                phys = start + page * step
                try:
                    decode_kho_fdt(read_fdt_blob(mem, phys, PAGE_SIZE), phys)
                except AbiError:
                    continue
                found.append(phys)
            start += pages * step
    return found


def find_kho_fdt(mem: PhysicalMemory) -> int:
    """The address of the only KHO FDT in ``mem``; :class:`HandoverNotFound` or :class:`AmbiguousHandover`."""
    found = find_kho_fdts(mem)
    if not found:
        raise HandoverNotFound(f"no kho-v4 FDT at any page start of {len(mem.ranges)} memory range(s)")
    if len(found) > 1:
        raise AmbiguousHandover(
            f"{len(found)} kho-v4 FDTs found ({', '.join(f'{p:#x}' for p in found)}): pass the one to decode",
            found,
        )
    return found[0]


def encode_kho_fdt(memory_map_phys: int, subtrees: Sequence[tuple[str, int, int]] = ()) -> bytes:
    """The bytes the kernel's ``kho_out_fdt_setup`` then one ``kho_add_subtree(name, phys, size)`` per entry
    produce (same libfdt calls, same order)."""
    sw = libfdt.FdtSw(PAGE_SIZE)
    sw.finish_reservemap()
    sw.begin_node("")
    sw.property_string("compatible", KHO_FDT_COMPATIBLE)
    sw.property(MEMORY_MAP_PROP, struct.pack("<Q", memory_map_phys))
    sw.end_node()
    fdt = sw.as_fdt()
    for name, data_phys, blob_size in subtrees:
        fdt.resize(PAGE_SIZE)
        offset = fdt.add_subnode(0, name)
        fdt.setprop(offset, SUBTREE_DATA_PROP, struct.pack("<Q", data_phys))
        fdt.setprop(offset, SUBTREE_SIZE_PROP, struct.pack("<Q", blob_size))
        fdt.pack()
    data = bytes(fdt.as_bytearray())
    return data[: struct.unpack_from(">I", data, 4)[0]]
