"""The headline findings of the lab notebooks, computed from their cycles' results: one live-update cycle (its
blackout, its phases, the pages verified) and a CRIU-restored process (its downtime by kind of memory). Each
returns a :class:`~workbench.report.headline.Finding` for :func:`~workbench.report.headline.show_headline`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from workbench.report.headline import Finding, Number, format_value

__all__ = ["cycle_finding", "criu_finding", "blackout_finding"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def cycle_finding(result: Mapping[str, Any]) -> Finding:
    """What one cycle (:func:`workbench.lab.cycle.run_cycle`'s result) showed: whether every page came back, how
    many were checked, the blackout and each phase's seconds."""
    verified = bool(result.get("verified"))
    pages = result.get("pages_checked") or 0
    memfds = result.get("memfds") or []
    data = sum(m.get("expected_size", m.get("size", 0)) for m in memfds)
    phases = dict(result.get("phases") or {})
    numbers = [
        Number("verified", "every page came back", verified, exact=True),
        Number("pages_checked", "pages checked", int(pages), "pages", exact=True),
        Number("blackout_s", "blackout", result.get("blackout_s"), "s", better="lower"),
    ]
    numbers += [Number(f"phase_{_slug(n)}_s", f"phase {n}", s, "s", better="lower") for n, s in phases.items()]
    outcome = f"all {pages:,} pages verified" if verified else f"NOT verified ({pages:,} pages checked)"
    longest = max(phases.items(), key=lambda item: item[1] or 0.0) if phases else None
    text = (
        f"{len(memfds)} memfd(s), {format_value(data, 'B')} in all, preserved in LUO session "
        f"'{result.get('session')}' crossed the kexec from {result.get('kernel_release_before')} into "
        f"{result.get('kernel_release_after')}: {outcome}. The blackout was "
        f"{format_value(result.get('blackout_s'), 's')} "
        f"({result.get('accelerator') or 'lab VM'})"
    )
    text += f"; the longest phase was {longest[0]} ({format_value(longest[1], 's')})." if longest else "."
    return Finding(text, numbers)


def criu_finding(cycles: pd.DataFrame, failures: Sequence[Mapping[str, Any]] = ()) -> Finding:
    """What the CRIU cycles showed at the largest size: the process's downtime for each kind of memory, the part
    of it outside the kexec blackout, and whether every page came back and the process kept counting.

    :param cycles: one row per cycle, :func:`workbench.lab.results.cycles_table` with ``size`` (as written, e.g.
        ``64M``), ``bytes`` and ``memory`` (the kind: ``anonymous``, ``memfd from birth``...) columns in front
    :param failures: the cycles that failed (anything with a length: only their number is used)
    """
    numbers = [Number("cycles_failed", "cycles that failed", len(failures), exact=True)]
    if cycles.empty:
        return Finding("No CRIU cycle completed.", numbers)
    largest = cycles[cycles["bytes"] == cycles["bytes"].max()]
    verified = bool(cycles["verified"].fillna(False).astype(bool).all())
    counting = bool(
        (
            (cycles["criu_counter_later"] > cycles["criu_counter_after_restore"])
            & (cycles["criu_counter_after_restore"] >= cycles["criu_counter_before_dump"])
        ).all()
    )
    numbers += [
        Number("verified", "every page came back", verified, exact=True),
        Number("kept_counting", "the process kept counting", counting, exact=True),
    ]
    parts = []
    for row in largest.itertuples():
        outside = row.downtime_s - row.blackout_s
        slug = _slug(row.memory)
        numbers += [
            Number(f"downtime_{slug}_s", f"downtime, {row.memory}", row.downtime_s, "s", better="lower"),
            Number(f"outside_blackout_{slug}_s", f"outside the blackout, {row.memory}", outside, "s", better="lower"),
        ]
        parts.append(
            f"{row.memory}, {format_value(row.downtime_s, 's')} ({format_value(outside, 's')} of it outside the "
            "kexec blackout)"
        )
    size = largest["size"].iloc[0]
    outcome = "every page came back" if verified else "NOT every page came back"
    outcome += " and the process kept counting" if counting else ", and the process did NOT keep counting"
    text = (
        f"A process holding {size} of memory, dumped by CRIU into LUO-preserved memfds, kexec'd and restored: "
        f"downtime with {'; with '.join(parts)}; {outcome}."
    )
    if failures:
        text += f" {len(failures)} cycle(s) failed."
    return Finding(text, numbers)


def _slope_text(fit: Mapping[str, Any], per: str) -> str:
    what = "of RAM" if per == "ram" else per
    return f"{fit[f'per_gib_{per}_s']:+.2f} ± {fit[f'per_gib_{per}_stderr']:.2f} s per GiB {what}"


def blackout_finding(summary: Mapping[str, Any]) -> Finding:
    """What a ``bench blackout`` sweep showed (:func:`workbench.lab.blackout_bench.run_blackout_sweep`'s
    summary): the largest blackout ratio against the baseline kexec, the slopes of the blackout and of KHO's
    restore per GiB preserved and per GiB of guest RAM (the first kernel's), the lab's own agent start, and each
    other kernel against the first at the same points (e.g. deferred struct page init)."""
    ratios = [r for r in summary.get("ratios") or [] if r.get("blackout_ratio") is not None]
    accelerators = ", ".join(summary.get("accelerators") or []) or "unknown accelerator"
    if not ratios:
        return Finding("No blackout was measured against a baseline in this run.", [])
    first = ratios[0]["reference_kernel"]
    preserved = [r for r in ratios if r["share"] > 0 and r["kernel"] == first]
    numbers: list[Number] = [Number("cycles", "cycles, all verified", sum(r["cycles"] for r in ratios), exact=True)]
    text = f"In one run of {numbers[0].value} verified cycles ({accelerators}, {first}"
    text += (
        f" against {', '.join(sorted({r['kernel'] for r in ratios} - {first}))})"
        if len(ratios) > 1 and any(r["kernel"] != first for r in ratios)
        else ")"
    )
    if preserved:
        worst = max(preserved, key=lambda r: r["blackout_ratio"])
        numbers.append(Number("blackout_ratio_max", "largest blackout ratio to the baseline", worst["blackout_ratio"],
                              "ratio", better="lower"))  # fmt: skip
        text += (
            f": preserving {format_value(worst['preserved_bytes'], 'B')} of a {worst['memory_mb']} MiB guest made "
            f"the blackout {worst['blackout_ratio']:.2f}× the baseline kexec's "
            f"({format_value(worst['blackout_s'], 's')} against {format_value(worst['baseline_s'], 's')})"
        )
    slopes = (summary.get("slopes") or {}).get(first) or {}
    for column, label in (("blackout_s", "blackout"), ("phase_kho_restore_s", "KHO restore"),
                          ("phase_memmap_init_s", "struct page init")):  # fmt: skip
        fit = slopes.get(column)
        if fit:
            slug = _slug(label)
            numbers += [
                Number(f"{slug}_per_gib_preserved_s", f"{label}, s per GiB preserved", fit["per_gib_preserved_s"], "s",
                       noise=fit["per_gib_preserved_stderr"], better="lower"),
                Number(f"{slug}_per_gib_ram_s", f"{label}, s per GiB of RAM", fit["per_gib_ram_s"], "s",
                       noise=fit["per_gib_ram_stderr"], better="lower"),
            ]  # fmt: skip
            text += f"; {label}: {_slope_text(fit, 'preserved')}, {_slope_text(fit, 'ram')}"
    agent = slopes.get("agent_start_s")
    if agent:
        text += f"; the lab's own start of its agent (not the kernel's) about {format_value(agent['intercept_s'], 's')}"
    others = [r for r in ratios if r["kernel"] != first and r.get("vs_reference_kernel") is not None]
    for kernel in dict.fromkeys(r["kernel"] for r in others):
        mine = [r["vs_reference_kernel"] for r in others if r["kernel"] == kernel]
        mean = sum(mine) / len(mine)
        numbers.append(Number(f"{_slug(kernel)}_vs_{_slug(first)}", f"{kernel} blackout / {first}'s, mean",
                              mean, "ratio", better="lower"))  # fmt: skip
        text += (
            f". {kernel} against {first} at the same {len(mine)} points: blackout {mean:.2f}× on average "
            f"({min(mine):.2f}-{max(mine):.2f}×)"
        )
    return Finding(text + ".", numbers)
