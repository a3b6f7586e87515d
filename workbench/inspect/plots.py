"""Plotly figures of KHO/LUO state. They take the DataFrames the helpers return (so the data can be collected
while a VM is paused and drawn later), not a live program.

* :func:`memory_map_figure` — physical memory as bands: System RAM, free memory, KHO scratch, the radix tree's
  own pages and preserved folios by order (from :func:`workbench.inspect.kho.memory_map`);
* :func:`sessions_sunburst` — LUO sessions → preserved files → folios (contiguous runs of pfns), sized by pages
  (from :func:`workbench.inspect.luo.luo_files` and :func:`workbench.inspect.memfd.preserved_memfd_folios`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["memory_map_figure", "sessions_sunburst", "folio_runs"]

_MiB = 1 << 20
_COLORS = {
    "System RAM": "#d9d9d9",
    "free": "#a1d99b",
    "scratch": "#fdae6b",
    "radix tree": "#9e9ac8",
}
_ORDER_COLORS = ["#08519c", "#3182bd", "#6baed6", "#e6550d", "#a63603", "#756bb1", "#31a354", "#636363"]


def _lane(row) -> str:
    if row.kind == "preserved":
        return f"preserved order {int(row.order)}"
    if row.kind == "free":
        return "free"
    return row.kind


def memory_map_figure(memory_map: pd.DataFrame, title: str | None = None, max_bars: int = 20000) -> go.Figure:
    """Physical memory as horizontal bands, one lane per kind (preserved folios one lane per order); x is the
    physical address in MiB. Hovering a bar shows its range and size.

    :param memory_map: rows ``kind``, ``detail``, ``start``, ``end``, ``order``
        (:func:`~workbench.inspect.kho.memory_map`)
    :param max_bars: ranges beyond this many per lane are merged with their neighbours for drawing
    """
    df = memory_map.copy()
    df["lane"] = [_lane(r) for r in df.itertuples()]
    preserved_lanes = sorted(
        {lane for lane in df["lane"] if lane.startswith("preserved")}, key=lambda s: int(s.split()[-1])
    )
    lanes = [
        lane for lane in ("System RAM", "free", "scratch", "radix tree") if lane in set(df["lane"])
    ] + preserved_lanes
    fig = go.Figure()
    for lane in lanes:
        part = df[df["lane"] == lane].sort_values("start")
        if len(part) > max_bars:
            step = -(-len(part) // max_bars)
            groups = np.arange(len(part)) // step
            part = part.groupby(groups).agg(start=("start", "min"), end=("end", "max"), detail=("detail", "first"))
        start = part["start"].to_numpy(np.float64) / _MiB
        width = (part["end"].to_numpy(np.float64) - part["start"].to_numpy(np.float64)) / _MiB
        color = _COLORS.get(lane) or _ORDER_COLORS[int(lane.split()[-1]) % len(_ORDER_COLORS)]
        hover = [
            f"{lane} {d}<br>{int(s):#x}–{int(e):#x}<br>{(int(e) - int(s)) / _MiB:.3f} MiB"
            for s, e, d in zip(part["start"], part["end"], part["detail"], strict=True)
        ]
        fig.add_trace(
            go.Bar(
                y=[lane] * len(part),
                x=np.maximum(width, 1 / 256),  # one page of a 1 GiB map is invisible otherwise
                base=start,
                orientation="h",
                name=lane,
                marker_color=color,
                marker_line_width=0,
                hovertext=hover,
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title=title or "Physical memory: KHO scratch, preserved folios, free memory",
        barmode="overlay",
        xaxis_title="physical address (MiB)",
        yaxis={"categoryorder": "array", "categoryarray": lanes[::-1]},
        height=180 + 40 * len(lanes),
        showlegend=False,
        bargap=0.2,
    )
    return fig


def folio_runs(folios: pd.DataFrame) -> pd.DataFrame:
    """Merges folios that are contiguous both in the file and in physical memory: rows ``first_index``,
    ``first_pfn``, ``pages``.

    :param folios: ``index``, ``pfn``, ``order`` of one file
    """
    if folios.empty:
        return pd.DataFrame(columns=["first_index", "first_pfn", "pages"])
    f = folios.sort_values("index")
    index = f["index"].to_numpy(np.int64)
    pfn = f["pfn"].to_numpy(np.int64)
    pages = np.left_shift(1, f["order"].to_numpy(np.int64))
    breaks = np.flatnonzero((np.diff(index) != pages[:-1]) | (np.diff(pfn) != pages[:-1])) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(f)]])
    return pd.DataFrame(
        {
            "first_index": index[starts],
            "first_pfn": pfn[starts],
            "pages": [int(pages[s:e].sum()) for s, e in zip(starts, ends, strict=True)],
        }
    )


def sessions_sunburst(
    files: pd.DataFrame, folios: pd.DataFrame | None = None, title: str | None = None, max_runs_per_file: int = 64
) -> go.Figure:
    """Sessions → files → folio runs as a sunburst sized by pages (a file without known folios counts 1).

    :param files: ``direction``, ``session``, ``token``, ``compatible`` (:func:`~workbench.inspect.luo.luo_files`)
    :param folios: ``direction``, ``session``, ``token``, ``index``, ``pfn``, ``order``
        (:func:`~workbench.inspect.memfd.preserved_memfd_folios`)
    :param max_runs_per_file: runs beyond this many are lumped into one "other" wedge
    """
    ids, labels, parents, values, hover = [], [], [], [], []

    def add(node_id: str, label: str, parent: str, value: float, text: str) -> None:
        ids.append(node_id)
        labels.append(label)
        parents.append(parent)
        values.append(value)
        hover.append(text)

    folios = (
        folios
        if folios is not None
        else pd.DataFrame(columns=["direction", "session", "token", "index", "pfn", "order"])
    )
    sessions = files.groupby(["direction", "session"], sort=False)
    for (direction, session), group in sessions:
        sid = f"{direction}/{session}"
        session_pages = 0
        file_nodes = []
        for row in group.itertuples():
            fid = f"{sid}/{int(row.token)}"
            mine = folios[
                (folios["direction"] == direction) & (folios["session"] == session) & (folios["token"] == row.token)
            ]
            runs = folio_runs(mine[["index", "pfn", "order"]]) if len(mine) else folio_runs(mine)
            pages = int(runs["pages"].sum()) if len(runs) else 1
            session_pages += pages
            file_nodes.append((fid, row, pages, runs))
        add(
            sid,
            f"{session} ({direction})",
            "",
            session_pages,
            f"session {session}, {direction}<br>{session_pages} pages",
        )
        for fid, row, pages, runs in file_nodes:
            add(fid, f"token {int(row.token)}", sid, pages, f"{row.compatible} token {int(row.token)}<br>{pages} pages")
            shown = runs.sort_values("pages", ascending=False).head(max_runs_per_file)
            for r in shown.itertuples():
                add(
                    f"{fid}/{int(r.first_index)}",
                    f"pfn {int(r.first_pfn):#x} ×{int(r.pages)}",
                    fid,
                    int(r.pages),
                    f"file pages {int(r.first_index)}–{int(r.first_index) + int(r.pages) - 1}<br>"
                    f"pfn {int(r.first_pfn):#x}–{int(r.first_pfn) + int(r.pages) - 1:#x}<br>{int(r.pages)} pages",
                )
            rest = int(runs["pages"].sum()) - int(shown["pages"].sum()) if len(runs) else 0
            if rest > 0:
                add(f"{fid}/other", f"{len(runs) - len(shown)} more runs", fid, rest, f"{rest} pages in smaller runs")
    fig = go.Figure(
        go.Sunburst(
            ids=ids,
            labels=labels,
            parents=parents,
            values=values,
            branchvalues="total",
            hovertext=hover,
            hoverinfo="text",
        )
    )
    fig.update_layout(title=title or "LUO sessions → files → folios (pages)", margin={"t": 50, "l": 0, "r": 0, "b": 0})
    return fig
