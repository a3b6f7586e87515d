"""One cell, run where a Dask worker runs it: a cycle of the cell's check from one kernel into another, recorded
as a ``lab.cycle``, turned into a row of the qualification.

:func:`run_cell` takes and returns plain data so that it can run on any worker of a cluster."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from workbench.lab.cycle import run_cycle
from workbench.lab.errors import CycleFailed, LabError
from workbench.lab.kernel import LabKernel
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.qualify.checks import check_class
from workbench.qualify.matrix import Cell
from workbench.qualify.outcome import Outcome, outcome_of_error, outcome_of_failure, outcome_of_result
from workbench.qualify.params import QualifyParams
from workbench.records import RecordStore, open_store

__all__ = ["run_cell", "CELL_COLUMNS"]

#: the columns of a qualification's ``cells`` table, in order
CELL_COLUMNS = (
    "from",
    "to",
    "check",
    "outcome",
    "stage",
    "diagnosis",
    "message",
    "blackout_s",
    "phases",
    "preflight",
    "pages_checked",
    "kernel_release_from",
    "kernel_release_to",
    "accelerator",
    "record_ids",
    "cell_s",
    "worker",
)


def _store(data_dir: str | None) -> RecordStore:
    """The record store at ``data_dir`` when this worker can see it (a local cluster), else the worker's own."""
    return open_store(data_dir if data_dir and Path(data_dir).is_dir() else None)


def run_cell(cell: dict[str, Any], params: dict[str, Any], data_dir: str | None = None) -> dict[str, Any]:
    """Runs ``cell`` (:meth:`Cell.as_dict`) with the qualification's ``params`` (:meth:`QualifyParams.as_dict`)
    and returns its row (the fields of :data:`CELL_COLUMNS`). Never raises for a failing cell: the row says how it
    failed. ``data_dir``: where the cycle records go."""
    c = Cell(**cell)
    p = QualifyParams.from_dict(params)
    store = _store(data_dir)
    started = time.monotonic()
    row: dict[str, Any] = {"from": c.source, "to": c.target, "check": c.check, "record_ids": []}
    result: dict[str, Any] = {}
    target = QemuTarget(kernel=c.source, cpus=p.cpus)
    try:
        workload = check_class(c.check)().workload(c, p)
        cycle = CycleParams(next_kernel=c.target, preflight=p.preflight, force=p.force)
        result = run_cycle(workload, cycle, target=target, store=store)
        outcome = outcome_of_result(result)
        row["record_ids"] = [result["record_id"]]
    except CycleFailed as exc:
        outcome = outcome_of_failure(exc)
        row["record_ids"] = [exc.record_id] if exc.record_id else []
    except LabError as exc:
        outcome = outcome_of_error(exc)
    except Exception as exc:  # noqa: BLE001 (one cell's bug must not end the others: its row says what it was)
        outcome = outcome_of_error(exc, "workbench")
    try:
        row.update(_cycle_facts(store, row["record_ids"], result, outcome, target))
    except Exception as exc:  # noqa: BLE001 (the record store failing must not lose the outcome)
        row.update(outcome.as_dict())
        row["message"] = f"{outcome.message or ''} (its record could not be read: {exc})".strip()
    row["cell_s"] = time.monotonic() - started
    row["worker"] = socket.gethostname()
    return {name: row.get(name) for name in CELL_COLUMNS}


def _release(kernel: Any) -> str | None:
    return kernel.release if isinstance(kernel, LabKernel) else None


def _cycle_facts(
    store: RecordStore, record_ids: list[str], result: dict, outcome: Outcome, target: QemuTarget
) -> dict[str, Any]:
    """The row's fields taken from the cycle: its outcome, times, preflight verdict (the live one when it
    refused), releases and accelerator (from its record when it failed before returning a result, and from the
    target's kernels when it never booted)."""
    recorded: dict[str, Any] = {}
    environment: dict[str, Any] = {}
    if record_ids:
        record = store.get(record_ids[0])
        recorded, environment = record.result, record.environment
    facts = {**recorded, **result}
    preflight = facts.get("preflight") or {}
    live = facts.get("preflight_live") or {}
    verdict = "refuse (live)" if live.get("verdict") == "refuse" else preflight.get("verdict")
    if live.get("verdict") == "refuse" and not outcome.diagnosis:
        outcome.diagnosis = "; ".join(live.get("reasons", []))
    booted = _release(target.kernel)
    following = _release(target.following)
    return {
        **outcome.as_dict(),
        "blackout_s": facts.get("blackout_s"),
        "phases": facts.get("phases") or {},
        "preflight": verdict,
        "pages_checked": facts.get("pages_checked"),
        "kernel_release_from": facts.get("kernel_release_before") or environment.get("target_kernel_release") or booted,
        "kernel_release_to": facts.get("kernel_release_after") or environment.get("next_kernel_release") or following,
        "accelerator": environment.get("accelerator"),
    }
