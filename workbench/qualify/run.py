"""A qualification: every cell of the matrix run on Dask, and one ``qualification`` record holding them all.

The kernels are resolved (built on first use), each check's host-side files prepared and the lab initramfs built
once before any cell starts (:func:`prepare_kernels`: in this process for a local cluster, on every worker of a
remote one); then every cell is a task on the cluster (a local one by default, one worker per VM that this
machine's cores and memory allow). Each finished cell is written into the record at once, so a run that is
interrupted keeps the cells it finished.

On a remote cluster (``scheduler="tcp://…"``) each worker writes its cells' ``lab.cycle`` records into its own
machine's record store (the row keeps their ids), and a cell already running on a worker when the run is
interrupted runs to its end there."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pandas as pd

from workbench.cluster import LOCAL, dask_client, worker_count
from workbench.lab.errors import LabError
from workbench.lab.initramfs import build_initramfs
from workbench.lab.kernel import LabKernel, resolve_kernel
from workbench.lab.kernel_name import parse_kernel_name
from workbench.qualify.cell import CELL_COLUMNS, run_cell
from workbench.qualify.checks import check_class, same_version_checks
from workbench.qualify.errors import InvalidQualification, QualifyError
from workbench.qualify.matrix import Cell, plan_cells
from workbench.qualify.outcome import outcome_of_error, worst
from workbench.qualify.params import QualifyParams
from workbench.records import RecordStore, open_store

__all__ = [
    "qualify",
    "run_matrix",
    "prepare_kernels",
    "default_workers",
    "summarize",
    "pair_table",
    "cells_frame",
    "RECORD_KIND",
]

RECORD_KIND = "qualification"
#: the host memory a VM costs beyond its guest RAM (QEMU itself, TCG's translation cache)
VM_OVERHEAD_MB = 384


def default_workers(cpus_per_vm: int, guest_memory_mb: int) -> int:
    """As many VMs at once as this machine's cores (``cpus_per_vm`` each) and available memory (``guest_memory_mb``
    each, plus QEMU's own) allow, at least one."""
    by_cores = (os.cpu_count() or 1) // max(1, cpus_per_vm)
    available_mb = _available_memory_mb()
    by_memory = available_mb // (guest_memory_mb + VM_OVERHEAD_MB) if available_mb else by_cores
    return max(1, min(by_cores, by_memory))


def _available_memory_mb() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def prepare_kernels(kernel_names: list[str], check_names: list[str], progress: Any = False) -> dict[str, LabKernel]:
    """Everything the cells need on this machine, made once before any cell runs: each kernel resolved (built on
    first use), each check's host-side files (:meth:`Check.prepare`) and the lab initramfs. Runs on the
    coordinator, and on every worker of a remote cluster.

    :param kernel_names: the qualification's kernels, as :func:`~workbench.lab.kernel.resolve_kernel` takes them
    :param check_names: the qualification's checks
    :param progress: as :func:`~workbench.lab.kernel.resolve_kernel` takes it
    """
    kernels = {}
    for name in kernel_names:
        try:
            kernels[name] = resolve_kernel(name, progress=progress)
        except LabError as exc:
            raise InvalidQualification(f"kernel {name!r} cannot be used: {exc}") from exc
    for name in check_names:
        check_class(name)().prepare(kernels, progress)
    build_initramfs()
    return kernels


def _guest_memory_mb(params: QualifyParams, cells: list[Cell]) -> int:
    return max(check_class(c.check)().workload(c, params).memory_mb() for c in cells)


