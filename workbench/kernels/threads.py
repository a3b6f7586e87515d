"""How many threads numba's parallel kernels use, set for a block of code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba

__all__ = ["numba_threads"]


@contextmanager
def numba_threads(threads: int) -> Iterator[None]:
    """Runs the block with numba's parallel kernels on ``threads`` threads, then restores the previous count."""
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
