"""Dask clusters for work that spreads over worker processes or lab machines: one way to get a client.

Used by the blackout-model sweep (:mod:`workbench.kernels.sweep`) and the qualification matrix
(:mod:`workbench.qualify`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["LOCAL", "dask_client", "worker_count"]

LOCAL = "local"
"""The ``scheduler`` value (like ``None``) that starts a :class:`distributed.LocalCluster` for one call."""


@contextmanager
def dask_client(scheduler: Any, n_workers: int) -> Iterator[Any]:
    """A Dask client: on a new local cluster of ``n_workers`` worker processes, one thread each (``scheduler``
    ``None`` or ``"local"``), connected to the scheduler at an address (``"tcp://host:8786"``), or the given
    :class:`distributed.Client` itself. Whatever this opens, it closes."""
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
    elif scheduler is None or scheduler == LOCAL:
        with (
            LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            yield client
    else:
        with Client(scheduler) as client:
            yield client


def worker_count(client: Any) -> int:
    """How many workers the scheduler of ``client`` (a :class:`distributed.Client`) has now (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))
