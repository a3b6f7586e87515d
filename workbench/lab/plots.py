"""Figures of cycles: a timeline of the phases with the blackout window marked, and phase times across runs."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

__all__ = ["conversion_end_to_end", "cycle_timeline", "phase_bars"]

_ORDER = ("prepare", "convert", "preserve", "load", "kexec", "restore", "verify", "finish")
_COLORS = {
    "prepare": "#9ecae1",
    "convert": "#fd8d3c",
    "preserve": "#4292c6",
    "load": "#6baed6",
    "kexec": "#de2d26",
    "restore": "#41ab5d",
    "verify": "#74c476",
    "finish": "#a1d99b",
}


def cycle_timeline(result: dict[str, Any], title: str | None = None) -> go.Figure:
    """Phases laid end to end on one time axis (seconds since prepare began), the blackout shaded and, when the
    cycle reports them, its named phases on a second row (kexec → console, early boot, ..., agent start)."""
    t = 0.0
    fig = go.Figure()
    blackout = None
    for name in _ORDER:
        if name not in result["phases"]:
            continue
        secs = float(result["phases"][name])
        fig.add_trace(
            go.Bar(
                x=[secs],
                y=["cycle"],
                base=[t],
                orientation="h",
                name=name,
                marker_color=_COLORS[name],
                hovertemplate=f"{name}: %{{x:.3f}} s<extra></extra>",
            )
        )
        if name == "kexec":
            blackout = (t, t + secs)
        t += secs
    if blackout:
        _add_anatomy(fig, result, blackout[0])
        fig.add_vrect(
            x0=blackout[0],
            x1=blackout[1],
            fillcolor="red",
            opacity=0.12,
            line_width=0,
            annotation_text=f"blackout {result['blackout_s']:.2f} s",
            annotation_position="top left",
        )
    verdict = "verified" if result.get("verified") else "NOT verified"
    fig.update_layout(
        barmode="stack",
        height=260,
        xaxis_title="seconds (guest clock per phase; kexec on the host clock)",
        title=title or f"Cycle {result.get('record_id', '')}: {verdict}, {result.get('pages_checked', 0)} pages",
        legend_orientation="h",
        legend_traceorder="normal",
        legend_y=-0.4,
        yaxis_visible=bool(result.get("blackout_phases")),
    )
    return fig


#: the blackout's named phases (:mod:`workbench.lab.blackout_anatomy`), lightest for the lab's own start-up
_ANATOMY_COLORS = ("#67000d", "#a50f15", "#cb181d", "#ef3b2c", "#fb6a4a", "#fc9272", "#fcbba1", "#fee0d2")


def _add_anatomy(fig: go.Figure, result: dict[str, Any], start: float) -> None:
    """The blackout's named phases, on a row of their own under the kexec bar, and what they leave unexplained."""
    phases = dict(result.get("blackout_phases") or {})
    if result.get("unexplained_s"):
        phases["unexplained"] = result["unexplained_s"]
    t = start
    for i, (name, secs) in enumerate(phases.items()):
        if not secs:
            continue
        fig.add_trace(
            go.Bar(
                x=[float(secs)],
                y=["blackout"],
                base=[t],
                orientation="h",
                name=name,
                marker_color="#bdbdbd" if name == "unexplained" else _ANATOMY_COLORS[i % len(_ANATOMY_COLORS)],
                hovertemplate=f"{name}: %{{x:.3f}} s<extra></extra>",
            )
        )
        t += float(secs)


def phase_bars(runs: pd.DataFrame) -> go.Figure:
    """Phase seconds of several runs side by side; ``runs`` has columns run_id, phase, seconds."""
    fig = go.Figure()
    for name in _ORDER:
        part = runs[runs["phase"] == name]
        if part.empty:
            continue
        fig.add_trace(go.Bar(x=part["run_id"], y=part["seconds"], name=name, marker_color=_COLORS[name]))
    fig.update_layout(barmode="stack", yaxis_title="seconds", xaxis_title="run")
    return fig


_END_TO_END_PARTS = (
    ("convert_s", "convert", "convert"),
    ("preserve_s", "preserve", "preserve"),
    ("blackout_s", "kexec", "kexec blackout (shared)"),
    ("retrieve_s", "restore", "retrieve"),
    ("verify_s", "verify", "verify"),
)


def conversion_end_to_end(rows: pd.DataFrame) -> go.Figure:
    """Anonymous memory → a verified memfd after the kexec, one stacked bar per strategy: its conversion,
    preserve, the blackout every memfd of the cycle shares, retrieve and verify (``rows`` from
    :func:`workbench.lab.conversion_bench.bench_in_vm`, one size)."""
    labels = rows["strategy"] + " (" + rows["copier"] + ", " + rows["threads"].astype(str) + " thr)"
    fig = go.Figure()
    for column, phase, name in _END_TO_END_PARTS:
        fig.add_trace(
            go.Bar(
                y=labels,
                x=rows[column],
                orientation="h",
                name=name,
                marker_color=_COLORS[phase],
                hovertemplate=f"{name}: %{{x:.3f}} s<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="stack",
        height=120 + 32 * len(rows),
        xaxis_title="seconds (guest clock; blackout on the host clock)",
        title="Anonymous memory → survived the kexec, per strategy",
        legend_orientation="h",
        legend_y=-0.25,
    )
    return fig
