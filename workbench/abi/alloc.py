"""A bump allocator of zeroed pages inside a :class:`~workbench.abi.physmem.BufferMemory`, for the encoders.

The kernel takes handover pages from its page allocator; where they land does not change the format, only the
pointers. The encoders take theirs from here, in order, so a layout is reproducible.
"""

from __future__ import annotations

from workbench.abi.physmem import PAGE_SIZE, BufferMemory

__all__ = ["PageAllocator", "OutOfPages"]


class OutOfPages(MemoryError):
    """The allocator's physical area is used up."""


class PageAllocator:
    """Hands out zeroed, naturally aligned blocks of pages from ``[start, end)`` of ``memory``."""

    def __init__(self, memory: BufferMemory, start: int | None = None, end: int | None = None):
        (r,) = memory.ranges
        self.memory = memory
        self.start = r.phys_start if start is None else start
        self.end = r.phys_end if end is None else end
        if self.start % PAGE_SIZE or self.end % PAGE_SIZE or not r.phys_start <= self.start <= self.end <= r.phys_end:
            raise ValueError(f"area [{self.start:#x}, {self.end:#x}) is not page aligned inside the memory's range {r}")
        self.next = self.start
        self.allocated: list[tuple[int, int]] = []  # (phys, number of pages)

    def alloc(self, order: int = 0) -> int:
        """The physical address of ``2**order`` fresh zeroed pages, aligned to their size (like a folio)."""
        size = PAGE_SIZE << order
        phys = -(-self.next // size) * size
        if phys + size > self.end:
            raise OutOfPages(
                f"no room for {size} bytes at {phys:#x}: the area ends at {self.end:#x} "
                f"({len(self.allocated)} blocks allocated)"
            )
        self.next = phys + size
        self.memory.array[phys - self.memory.base : phys - self.memory.base + size] = 0
        self.allocated.append((phys, 1 << order))
        return phys

    def alloc_run(self, npages: int) -> int:
        """The physical address of ``npages`` consecutive zeroed pages (page aligned only)."""
        phys = self.next
        if npages < 0 or phys + npages * PAGE_SIZE > self.end:
            raise OutOfPages(f"no room for {npages} pages at {phys:#x}: the area ends at {self.end:#x}")
        self.next = phys + npages * PAGE_SIZE
        self.memory.array[phys - self.memory.base : self.next - self.memory.base] = 0
        self.allocated.append((phys, npages))
        return phys

    def alloc_for(self, nbytes: int) -> int:
        """Like the kernel's ``kho_alloc_preserve(nbytes)``: the smallest power-of-two number of pages."""
        order = max(0, (max(nbytes, 1) - 1) // PAGE_SIZE).bit_length()
        return self.alloc(order)

    @property
    def used_bytes(self) -> int:
        return self.next - self.start
