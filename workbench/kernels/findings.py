"""The headline findings of the notebooks over :mod:`workbench.kernels`, computed from one run's numbers: page
fingerprint speed (the tour), the fastest anonymous memory → memfd conversion, and the blackout model's
predictions. Each returns a :class:`~workbench.report.headline.Finding` (the sentence and its numbers) for
:func:`~workbench.report.headline.show_headline`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from workbench.kernels.blackout.fitting import HoldoutReport
from workbench.kernels.blackout.model import blackout_phases
from workbench.kernels.conversion.summary import measured_identity, preserved_rows, refused_rows, vm_rows_verified
from workbench.kernels.conversion_answer import best_by_strategy
from workbench.report.headline import Finding, Number, format_value

__all__ = ["hash_finding", "conversion_finding", "model_finding"]

_GIB = 1 << 30


def hash_finding(result: Mapping[str, Any]) -> Finding:
    """The page fingerprint speed of one :func:`workbench.kernels.pagehash.benchmark` result (``bytes_per_s``,
    ``read_bytes_per_s``, ``ratio_to_read``, ``size``, ``threads``)."""
    speed, read, ratio = result["bytes_per_s"], result["read_bytes_per_s"], result["ratio_to_read"]
    text = (
        f"Every 4 KiB page of {format_value(result['size'], 'B')} fingerprinted (XXH3-64, {result['threads']} "
        f"threads) at {format_value(speed, 'B/s')}: {ratio:.0%} of a plain parallel read of the same memory "
        f"({format_value(read, 'B/s')}), so proving that 1 GiB came back intact takes {_GIB / speed:.2f} s."
    )
    return Finding(
        text,
        [
            Number("hash_bytes_per_s", "page fingerprints", speed, "B/s", better="higher"),
            Number("read_bytes_per_s", "plain read of the same memory", read, "B/s", better="higher"),
            Number("ratio_to_read", "fingerprints against the read", ratio, "ratio", better="higher"),
        ],
    )


def conversion_finding(
    frame: pd.DataFrame,
    limits: Mapping[str, float],
    vm_rows: pd.DataFrame | None = None,
    vm_cycle: Mapping[str, Any] | None = None,
) -> Finding:
    """The fastest verified conversion at the largest size of one
    :func:`workbench.kernels.conversion.run_conversion` run (``frame``, ``limits``) and its share of memcpy,
    the machine's limit; with the same strategies run in the lab VM (``vm_rows``, one per strategy, and the
    cycle's result ``vm_cycle``, as :func:`workbench.lab.conversion_bench.bench_in_vm` returns them), whether
    they all survived the kexec and how long the whole path took."""
    memcpy = limits["memcpy_bytes_per_s"]
    available = frame[frame["available"]]
    all_verified = bool(len(available)) and bool(available["verified"].all())
    numbers = [
        Number("all_verified", "every conversion verified page by page", all_verified, exact=True),
        Number("memcpy_bytes_per_s", "memcpy between prefaulted buffers", memcpy, "B/s", better="higher"),
    ]
    best = best_by_strategy(frame)
    size = int(frame["size"].max())
    if best.empty:
        text = "No conversion strategy verified in this run: there is nothing to conclude."
    else:
        top = best.iloc[0]
        numbers[1:1] = [
            Number("fastest_bytes_per_s", f"fastest: {top['strategy']}", top["bytes_per_s"], "B/s", better="higher"),
            Number("fastest_ratio_to_memcpy", "its share of memcpy", top["ratio_to_memcpy"], "ratio", better="higher"),
        ]
        text = (
            f"The fastest verified conversion of {format_value(size, 'B')} of anonymous memory into a memfd is "
            f"{top['strategy']} ({top['copier']}, {int(top['threads'])} thread(s)) at "
            f"{format_value(top['bytes_per_s'], 'B/s')}: {top['ratio_to_memcpy']:.0%} of what memcpy reaches "
            f"between prefaulted buffers ({format_value(memcpy, 'B/s')}), the machine's limit."
        )
    if vm_rows is not None and vm_cycle is not None and len(vm_rows):
        preserved = preserved_rows(vm_rows)
        vm_verified = vm_rows_verified(vm_rows)
        survived = vm_cycle.get("anon_to_survived_s")
        numbers += [
            Number(
                "vm_verified",
                "in the lab VM: every memfd verified (after the kexec; a refused one after its conversion)",
                vm_verified,
                exact=True,
            ),
            Number("vm_memfds", "in the lab VM: strategies converted and preserved", len(preserved), exact=True),
            Number(
                "vm_anon_to_survived_s", "in the lab VM: anonymous memory to restored", survived, "s", better="lower"
            ),
        ]
        came_back = bool(len(preserved)) and bool(preserved["verified"].all())
        outcome = "all verified" if came_back else "NOT all verified"
        text += (
            f" In the lab VM ({vm_cycle.get('accelerator')}), {len(preserved)} memfds, one per strategy, were "
            f"preserved with LUO and came back after the kexec, {outcome}: {format_value(survived, 's')} from "
            "anonymous memory to restored."
        )
        refused = refused_rows(vm_rows)
        if len(refused):
            checked = "converted_verified" in refused and all(v is True for v in refused["converted_verified"])
            text += (
                f" LUO refused to preserve {', '.join(dict.fromkeys(refused['strategy']))} (the reason is in its "
                f"row); checked after the conversion, {'verified' if checked else 'NOT verified'}."
            )
        text, numbers = _page_identity(vm_rows, text, numbers)
    return Finding(text, numbers)


def _page_identity(vm_rows: pd.DataFrame, text: str, numbers: list[Number]) -> tuple[str, list[Number]]:
    """``text`` and ``numbers`` with the pages moved and copied of the lab VM's rows that counted them; a row
    whose page identity is unknown (not root, no pagemap) is left out and named, and with none counted there is
    no number."""
    if not {"moved_pages", "copied_pages"} <= set(vm_rows.columns):
        return text, numbers
    counted = measured_identity(vm_rows)
    unknown = vm_rows.loc[~vm_rows.index.isin(counted.index), "strategy"]
    if counted.empty:
        return text + " Which pages moved and which were copied is unknown: no page identity was measured.", numbers
    moved, copied = int(counted["moved_pages"].sum()), int(counted["copied_pages"].sum())
    numbers = [*numbers, Number("vm_moved_pages", "in the lab VM: pages moved, not copied", moved, exact=True)]
    text += f" Of the converted pages {moved:,} kept their frame and {copied:,} were copied"
    if len(unknown):
        text += f"; page identity unknown for {', '.join(dict.fromkeys(unknown))}"
    return text + ".", numbers


def _size_name(mem_bytes: float) -> str:
    return format_value(float(mem_bytes), "B").replace(" ", "")


def _counted_phases(row: pd.Series) -> tuple[list[str], list[str]]:
    """The blackout phases of ``row``'s strategy that the model could predict, and those it could not."""
    phases = blackout_phases()[row["strategy"]]
    counted = [p for p in phases if math.isfinite(row[f"{p}_s"])]
    return counted, [p for p in phases if p not in counted]


