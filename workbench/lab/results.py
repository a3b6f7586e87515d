"""Cycle results as a table: one row per cycle, for comparing cycles side by side in a notebook.

A cycle's result is the dict :func:`workbench.lab.cycle.run_cycle` returns (and ``workbench cycle --json`` prints):
nested per phase, per memfd, per CRIU step. :func:`cycles_table` flattens a list of them into one
:class:`pandas.DataFrame`. A field a result does not have (a memfd cycle has no CRIU downtime, a failed entry has
little more than its error) is left empty, never an error; so is a field of the wrong type (a workload's part of a
result comes from the agent's files, which the host does not trust): a count that is not a number is NaN, a group
that is not an object adds no columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import pandas as pd

__all__ = ["cycles_table", "COLUMNS"]

#: the columns every table has, in order; after them come ``phase_<name>_s`` (each phase's seconds),
#: ``blackout_<part>_s`` (the blackout's breakdown) and ``downtime_<step>_s`` (a CRIU cycle's downtime by step), in
#: the order they first appear, with ``-`` in names written ``_``
COLUMNS = (
    "record_id",
    "target",
    "host",
    "workload",
    "verified",
    "dry_run",
    "error",
    "failed_phase",
    "memfds",
    "data_bytes",
    "anon_bytes",
    "memfd_region_bytes",
    "image_bytes",
    "pages_checked",
    "differing_pages",
    "accelerator",
    "memory_mb",
    "kernel_release_before",
    "kernel_release_after",
    "hash",
    "boot_s",
    "blackout_s",
    "downtime_s",
    "freeze_to_kexec_s",
    "anon_to_survived_s",
    "conversions",
    "criu_version",
    "criu_images_mode",
    "criu_lazy_all_pages_s",
    "criu_counter_before_dump",
    "criu_counter_after_restore",
    "criu_counter_later",
)
_GROUPS = ("phase_", "blackout_", "downtime_")
_NOT_NUMBERS = {
    "record_id",
    "target",
    "host",
    "workload",
    "verified",
    "dry_run",
    "error",
    "failed_phase",
    "accelerator",
    "kernel_release_before",
    "kernel_release_after",
    "hash",
    "criu_version",
    "criu_images_mode",
}


def cycles_table(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per cycle result, the columns of :data:`COLUMNS` and then one per phase, blackout part and downtime
    step seen in any of them. Counts, sizes and times are numbers (NaN where missing), the rest None where missing.

    :param results: cycle results as :func:`workbench.lab.cycle.run_cycle` returns them (memfd, converting or CRIU
        cycles, on any target), or the entries ``workbench cycle --json`` prints for a cycle that failed (``error``,
        ``failed_phase``, ``record_id``)."""
    rows = [_row(result) for result in results]
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    extra = [key for prefix in _GROUPS for key in seen if key.startswith(prefix) and key not in COLUMNS]
    table = pd.DataFrame(rows, columns=[*COLUMNS, *extra])
    for column in table.columns:
        if column not in _NOT_NUMBERS:
            table[column] = pd.to_numeric(table[column].map(_number)) if rows else table[column].astype(float)
    return table


def _number(value: Any) -> float | int | None:
    """``value`` when it is a number (a boolean is not), else None: what a numeric column holds."""
    return value if isinstance(value, Real) and not isinstance(value, bool) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _row(result: Mapping[str, Any]) -> dict[str, Any]:
    memfds = result.get("memfds")
    if memfds is not None:
        memfds = [m for m in memfds if isinstance(m, Mapping)] if isinstance(memfds, list) else []
    criu = _mapping(result.get("criu"))
    counter = _mapping(criu.get("counter"))
    row = {
        "record_id": result.get("record_id"),
        "target": result.get("target"),
        "host": result.get("host"),
        "workload": result.get("workload") or ("memfd" if memfds is not None else None),
        "verified": result.get("verified"),
        "dry_run": result.get("dry_run"),
        "error": result.get("error"),
        "failed_phase": result.get("failed_phase"),
        "memfds": len(memfds) if memfds is not None else None,
        "data_bytes": _sum(m.get("expected_size", m.get("size")) for m in memfds) if memfds is not None else None,
        "anon_bytes": criu.get("anon_size"),
        "memfd_region_bytes": criu.get("memfd_region"),
        "image_bytes": criu.get("image_bytes"),
        "pages_checked": result.get("pages_checked"),
        "differing_pages": _sum(m.get("differing_count") for m in memfds) if memfds is not None else None,
        "accelerator": result.get("accelerator"),
        "memory_mb": result.get("memory_mb"),
        "kernel_release_before": result.get("kernel_release_before"),
        "kernel_release_after": result.get("kernel_release_after"),
        "hash": result.get("hash"),
        "boot_s": result.get("boot_s"),
        "blackout_s": result.get("blackout_s"),
        "downtime_s": result.get("downtime_s"),
        "freeze_to_kexec_s": result.get("freeze_to_kexec_s"),
        "anon_to_survived_s": result.get("anon_to_survived_s"),
        "conversions": len(result["conversions"]) if isinstance(result.get("conversions"), list) else None,
        "criu_version": criu.get("version"),
        "criu_images_mode": criu.get("images_mode"),
        "criu_lazy_all_pages_s": _mapping(criu.get("lazy_pages")).get("all_pages_s"),
        "criu_counter_before_dump": counter.get("before_dump"),
        "criu_counter_after_restore": counter.get("after_restore"),
        "criu_counter_later": counter.get("later"),
    }
    for name, seconds in _mapping(result.get("phases")).items():
        row[f"phase_{_column(name)}_s"] = seconds
    for name, value in _mapping(result.get("blackout_breakdown")).items():
        if str(name).endswith("_s"):
            row[f"blackout_{_column(name)}"] = value
    for name, seconds in _mapping(result.get("downtime_breakdown")).items():
        row[f"downtime_{_column(name)}_s"] = seconds
    return row


def _sum(values) -> float | int | None:
    """The sum of the numbers among ``values`` (None when one is not a number: the total is unknown)."""
    total = 0
    for value in values:
        if value is None:
            continue
        if _number(value) is None:
            return None
        total += value
    return total


def _column(name: Any) -> str:
    return str(name).replace("-", "_")