def qualify(
    params: QualifyParams,
    *,
    scheduler: Any = None,
    workers: int | None = None,
    store: RecordStore | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
    progress: Any = False,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Runs the qualification ``params`` and records it (kind ``qualification``, table ``cells``). Returns the
    summary (see :func:`summarize`) with ``record_id`` and ``cells`` (one row per cell, the columns of
    :data:`~workbench.qualify.cell.CELL_COLUMNS`).

    ``scheduler``: ``None``/``"local"`` for a local cluster of ``workers`` processes (default:
    :func:`default_workers`), an address (``tcp://host:8786``) or a :class:`distributed.Client`; ``on_cell(row)``
    is called as each cell finishes; once ``cancel`` is set the run ends after the next cell (the rest are dropped,
    the record keeps what finished). Raises
    :class:`InvalidQualification` before anything runs when a kernel or check cannot be used."""
    params.validate()
    for name in params.kernels:
        try:
            parse_kernel_name(name)
        except LabError as exc:
            raise InvalidQualification(f"--kernels: {exc}") from None
    cells = plan_cells(params.kernels, params.checks, same_version_checks(params.checks))
    local = scheduler is None or scheduler == LOCAL
    if local:
        prepare_kernels(params.kernels, params.checks, progress)
    guest_mb = _guest_memory_mb(params, cells)
    return run_matrix(
        params,
        cells,
        run_cell,
        scheduler=scheduler,
        workers=workers or (default_workers(params.cpus, guest_mb) if local else 1),
        store=store,
        on_cell=on_cell,
        cancel=cancel,
        facts={"guest_memory_mb": guest_mb},
    )


def run_matrix(
    params: QualifyParams,
    cells: list[Cell],
    cell_fn: Callable[[dict[str, Any], dict[str, Any], str | None], dict[str, Any]],
    *,
    scheduler: Any = None,
    workers: int = 1,
    store: RecordStore | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
    cancel: threading.Event | None = None,
    facts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs ``cell_fn(cell, params, data_dir)`` for every cell on the Dask cluster ``scheduler`` (see
    :func:`qualify`) inside one ``qualification`` record, writing each row into it as it arrives (in the cells'
    order); ``facts`` go into the record's result first. Returns the summary with ``record_id`` and ``cells``."""
    store = store or open_store()
    cancel = cancel or threading.Event()
    local = scheduler is None or scheduler == LOCAL
    record_params = {**params.as_dict(), "scheduler": LOCAL if local else str(scheduler)}
    rows: list[dict[str, Any]] = []
    order = {(c.source, c.target, c.check): i for i, c in enumerate(cells)}
    started = time.monotonic()
    with store.run(RECORD_KIND, record_params) as run:
        run.update_result(cells_planned=len(cells), cells_done=0, complete=False, qualified=False, **(facts or {}))
        with _connected(scheduler, max(1, min(workers, len(cells)))) as client:
            from distributed import as_completed

            n_workers = worker_count(client)
            if not local:  # other machines: each worker prepares its own kernels, selftests and initramfs first
                client.run(prepare_kernels, params.kernels, params.checks)
            args = (params.as_dict(), str(store.data_dir))
            futures = {
                client.submit(cell_fn, cell.as_dict(), *args, pure=False, key=_key(cell)): cell for cell in cells
            }
            try:
                for future in as_completed(list(futures)):
                    row = _row_of(future, futures[future])
                    rows.append(row)
                    rows.sort(key=lambda r: order[(r["from"], r["to"], r["check"])])
                    run.add_table("cells", cells_frame(rows))
                    run.update_result(**summarize(rows, time.monotonic() - started, n_workers, len(cells)))
                    if on_cell:
                        on_cell(row)
                    if cancel.is_set():
                        break
            finally:
                for f in futures:
                    f.cancel()
        summary = summarize(rows, time.monotonic() - started, n_workers)
        summary["complete"] = len(rows) == len(cells)
        run.update_result(**summary)
        record_id = run.id
    return {**summary, "record_id": record_id, "cells": rows}


@contextmanager
def _connected(scheduler: Any, n_workers: int) -> Iterator[Any]:
    """:func:`~workbench.cluster.dask_client`, with a scheduler that cannot be reached said plainly."""
    with ExitStack() as stack:
        try:
            client = stack.enter_context(dask_client(scheduler, n_workers))
        except OSError as exc:
            raise QualifyError(f"cannot reach the Dask scheduler {scheduler}: {exc}; is it running?") from None
        yield client


def _row_of(future: Any, cell: Cell) -> dict[str, Any]:
    """The row a finished task returned, or an ``error`` row when the task itself failed (a worker that died)."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 (a lost worker ends its cell, not the matrix)
        row = dict.fromkeys(CELL_COLUMNS)
        error = outcome_of_error(exc, "worker")
        row.update({"from": cell.source, "to": cell.target, "check": cell.check, **error.as_dict()})
        row.update({"phases": {}, "record_ids": [], "cell_s": 0.0})
        return row


def _key(cell: Cell) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in f"{cell.source}-{cell.target}-{cell.check}")
    return f"qualify-cell-{safe}-{os.urandom(4).hex()}"


def cells_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The ``cells`` table: one row per cell; ``phases`` and ``record_ids`` as JSON text."""
    frame = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    for column in ("phases", "record_ids"):
        frame[column] = [json.dumps(v) for v in frame[column]]
    return frame


def pair_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (from, to) pair in the order first seen: the pair's worst ``outcome`` and its checks'
    outcomes."""
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        entry = pairs.setdefault((row["from"], row["to"]), {"from": row["from"], "to": row["to"], "checks": {}})
        entry["checks"][row["check"]] = row["outcome"]
    for entry in pairs.values():
        entry["outcome"] = worst(list(entry["checks"].values()))
    return list(pairs.values())


def summarize(rows: list[dict[str, Any]], wall_s: float, workers: int, planned: int | None = None) -> dict[str, Any]:
    """The qualification's verdict and counts over the finished ``rows`` of ``planned`` cells (default: as many as
    there are rows): ``qualified`` (every planned cell finished and passed), ``complete``, ``outcomes`` (count per
    outcome), ``pairs`` (:func:`pair_table`), ``wall_s`` against ``cells_s`` (the sum of the cells' own times) and
    their ratio ``parallel_speedup``, the ``accelerators`` the cells ran under."""
    cells_s = sum(r.get("cell_s") or 0.0 for r in rows)
    complete = len(rows) == (len(rows) if planned is None else planned)
    return {
        "qualified": bool(rows) and complete and all(r["outcome"] == "pass" for r in rows),
        "complete": complete,
        "cells_done": len(rows),
        "outcomes": dict(Counter(r["outcome"] for r in rows)),
        "pairs": pair_table(rows),
        "wall_s": wall_s,
        "cells_s": cells_s,
        "parallel_speedup": cells_s / wall_s if wall_s > 0 and rows else None,
        "workers": workers,
        "accelerators": sorted({r["accelerator"] for r in rows if r.get("accelerator")}),
    }