def _dominant_phases(table: pd.DataFrame) -> tuple[str, list[Number]]:
    """Which phase dominates the predicted blackout of the largest host, per folio size, for its fastest strategy
    (the table's ``dominant_phase`` and ``dominant_share``)."""
    if "dominant_phase" not in table.columns or table.empty:
        return "", []
    largest = table[table["mem_bytes"] == table["mem_bytes"].max()]
    parts, numbers = [], []
    for folio_bytes, rows in largest.groupby("folio_bytes", sort=True):
        best = rows.loc[rows["blackout_lower_bound_s"].idxmin()]
        if not best["dominant_phase"]:
            continue
        folio = best["folio"]
        parts.append(f"{best['dominant_phase']} ({best['dominant_share']:.0%}) with {folio} folios")
        numbers.append(
            Number(
                f"dominant_share_{_size_name(folio_bytes)}",
                f"{best['mem']}, {folio} folios: share of {best['dominant_phase']}",
                float(best["dominant_share"]),
                "ratio",
            )
        )
    if not parts:
        return "", []
    return f" The largest phase at {largest['mem'].iloc[0]}: {'; '.join(parts)}.", numbers


def model_finding(table: pd.DataFrame, holdout: HoldoutReport) -> Finding:
    """The blackout model's predictions for large hosts with 4 KiB folios and the fastest conversion (and for
    memory that is a memfd from birth), from :func:`workbench.kernels.blackout.prediction_table`, and its error
    on held-out points (:func:`workbench.kernels.blackout.holdout_error`). The predictions are lower bounds:
    they count only the blackout phases that could be fitted, and the text names the others."""
    base = table[table["folio_bytes"] == 4096]
    numbers, parts = [], []
    birth_text, missing = "", []
    for mem_bytes, rows in base.groupby("mem_bytes", sort=True):
        converting = rows[rows["strategy"] != "memfd-from-birth"]
        name = _size_name(mem_bytes)
        if not converting.empty:
            best = converting.loc[converting["blackout_lower_bound_s"].idxmin()]
            seconds = best["blackout_lower_bound_s"]
            numbers.append(
                Number(f"blackout_{name}_s", f"{best['mem']}, {best['strategy']}", seconds, "s", better="lower")
            )
            parts.append(f"{format_value(seconds, 's')} for {best['mem']} ({best['strategy']})")
            missing = _counted_phases(best)[1]
        birth = rows[rows["strategy"] == "memfd-from-birth"]
        if not birth.empty and not birth_text:
            row = birth.iloc[0]
            label = f"{row['mem']}, memfd from birth"
            numbers.append(
                Number(f"blackout_from_birth_{name}_s", label, row["blackout_lower_bound_s"], "s", better="lower")
            )
            if _counted_phases(row)[0]:
                birth_text = f"; memory that is a memfd from birth: {format_value(row['blackout_lower_bound_s'], 's')}"
                birth_text += f" at {row['mem']}"
            else:
                birth_text = "; memory that is a memfd from birth needs no conversion"
    errors = holdout.points["relative_error"].abs()
    text = "With 4 KiB folios the model fitted on this machine predicts a blackout of at least " + (
        ", ".join(parts) if parts else "nothing (no conversion could be fitted)"
    )
    text += birth_text + "."
    if missing:
        text += f" Not counted, for want of lab cycles to fit them: {', '.join(missing)}."
    dominant_text, dominant_numbers = _dominant_phases(table)
    text += dominant_text
    numbers += dominant_numbers
    if len(errors):
        numbers += [
            Number("holdout_median_error", "held-out median error", errors.median(), "ratio", better="lower"),
            Number("holdout_max_error", "held-out worst error", errors.max(), "ratio", better="lower"),
        ]
        text += (
            f" On the {len(errors)} points the fit did not see (each phase's largest size), its median error is "
            f"{errors.median():.0%}, the worst {errors.max():.0%}."
        )
    else:
        text += " No phase was measured at two sizes, so no point could be held out to check the fit."
    return Finding(text, numbers)
