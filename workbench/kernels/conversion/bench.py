"""The conversion benchmark: every strategy at every size, copier, thread count and pipe size, each result
verified page by page against its source's fingerprints (:func:`verify_memfd`), so that a strategy that loses,
misplaces or corrupts a page is reported as unverified, with the page; one row per case (:data:`COLUMNS`), beside
the machine's limits measured in the same run."""

from __future__ import annotations

import math
import mmap
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numba
import numpy as np
import pandas as pd

from workbench.kernels.conversion.limits import measure_limits
from workbench.kernels.conversion.sources import RemoteSource, Source, make_source
from workbench.kernels.conversion.strategies import DEFAULT_PIPE_SIZES, STRATEGIES, Converted, Options, Strategy
from workbench.kernels.pagehash import PAGE_SIZE, diff_pages, page_hashes

__all__ = [
    "COLUMNS",
    "LIMITS_MAX_SIZE",
    "check_arguments",
    "default_thread_counts",
    "measure_strategy",
    "run_conversion",
    "verify_memfd",
]

LIMITS_MAX_SIZE = 1 << 30
"""The limits are measured on at most this many bytes (the memcpy needs two buffers of that size)."""

COLUMNS = [
    "strategy",
    "copier",
    "size",
    "threads",
    "pipe_size",
    "pipe_size_obtained",
    "repeats",
    "seconds",
    "alloc_s",
    "copy_s",
    "bytes_per_s",
    "ratio_to_memcpy",
    "verified",
    "mismatched_pages",
    "first_mismatched_page",
    "huge_bytes",
    "available",
    "reason",
]
"""The columns of the rows of :func:`measure_strategy` and :func:`run_conversion`, in order."""


