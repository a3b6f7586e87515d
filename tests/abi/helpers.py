"""Builders shared by the ABI tests: memory areas and sets of folios."""

from __future__ import annotations

import numpy as np

from workbench.abi.alloc import PageAllocator
from workbench.abi.physmem import PAGE_SIZE, BufferMemory

BASE = 0x1_0000_0000  # above 4 GiB, as most guest RAM is


def area(pages: int = 1024, base: int = BASE) -> tuple[BufferMemory, PageAllocator]:
    memory = BufferMemory(pages * PAGE_SIZE, base=base)
    return memory, PageAllocator(memory)


def random_folios(seed: int, count: int = 3000, orders=(0, 0, 0, 1, 4, 9, 10)) -> tuple[np.ndarray, np.ndarray]:
    """Distinct, aligned folios of mixed orders spread over 2**40 pages (sparse) and one dense 2**20 range."""
    rng = np.random.default_rng(seed)
    chosen_orders = rng.choice(np.array(orders, dtype=np.uint8), size=count)
    spread = np.where(rng.random(count) < 0.5, 1 << 20, 1 << 40)
    pfns = (rng.integers(0, spread, dtype=np.uint64) >> chosen_orders.astype(np.uint64)) << chosen_orders.astype(
        np.uint64
    )
    pairs = sorted(set(zip(pfns.tolist(), chosen_orders.tolist(), strict=True)))
    return np.array([p for p, _ in pairs], dtype=np.uint64), np.array([o for _, o in pairs], dtype=np.uint8)


def as_set(pfns, orders) -> set[tuple[int, int]]:
    return set(zip(np.asarray(pfns).tolist(), np.asarray(orders).tolist(), strict=True))
