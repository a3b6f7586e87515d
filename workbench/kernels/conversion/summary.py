"""The JSON summary of a conversion benchmark on this machine (``workbench bench conversion``): per strategy its
fastest combination at the largest size, against the machine's limits measured in the same run."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

__all__ = [
    "summarize",
    "summarize_vm",
    "preserved_rows",
    "refused_rows",
    "measured_identity",
    "vm_rows_verified",
    "plain_value",
    "TABLE_COLUMNS",
    "VM_COLUMNS",
]

_STRATEGY_FIELDS = (
    "bytes_per_s",
    "ratio_to_memcpy",
    "seconds",
    "alloc_s",
    "copy_s",
    "copier",
    "threads",
    "pipe_size",
    "pipe_size_obtained",
    "size",
)


TABLE_COLUMNS = [
    "strategy",
    "copier",
    "size",
    "threads",
    "pipe_size",
    "seconds",
    "alloc_s",
    "copy_s",
    "bytes_per_s",
    "ratio_to_memcpy",
    "verified",
    "reason",
]


def plain_value(value: Any) -> Any:
    """``value`` as plain JSON: numpy scalars as Python ones, NaN and infinities as ``None``."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _strategy_summary(rows) -> dict[str, Any]:
    """The fastest available combination at the largest size measured, and whether every combination verified."""
    available = rows[rows["available"]]
    summary: dict[str, Any] = {
        "available": bool(len(available)),
        "verified": bool(len(available)) and bool(available["verified"].all()),
        "reason": "; ".join(dict.fromkeys(reason for reason in rows["reason"] if reason)),
    }
    largest = available[available["size"] == available["size"].max()]
    if len(largest):
        best = largest.loc[largest["bytes_per_s"].idxmax()]
        summary.update({field: plain_value(best[field]) for field in _STRATEGY_FIELDS})
    else:
        summary.update(dict.fromkeys(_STRATEGY_FIELDS))
    return summary


def summarize(frame, limits: dict[str, float], params: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of a :func:`~workbench.kernels.conversion.run_conversion` result: the parameters, the
    limits, per strategy its best ``bytes_per_s`` and ``ratio_to_memcpy``, and every row."""
    strategies = {name: _strategy_summary(rows) for name, rows in frame.groupby("strategy", sort=False)}
    return {
        **params,
        **{key: plain_value(value) for key, value in limits.items()},
        "all_verified": all(s["verified"] for s in strategies.values() if s["available"]),
        "unavailable": {name: s["reason"] for name, s in strategies.items() if not s["available"]},
        "strategies": strategies,
        "rows": [{key: plain_value(value) for key, value in row.items()} for row in frame.to_dict("records")],
    }


VM_COLUMNS = [
    "strategy",
    "copier",
    "size",
    "threads",
    "convert_s",
    "bytes_per_s",
    "ratio_to_memcpy",
    "preserve_s",
    "blackout_s",
    "retrieve_s",
    "verify_s",
    "end_to_end_s",
    "verified",
    "moved_pages",
    "copied_pages",
]

_VM_STRATEGY_EXTRA = (
    "pages_converted",
    "huge_pages",
    "page_identity_explanation",
    "preserve_refused",
    "converted_verified",
)


def preserved_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`workbench.lab.conversion_bench.bench_in_vm` frame whose memfds LUO preserved (not
    those it refused, ``preserve_refused``)."""
    if "preserve_refused" not in frame:
        return frame
    return frame[frame["preserve_refused"].fillna("") == ""]


def refused_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`workbench.lab.conversion_bench.bench_in_vm` frame whose memfds LUO refused to
    preserve (``preserve_refused``): their memfds were only checked after the conversion (``converted_verified``)."""
    return frame[~frame.index.isin(preserved_rows(frame).index)]


def measured_identity(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`workbench.lab.conversion_bench.bench_in_vm` frame whose page identity was measured
    (``moved_pages`` and ``copied_pages`` both numbers; ``None`` or NaN means unknown: not root, no pagemap), with
    those two columns as numbers."""
    counts = frame[["moved_pages", "copied_pages"]].apply(pd.to_numeric, errors="coerce")
    known = counts.notna().all(axis=1)
    return frame[known].assign(
        moved_pages=counts.loc[known, "moved_pages"], copied_pages=counts.loc[known, "copied_pages"]
    )


def vm_rows_verified(frame: pd.DataFrame) -> bool:
    """Whether every row of a :func:`workbench.lab.conversion_bench.bench_in_vm` frame verified: the preserved
    memfds after the kexec (``verified``), the refused ones after their conversion (``converted_verified`` true; a
    refused row without it is not verified). False when no memfd was preserved."""
    preserved, refused = preserved_rows(frame), refused_rows(frame)
    if not len(preserved) or not bool(preserved["verified"].all()):
        return False
    if not len(refused):
        return True
    if "converted_verified" not in refused:
        return False
    return all(value is True for value in refused["converted_verified"])  # None or NaN: never checked


def summarize_vm(frame, cycles: list[dict], params: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of :func:`workbench.lab.conversion_bench.bench_in_vm`: per strategy (largest size, its
    fastest thread count) the conversion rate, ``ratio_to_memcpy`` against the guest's memcpy measured in the same
    boot, and the end-to-end time to a verified memfd after the kexec, its moved and copied pages; the guest's
    limits; every row. A strategy whose memfds LUO refused to preserve is listed in ``refused`` with the kernel's
    reason; its memfds, checked only after their conversion, count in ``all_verified`` by ``converted_verified``."""
    strategies: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for name, rows in frame.groupby("strategy", sort=False):
        largest = rows[rows["size"] == rows["size"].max()]
        best = largest.loc[largest["bytes_per_s"].idxmax()]
        strategies[name] = {key: plain_value(best[key]) for key in VM_COLUMNS if key != "strategy"}
        strategies[name].update({key: plain_value(best[key]) for key in _VM_STRATEGY_EXTRA if key in best})
        strategies[name]["verified"] = bool(rows["verified"].all())
        reasons = [reason for reason in rows.get("preserve_refused", []) if reason]
        if reasons:
            refused[name] = "; ".join(dict.fromkeys(reasons))
    limits = cycles[-1].get("target_limits", {}) if cycles else {}
    return {
        **params,
        "target": "vm",
        "accelerator": cycles[-1].get("accelerator") if cycles else None,
        **{f"guest_{key}": plain_value(value) for key, value in limits.items()},
        "memcpy_bytes_per_s": plain_value(limits.get("memcpy_bytes_per_s")),
        "anon_to_survived_s": [c.get("anon_to_survived_s") for c in cycles],
        "cycle_records": [c.get("record_id") for c in cycles],
        "all_verified": vm_rows_verified(frame) and all(c["verified"] for c in cycles),
        "unavailable": {},
        "refused": refused,
        "strategies": strategies,
        "rows": [{key: plain_value(value) for key, value in row.items()} for row in frame.to_dict("records")],
    }
