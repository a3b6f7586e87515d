"""Figures and tables of a ``bench blackout`` sweep (:func:`workbench.lab.blackout_bench.run_blackout_sweep`):
each cycle's blackout as its named phases, the slopes per phase, the ratios against the baseline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.lab.blackout_anatomy import PHASES

__all__ = ["anatomy_bars", "phase_slopes", "ratio_table"]

#: the phases inside the blackout, in the order of the boot (``retrieve`` comes after it)
_BLACKOUT_PHASES = tuple(p for p in PHASES if p != "retrieve")
_COLORS = dict(
    zip(_BLACKOUT_PHASES, ("#67000d", "#a50f15", "#2171b5", "#cb181d", "#fb6a4a", "#fc9272", "#bdbdbd"), strict=True)
)


def _label(row: Mapping[str, Any]) -> str:
    memory = int(row["memory_mb"])
    size = f"{memory // 1024} GiB" if memory % 1024 == 0 else f"{memory} MiB"
    return f"{size}, {row['share']:.0%}"


def anatomy_bars(points: pd.DataFrame) -> go.Figure:
    """One stacked bar per point of the sweep (guest RAM, share preserved; the mean over repeats), a panel per
    kernel: the blackout's named phases and what they leave unexplained.

    ``points``: the sweep's ``points`` (one row per cycle, with ``phase_<name>_s`` columns)."""
    kernels = list(dict.fromkeys(points["kernel"]))
    fig = make_subplots(rows=1, cols=len(kernels), shared_yaxes=True, subplot_titles=kernels)
    columns = [f"phase_{p}_s" for p in _BLACKOUT_PHASES if f"phase_{p}_s" in points.columns]
    if "unexplained_s" in points.columns:
        columns.append("unexplained_s")
    means = points.groupby(["kernel", "memory_mb", "share"], as_index=False, sort=True)[columns].mean()
    for col, kernel in enumerate(kernels, start=1):
        rows = means[means["kernel"] == kernel]
        labels = [_label(r) for r in rows.to_dict("records")]
        for column in columns:
            name = column.removeprefix("phase_").removesuffix("_s")
            fig.add_trace(
                go.Bar(
                    x=labels,
                    y=rows[column],
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker_color=_COLORS.get(name, "#d9d9d9"),
                    hovertemplate=f"{name}: %{{y:.3f}} s<extra>{kernel}</extra>",
                ),
                row=1,
                col=col,
            )
    accelerators = ", ".join(sorted(set(points["accelerator"].dropna()))) or "unknown accelerator"
    fig.update_layout(
        barmode="stack",
        height=420,
        title=f"The blackout, phase by phase (guest RAM, share preserved; {accelerators})",
        yaxis_title="seconds",
        legend_orientation="h",
        legend_y=-0.25,
    )
    return fig


def phase_slopes(summary: Mapping[str, Any]) -> pd.DataFrame:
    """The sweep's slopes as a table: per kernel and measured column (the blackout, each phase), seconds per GiB
    of guest RAM and per GiB preserved with their standard errors, and the intercept.

    ``summary``: :func:`workbench.lab.blackout_bench.summarize_points`'s result (or the sweep's)."""
    rows = [
        {"kernel": kernel, "measured": column.removeprefix("phase_").removesuffix("_s"), **fit}
        for kernel, fits in (summary.get("slopes") or {}).items()
        for column, fit in fits.items()
    ]
    columns = ["kernel", "measured", "per_gib_preserved_s", "per_gib_preserved_stderr", "per_gib_ram_s",
               "per_gib_ram_stderr", "intercept_s", "points"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).drop_duplicates(["kernel", "measured"], ignore_index=True)


def ratio_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Per kernel, guest RAM and share: the blackout, its baseline (nothing preserved) and ``blackout_ratio``,
    and the ratio against the first kernel at the same point (``vs_reference_kernel``)."""
    return pd.DataFrame(summary.get("ratios") or [])
