"""KHO serialization blocks (Linux 7.2 ``include/linux/kho/abi/block.h``): page-sized blocks, each a
``struct kho_block_header_ser`` (``next`` physical address, entry ``count``) followed by packed fixed-size entries.

LUO keeps its sessions and each session's files in such lists. The decoder applies the checks of
``kho_block_set_restore`` (no cycle, at most 10000 blocks, 1 <= count <= entries per block) and also checks that
every block is a page inside memory and, given the blocks of the structure's other lists, that no block belongs to
two lists (the kernel allocates each list's blocks itself; shared blocks would make a decoder read them once per
list).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from workbench.abi.alloc import PageAllocator
from workbench.abi.errors import AddressNotInMemory, LoopDetected, MalformedData
from workbench.abi.physmem import PAGE_SIZE, PhysicalMemory

__all__ = [
    "KHO_BLOCK_SIZE",
    "BLOCK_HEADER_SIZE",
    "KHO_MAX_BLOCKS",
    "entries_per_block",
    "Block",
    "BlockList",
    "read_block_list",
    "encode_block_list",
]

KHO_BLOCK_SIZE = PAGE_SIZE
_HEADER = struct.Struct("<QQ")  # struct kho_block_header_ser
BLOCK_HEADER_SIZE = _HEADER.size
KHO_MAX_BLOCKS = 10000  # the kernel's safeguard against corrupted lists


def entries_per_block(entry_size: int) -> int:
    """``count_per_block`` of a block set with this entry size."""
    if entry_size <= 0:
        raise ValueError(f"entry size {entry_size} is not positive")
    return (KHO_BLOCK_SIZE - BLOCK_HEADER_SIZE) // entry_size


@dataclass
class Block:
    """One ``struct kho_block_header_ser`` and the entries after it."""

    phys: int
    next: int
    count: int
    entries: list[bytes]


@dataclass
class BlockList:
    """A decoded block list: the blocks in list order and all their entries concatenated."""

    head_phys: int
    entry_size: int
    blocks: list[Block]

    @property
    def entries(self) -> list[bytes]:
        return [e for b in self.blocks for e in b.entries]

    @property
    def pages(self) -> list[int]:
        return [b.phys for b in self.blocks]


def read_block_list(
    mem: PhysicalMemory,
    head_phys: int,
    entry_size: int,
    what: str = "block list",
    claimed: dict[int, str] | None = None,
) -> BlockList:
    """Follows the list at ``head_phys`` (0 is the empty list).

    :param what: names the list in error messages
    :param claimed: the blocks of other lists of the same structure (page -> the list it belongs to); a block found
        there is :class:`LoopDetected`; this list's blocks are added to it
    """
    per_block = entries_per_block(entry_size)
    blocks: list[Block] = []
    seen: dict[int, int] = {}
    phys, previous = head_phys, None
    while phys:
        came_from = f"the head pointer of {what}" if previous is None else f"block {previous:#x}"
        if phys in seen:
            raise LoopDetected(
                f"{what}: {came_from} points back to block {phys:#x} (block #{seen[phys]}): the list loops", phys
            )
        if len(blocks) >= KHO_MAX_BLOCKS:
            raise MalformedData(f"{what}: more than {KHO_MAX_BLOCKS} blocks, the list is corrupted", phys)
        if phys % KHO_BLOCK_SIZE:
            raise MalformedData(f"{what}: block {phys:#x} (from {came_from}) is not page aligned", phys)
        if not mem.contains(phys, KHO_BLOCK_SIZE):
            raise AddressNotInMemory(f"{what}: block {phys:#x} (from {came_from}) is outside memory", phys)
        if claimed is not None:
            if phys in claimed:
                raise LoopDetected(
                    f"{what}: block {phys:#x} (from {came_from}) is also a block of {claimed[phys]}: "
                    "two lists share their blocks",
                    phys,
                )
            claimed[phys] = what
        seen[phys] = len(blocks)
        page = mem.read(phys, KHO_BLOCK_SIZE)
        next_phys, count = _HEADER.unpack_from(page)
        if not 1 <= count <= per_block:
            raise MalformedData(
                f"{what}: block {phys:#x} has entry count {count}; a block holds 1 to {per_block} "
                f"entries of {entry_size} bytes",
                phys,
            )
        entries = [
            page[BLOCK_HEADER_SIZE + i * entry_size : BLOCK_HEADER_SIZE + (i + 1) * entry_size] for i in range(count)
        ]
        blocks.append(Block(phys, next_phys, count, entries))
        previous, phys = phys, next_phys
    return BlockList(head_phys, entry_size, blocks)


def encode_block_list(entries: Sequence[bytes], entry_size: int, allocator: PageAllocator) -> BlockList:
    """Writes ``entries`` the way a block set grown to ``len(entries)`` and filled by
    ``kho_block_set_it_reserve_entry`` ends up: full blocks, the remainder in the last, 0 terminating the list."""
    per_block = entries_per_block(entry_size)
    for i, e in enumerate(entries):
        if len(e) != entry_size:
            raise ValueError(f"entry {i} is {len(e)} bytes, not {entry_size}")
    memory = allocator.memory
    blocks: list[Block] = []
    for first in range(0, len(entries), per_block):
        chunk = list(entries[first : first + per_block])
        phys = allocator.alloc()
        memory.write(phys + BLOCK_HEADER_SIZE, b"".join(chunk))
        if blocks:
            blocks[-1].next = phys
        blocks.append(Block(phys, 0, len(chunk), chunk))
    for b in blocks:
        memory.write(b.phys, _HEADER.pack(b.next, b.count))
    return BlockList(blocks[0].phys if blocks else 0, entry_size, blocks)
