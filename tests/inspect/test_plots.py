"""Figures from helper DataFrames (synthetic here; the notebook draws real ones)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from workbench.inspect.plots import folio_runs, memory_map_figure, sessions_sunburst

MiB = 1 << 20


def _memory_map() -> pd.DataFrame:
    rows = [
        ("System RAM", "", 0x100000, 1 << 30, -1),
        ("scratch", "lowmem", 892 * MiB, 1000 * MiB, -1),
        ("free", "order 10", 100 * MiB, 600 * MiB, 10),
        ("preserved", "order 0", 0x4000000, 0x4800000, 0),
        ("preserved", "order 9", 0x8000000, 0x8200000, 9),
        ("radix tree", "", 0x1000000, 0x1008000, 0),
    ]
    df = pd.DataFrame(rows, columns=["kind", "detail", "start", "end", "order"])
    df["size"] = df["end"] - df["start"]
    return df


def test_memory_map_has_one_lane_per_kind_and_order():
    fig = memory_map_figure(_memory_map())
    assert isinstance(fig, go.Figure)
    names = [t.name for t in fig.data]
    assert names == ["System RAM", "free", "scratch", "radix tree", "preserved order 0", "preserved order 9"]
    scratch = fig.data[names.index("scratch")]
    assert scratch.base[0] == 892 and scratch.x[0] == 108
    assert fig.layout.xaxis.title.text == "physical address (MiB)"


def test_memory_map_merges_bars_beyond_the_limit():
    rows = [("preserved", "order 0", i * 8192, i * 8192 + 4096, 0) for i in range(1000)]
    df = pd.DataFrame(rows, columns=["kind", "detail", "start", "end", "order"])
    fig = memory_map_figure(df, max_bars=100)
    assert len(fig.data[0].x) == 100


def test_folio_runs_split_where_file_or_memory_is_not_contiguous():
    folios = pd.DataFrame({"index": [0, 1, 2, 3, 5], "pfn": [100, 101, 200, 201, 202], "order": [0, 0, 0, 0, 0]})
    runs = folio_runs(folios)
    assert runs.to_dict("list") == {"first_index": [0, 2, 5], "first_pfn": [100, 200, 202], "pages": [2, 2, 1]}


def test_sunburst_sessions_files_runs():
    files = pd.DataFrame(
        {"direction": ["outgoing", "outgoing"], "session": ["s", "s"], "token": [1, 2], "compatible": ["memfd-v2"] * 2}
    )
    folios = pd.DataFrame(
        {
            "direction": ["outgoing"] * 4,
            "session": ["s"] * 4,
            "token": [1, 1, 1, 2],
            "index": [0, 1, 2, 0],
            "pfn": [10, 11, 50, 70],
            "order": [0, 0, 0, 0],
        }
    )
    fig = sessions_sunburst(files, folios)
    trace = fig.data[0]
    values = dict(zip(trace.ids, trace.values, strict=True))
    assert values["outgoing/s"] == 4
    assert values["outgoing/s/1"] == 3 and values["outgoing/s/2"] == 1
    assert values["outgoing/s/1/0"] == 2 and values["outgoing/s/1/2"] == 1
    assert trace.branchvalues == "total"


def test_sunburst_of_no_sessions_is_empty():
    files = pd.DataFrame(columns=["direction", "session", "token", "compatible"])
    assert len(sessions_sunburst(files).data[0].ids or ()) == 0
