"""The headline finding of the KHO/LUO inspection notebook: what drgn read in the lab kernel at the pauses of one
cycle, against what the agent recorded, in a dump, and after the kexec. Returns a
:class:`~workbench.report.headline.Finding` for :func:`~workbench.report.headline.show_headline`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from workbench.inspect.snapshot import Snapshot
from workbench.report.headline import Finding, Number, format_value

__all__ = ["inspection_finding"]


def _rows(snap: Snapshot, table: str) -> int:
    frame = snap.tables.get(table)
    return 0 if frame is None else len(frame)


def inspection_finding(
    result: Mapping[str, Any],
    preserved: Snapshot,
    checks: pd.DataFrame,
    dump_agrees: Mapping[str, bool],
    frames_kept: Mapping[str, bool],
) -> Finding:
    """What the inspection found.

    :param result: the cycle's result (:func:`workbench.lab.cycle.run_cycle`)
    :param preserved: the snapshot taken after preserve
    :param checks: one row per memfd with ``pfns equal frames-before`` (the kernel's page cache holds the frames
        the agent recorded) and ``all preserved in KHO`` (all of them are in KHO's radix tree)
    :param dump_agrees: each fact or table of the offline dump -> whether it equals the live snapshot's
    :param frames_kept: each check after the kexec -> whether the next kernel holds the same frames
    """
    same_frames = bool(len(checks)) and bool(checks["pfns equal frames-before"].all())
    in_kho = bool(len(checks)) and bool(checks["all preserved in KHO"].all())
    dump = bool(dump_agrees) and all(bool(v) for v in dump_agrees.values())
    kept = bool(frames_kept) and all(bool(v) for v in frames_kept.values())
    verified = bool(result.get("verified"))
    sessions, memfds = _rows(preserved, "sessions"), _rows(preserved, "memfds")
    folios, kho = _rows(preserved, "memfd_folios"), _rows(preserved, "preserved")
    numbers = [
        Number("verified", "every page came back", verified, exact=True),
        Number("sessions", "LUO sessions after preserve", sessions, exact=True),
        Number("memfds", "preserved memfds", memfds, exact=True),
        Number("memfd_folios", "memfd folios", folios, exact=True),
        Number("kho_preserved_folios", "folios in KHO's radix tree", kho, exact=True),
        Number("frames_match_agent", "folios at the frames the agent recorded", same_frames, exact=True),
        Number("all_in_kho", "all of them preserved in KHO", in_kho, exact=True),
        Number("dump_agrees", "the vmcore says the same", dump, exact=True),
        Number("frames_kept", "same frames after the kexec", kept, exact=True),
        Number("blackout_s", "blackout", result.get("blackout_s"), "s", better="lower"),
    ]

    def said(ok: bool, yes: str, no: str) -> str:
        return yes if ok else no

    text = (
        f"drgn read the lab kernel's own structures while the cycle was paused: after preserve, LUO held {sessions} "
        f"session(s) with {memfds} memfd(s) and {folios:,} folios, "
        + said(same_frames, "exactly at the frames the agent recorded", "NOT at the frames the agent recorded")
        + said(
            in_kho, f", every one among the {kho:,} folios in KHO's radix tree", ", NOT all of them in KHO's radix tree"
        )
        + "; "
        + said(dump, "the vmcore written at that pause says the same", "the vmcore DISAGREES with the live kernel")
        + "; after the kexec, "
        + said(kept, "the next kernel handed back the very same frames", "the next kernel's frames DIFFER")
        + f" ({said(verified, 'every page verified', 'NOT verified')}, blackout "
        + f"{format_value(result.get('blackout_s'), 's')})."
    )
    return Finding(text, numbers)
