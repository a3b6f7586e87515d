"""A drgn program over a synthetic memory buffer, for testing the helpers without a kernel.

The buffer's physical address ``p`` is visible at virtual ``DIRECT_MAP + p``, as through the kernel's direct
map, and the program knows just the types a test declares."""

from __future__ import annotations

import drgn

from workbench.abi.physmem import BufferMemory

DIRECT_MAP = 0xFFFF888000000000


def program_over(memory: BufferMemory) -> drgn.Program:
    prog = drgn.Program(
        drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
    )
    base = memory.base

    def read(address: int, count: int, offset: int, physical: bool) -> bytes:
        return memory.read(base + offset, count)

    prog.add_memory_segment(DIRECT_MAP + base, memory.size, read)
    prog.cache["workbench.inspect.direct_map"] = DIRECT_MAP
    return prog


def radix_root(prog: drgn.Program, root_phys: int) -> drgn.Object:
    """A ``struct kho_radix_node *`` pointing at ``root_phys`` through the direct map."""
    u64 = prog.int_type("u64", 8, False)
    node = prog.struct_type("kho_radix_node", 4096, (drgn.TypeMember(prog.array_type(u64, 512), "table", 0),))
    return drgn.Object(prog, prog.pointer_type(node), value=DIRECT_MAP + root_phys)
