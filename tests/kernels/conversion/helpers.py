"""Sizes and thread counts shared by the conversion tests, and a way to damage a memfd."""

import os
from collections.abc import Callable

import numba

from workbench.kernels.pagehash import PAGE_SIZE

SIZE = 8 << 20
THREADS = sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})


def overwrite_page(page: int) -> Callable[[int], None]:
    """A ``tamper(fd)`` that flips one bit in page ``page`` of the memfd ``fd``."""

    def tamper(fd: int) -> None:
        original = os.pread(fd, PAGE_SIZE, page * PAGE_SIZE)
        os.pwrite(fd, bytes([original[100] ^ 0x10]), page * PAGE_SIZE + 100)

    return tamper