def verify_memfd(fd: int, expected: np.ndarray) -> np.ndarray:
    """Indexes of the memfd's pages whose fingerprints differ from ``expected`` (empty when all match; pages
    missing or extra on either side count as differing)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return diff_pages(expected, np.empty(0, dtype=np.uint64))
    mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    try:
        return diff_pages(expected, page_hashes(mem))
    finally:
        mem.close()


def _row(strategy: str, size: int, options: Options, repeats: int, **values) -> dict:
    row = dict.fromkeys(COLUMNS, math.nan)
    row.update(
        strategy=strategy,
        copier=options.copier,
        size=size,
        threads=options.threads,
        pipe_size=options.pipe_size,
        pipe_size_obtained=0,
        repeats=repeats,
        verified=False,
        mismatched_pages=0,
        first_mismatched_page=-1,
        available=True,
        reason="",
    )
    row.update(values)
    return row


def measure_strategy(
    name: str,
    source: Source,
    options: Options,
    repeats: int = 3,
    tamper: Callable[[int], None] | None = None,
) -> dict:
    """Runs strategy ``name`` ``repeats`` times on ``source``, verifying every result; returns one row (see
    :data:`COLUMNS`) with the fastest repeat's times. ``tamper(fd)``, if given, runs on each memfd before it is
    verified (to check that verification catches damage). A failing system call gives an unverified row whose
    ``reason`` holds the error."""
    runs: list[tuple[Converted, np.ndarray]] = []
    try:
        for _ in range(repeats):
            converted = STRATEGIES[name].convert(source, options)
            try:
                if tamper is not None:
                    tamper(converted.fd)
                runs.append((converted, verify_memfd(converted.fd, source.hashes)))
            finally:
                os.close(converted.fd)
    except OSError as exc:
        return _row(name, source.size, options, repeats, reason=f"failed: {exc}")
    best = min((converted for converted, _ in runs), key=lambda converted: converted.seconds)
    mismatched = max((bad for _, bad in runs), key=len)
    return _row(
        name,
        source.size,
        options,
        repeats,
        seconds=best.seconds,
        alloc_s=best.alloc_s,
        copy_s=best.copy_s,
        bytes_per_s=source.size / best.seconds if best.seconds > 0 else math.inf,
        pipe_size_obtained=best.pipe_size_obtained,
        huge_bytes=best.huge_bytes,
        verified=all(len(bad) == 0 for _, bad in runs),
        mismatched_pages=len(mismatched),
        first_mismatched_page=int(mismatched[0]) if len(mismatched) else -1,
    )


def _option_grid(strategy: Strategy, threads: Sequence[int], pipe_sizes: Sequence[int]) -> Iterator[Options]:
    for copier in strategy.copiers:
        copier_threads = threads if copier == "numba" or (copier == "kernel" and strategy.parallel) else (1,)
        for thread_count in dict.fromkeys(copier_threads):
            for pipe_size in pipe_sizes if strategy.uses_pipe else (0,):
                yield Options(copier, thread_count, pipe_size)


@contextmanager
def _source_for(strategy: Strategy, size: int) -> Iterator[Source]:
    source = RemoteSource.start(size) if strategy.remote else make_source(size)
    try:
        yield source
    finally:
        source.close()


def check_arguments(sizes: Sequence[int], threads: Sequence[int], names: Sequence[str], repeats: int) -> None:
    """Raises ``ValueError`` naming the first kind of bad argument to :func:`run_conversion`."""
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}: choose from {', '.join(STRATEGIES)}")
    bad_sizes = [size for size in sizes if size <= 0 or size % PAGE_SIZE]
    if bad_sizes:
        raise ValueError(f"sizes {bad_sizes} are not positive multiples of {PAGE_SIZE}")
    limit = numba.config.NUMBA_NUM_THREADS
    if not threads or any(not 1 <= count <= limit for count in threads):
        raise ValueError(f"thread counts {list(threads)} must be between 1 and {limit} (NUMBA_NUM_THREADS)")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")


def default_thread_counts() -> list[int]:
    """One thread, and as many as this process may run on (at most ``NUMBA_NUM_THREADS``)."""
    return list(dict.fromkeys((1, min(len(os.sched_getaffinity(0)), numba.config.NUMBA_NUM_THREADS))))


def run_conversion(
    sizes: Sequence[int],
    threads: Sequence[int],
    strategies: Sequence[str] | None = None,
    repeats: int = 3,
    pipe_sizes: Sequence[int] = DEFAULT_PIPE_SIZES,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Measures every strategy (default: all of :data:`STRATEGIES`) at every size, copier, thread count and
    (for the pipe strategies) pipe size; returns one row per combination (see :data:`COLUMNS`) and the limits
    from :func:`measure_limits`, measured first on ``min(max(sizes), LIMITS_MAX_SIZE)`` bytes.

    Each strategy gets a source of its own, freed (with its memfds) before the next one starts, so the peak is
    about twice the size. A strategy the kernel cannot run here gives rows with ``available`` false and the
    ``reason``. ``progress`` shows a bar on stderr when the run takes more than a few seconds.
    """
    from tqdm import tqdm

    names = list(dict.fromkeys(strategies or STRATEGIES))
    check_arguments(sizes, threads, names, repeats)
    limits = measure_limits(min(max(sizes), LIMITS_MAX_SIZE), repeats, max(threads))
    plan = [(size, name, list(_option_grid(STRATEGIES[name], threads, pipe_sizes))) for size in sizes for name in names]
    rows = []
    with tqdm(
        total=sum(len(grid) for *_, grid in plan), disable=not progress, file=sys.stderr, delay=3, unit="case"
    ) as bar:
        for size, name, grid in plan:
            strategy = STRATEGIES[name]
            bar.set_description(f"{name} {size >> 20} MiB")
            reason = strategy.unavailable(size)
            if reason:
                rows += [_row(name, size, options, repeats, available=False, reason=reason) for options in grid]
                bar.update(len(grid))
                continue
            with _source_for(strategy, size) as source:
                for options in grid:
                    rows.append(measure_strategy(name, source, options, repeats))
                    bar.update()
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["ratio_to_memcpy"] = frame["bytes_per_s"] / limits["memcpy_bytes_per_s"]
    return frame, limits
