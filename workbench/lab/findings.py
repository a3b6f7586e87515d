"""The headline findings of the lab notebooks, computed from their cycles' results: one live-update cycle (its
blackout, its phases, the pages verified) and a CRIU-restored process (its downtime by kind of memory). Each
returns a :class:`~workbench.report.headline.Finding` for :func:`~workbench.report.headline.show_headline`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from workbench.report.headline import Finding, Number, format_value

__all__ = ["cycle_finding", "criu_finding"]


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
