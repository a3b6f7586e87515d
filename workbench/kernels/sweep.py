"""Blackout-model sweeps larger than one machine, on Dask distributed.

The configuration arrays are cut into chunks; each worker evaluates its chunks with the same numba kernel as the
single-process :func:`workbench.kernels.blackout.model.evaluate`, and the results are put back in order. Each
configuration is computed independently of the others by the same compiled code, so the result is bitwise equal
to the single-process run (checked by :func:`bitwise_equal`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from workbench.cluster import LOCAL, dask_client, worker_count
from workbench.kernels.blackout.model import Configs, Evaluation, ModelParams, blackout_mask, evaluate_packed

__all__ = ["sweep", "bitwise_equal", "chunk_bounds", "LOCAL"]


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive chunks of at most ``chunk_size`` covering ``0..n``."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def _evaluate_chunk(arrays: tuple[np.ndarray, ...], packed: tuple[np.ndarray, ...]) -> Evaluation:
    return evaluate_packed(arrays, *packed)


def sweep(
    configs: Configs,
    params: ModelParams,
    scheduler: Any = None,
    *,
    n_workers: int = 2,
    chunk_size: int | None = None,
    mask: np.ndarray | None = None,
) -> Evaluation:
    """Evaluates ``configs`` on a Dask cluster and returns the same :class:`Evaluation` as
    :func:`~workbench.kernels.blackout.model.evaluate` would.

    ``scheduler``: ``None`` or ``"local"`` starts a local cluster of ``n_workers`` worker processes (one thread
    each) for this call and closes it afterwards; a string is the address of a running scheduler
    (``tcp://host:8786``); a :class:`distributed.Client` is used as it is. ``chunk_size`` defaults to four chunks
    per worker."""
    packed = (*params.pack(), blackout_mask() if mask is None else np.asarray(mask, dtype=np.uint8))
    with dask_client(scheduler, n_workers) as client:
        workers = worker_count(client)
        size = chunk_size or max(1, math.ceil(len(configs) / (4 * workers)))
        # hash=False: a key of our own; a content-hash key may be the one a just-closed client's scatter is
        # still releasing on the same scheduler (seen as "lost dependencies" on back-to-back sweeps)
        packed_future = client.scatter(packed, broadcast=True, hash=False)
        futures = [
            client.submit(_evaluate_chunk, configs.slice(start, stop).arrays(), packed_future, pure=False)
            for start, stop in chunk_bounds(len(configs), size)
        ]
        parts = client.gather(futures)
    if not parts:
        return Evaluation(np.empty((0, packed[-1].shape[1])), np.empty(0))
    return Evaluation(
        np.concatenate([part.phase_seconds for part in parts]), np.concatenate([part.blackout_s for part in parts])
    )


def bitwise_equal(a: Evaluation, b: Evaluation) -> bool:
    """Whether two evaluations hold the same bits (NaNs included), not merely close values."""
    return all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x.view(np.uint64), y.view(np.uint64))
        for x, y in ((a.phase_seconds, b.phase_seconds), (a.blackout_s, b.blackout_s))
    )
