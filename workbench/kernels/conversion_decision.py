"""The decision at the end of the conversion study, computed from one run's measurements: which way to turn a
process's anonymous memory into preservable memfd memory in which situation, what zero-copy would need, and the
price of allocating in memfds from birth.

Its inputs are plain tables, so that it can be computed from a notebook's run or from records: the host conversions
(:func:`workbench.kernels.conversion.run_conversion`), the same strategies in the lab VM with their page identity
(:func:`workbench.lab.conversion_bench.bench_in_vm`) and the memfd-from-birth price on a real program
(:func:`workbench.lab.preload_bench.run_preload_bench`'s summary)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from workbench.kernels.conversion.summary import measured_identity, preserved_rows
from workbench.kernels.conversion_answer import best_by_strategy
from workbench.report.headline import format_value

__all__ = ["DECISION_COLUMNS", "decision_table", "decision_text"]

#: the columns of :func:`decision_table`
DECISION_COLUMNS = ("situation", "choice", "evidence")

_HUGE = ("thp-shmem", "hugetlb")


def _conversion_row(best: pd.DataFrame, limits: Mapping[str, float]) -> dict[str, str] | None:
    base = best[~best["strategy"].isin(_HUGE)]
    if base.empty:
        return None
    top = base.iloc[0]
    evidence = (
        f"{format_value(top['bytes_per_s'], 'B/s')} at {format_value(top['size'], 'B')}, "
        f"{top['ratio_to_memcpy']:.0%} of memcpy ({format_value(limits['memcpy_bytes_per_s'], 'B/s')}); "
        f"next: " + ", ".join(f"{r.strategy} {r.ratio_to_memcpy:.0%}" for r in base.iloc[1:3].itertuples())
    )
    return {
        "situation": "anonymous memory converted at the checkpoint (inside the blackout)",
        "choice": f"{top['strategy']} ({top['copier']}, {int(top['threads'])} thread(s))",
        "evidence": evidence,
    }


def _identity_row(vm_rows: pd.DataFrame) -> dict[str, str] | None:
    if not {"moved_pages", "copied_pages"} <= set(vm_rows.columns):
        return None
    situation = "zero copy (the anonymous page becomes the memfd's)"
    counted = measured_identity(vm_rows)
    unknown = list(dict.fromkeys(vm_rows.loc[~vm_rows.index.isin(counted.index), "strategy"]))
    if counted.empty:
        why = ""
        if "page_identity_explanation" in vm_rows.columns and vm_rows["page_identity_explanation"].notna().any():
            why = f": {vm_rows['page_identity_explanation'].dropna().iloc[0]}"
        evidence = f"no page identity measured for the {len(vm_rows)} strategies in the lab VM{why}"
        return {
            "situation": situation,
            "choice": "unknown: this run did not measure which pages moved",
            "evidence": evidence,
        }
    moved = counted.groupby("strategy")["moved_pages"].sum()
    copied = int(counted["copied_pages"].sum())
    movers = [name for name, count in moved.items() if count > 0]
    if movers:
        choice = f"zero copy exists: {', '.join(movers)} moved pages"
    elif unknown:
        choice = f"no measured strategy moves pages; unknown for {', '.join(unknown)}"
    else:
        choice = "no strategy moves pages: zero copy needs a kernel change"
    path = ""
    splice = counted[counted["strategy"].str.startswith("vmsplice")]
    if "page_identity_explanation" in counted.columns and len(splice):
        path = f"; vmsplice: {splice['page_identity_explanation'].iloc[0]}"
    missing = f" (page identity unknown for {', '.join(unknown)})" if unknown else ""
    evidence = (
        f"{int(moved.sum()):,} pages moved, {copied:,} copied over {len(counted)} strategies in the lab VM"
        f"{missing}{path}"
    )
    return {"situation": situation, "choice": choice, "evidence": evidence}


def _huge_row(best: pd.DataFrame, vm_rows: pd.DataFrame | None) -> dict[str, str] | None:
    base = best[~best["strategy"].isin(_HUGE)]
    parts, choice = [], "base pages"
    for name in _HUGE:
        rows = best[best["strategy"] == name]
        if not rows.empty and not base.empty:
            ratio = rows["bytes_per_s"].iloc[0] / base["bytes_per_s"].iloc[0]
            parts.append(f"{name} {ratio:.2f}× the best base-page strategy on the host")
    if vm_rows is not None and len(vm_rows):
        preserved = preserved_rows(vm_rows)
        for name in _HUGE:
            rows = vm_rows[vm_rows["strategy"] == name]
            if rows.empty:
                continue
            if name in set(preserved["strategy"]):
                state = "verified" if bool(rows["verified"].all()) else "NOT verified"
                parts.append(f"{name} preserved across the kexec and {state}")
                if name == "thp-shmem" and bool(rows["verified"].all()):
                    choice = "thp-shmem (2 MiB folios) where the memory may be huge"
            elif "preserve_refused" in rows.columns:
                checked = "converted_verified" in rows and all(v is True for v in rows["converted_verified"])
                state = "verified" if checked else "NOT verified"
                parts.append(f"{name} refused by LUO: {rows['preserve_refused'].iloc[0]}; its conversion {state}")
    if not parts:
        return None
    return {"situation": "huge pages", "choice": choice, "evidence": "; ".join(parts)}


def _birth_row(preload: Mapping[str, Any]) -> dict[str, str] | None:
    tests = preload.get("tests") or {}
    if not tests:
        return None
    prices = []
    for name, entry in tests.items():
        rps, faults, cpu = entry["rps"], entry["minflt"], entry["server_cpu_s"]
        paired = rps.get("paired_ratio") or {}
        spread = f" (repeats {paired['low']:.2f}-{paired['high']:.2f})" if paired.get("low") is not None else ""
        prices.append(
            f"{name.upper()} throughput {rps['ratio']:.2f}×{spread}, page faults {faults['ratio']:.2f}×, "
            f"server CPU {cpu['ratio']:.2f}×"
        )
    data_ok = preload.get("data_ok")
    evidence = (
        f"{preload.get('program_version') or preload.get('program')}: " + "; ".join(prices)
        + f"; {preload.get('birth_share', 0):.0%} of its resident memory in birth memfds, "
        + ("data checked" if data_ok is True else "data NOT all checked")
    )  # fmt: skip
    if data_ok is True:
        choice = (
            f"allocate in memfds from birth: throughput {_throughput_price(tests)} of plain, nothing to convert in "
            "the blackout (the blackout of a preserved birth-memfd program was not measured in this run)"
        )
    elif data_ok is False:
        choice = (
            "not memfd from birth: the LD_PRELOAD library did not keep the program's data "
            f"(throughput {_throughput_price(tests)} of plain)"
        )
    else:
        choice = "not memfd from birth: this run did not check that the LD_PRELOAD library keeps the program's data"
    return {
        "situation": "the program may be started differently (memfd from birth, LD_PRELOAD)",
        "choice": choice,
        "evidence": evidence,
    }


def _throughput_price(tests: Mapping[str, Any]) -> str:
    """The span of the measured throughput ratios (birth memfds against plain) over ``tests``: each test's
    paired repeats where measured, else its ratio."""
    values = []
    for entry in tests.values():
        rps = entry["rps"]
        paired = rps.get("paired_ratio") or {}
        if paired.get("low") is not None and paired.get("high") is not None:
            values += [paired["low"], paired["high"]]
        else:
            values.append(rps["ratio"])
    low, high = min(values), max(values)
    return f"{low:.2f}×" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}×"


def decision_table(
    frame: pd.DataFrame,
    limits: Mapping[str, float],
    vm_rows: pd.DataFrame | None = None,
    preload: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Situation → choice → the evidence from this run, one row per question the run can answer.

    :param frame: host conversions (``run_conversion``'s frame)
    :param limits: their limits (``memcpy_bytes_per_s``)
    :param vm_rows: the lab VM's rows (``bench_in_vm``), with ``moved_pages``/``copied_pages`` and
        ``preserve_refused`` where the kernel refused a memfd
    :param preload: ``run_preload_bench``'s summary (the price of memfd from birth on a real program)"""
    best = best_by_strategy(frame) if len(frame) else pd.DataFrame(columns=["strategy", "bytes_per_s"])
    rows = [
        _conversion_row(best, limits),
        None if vm_rows is None else _identity_row(vm_rows),
        _huge_row(best, vm_rows),
        None if preload is None else _birth_row(preload),
    ]
    return pd.DataFrame([r for r in rows if r], columns=list(DECISION_COLUMNS))


def decision_text(table: pd.DataFrame) -> str:
    """The decision as one paragraph: each situation and its choice, in the table's order."""
    if table.empty:
        return "This run measured nothing to decide from."
    return " ".join(f"{row.situation.capitalize()}: {row.choice}." for row in table.itertuples())
