"""The figures of cycles (:mod:`workbench.lab.plots`) from results shaped as the lab returns them: a cycle's
result (``notebooks/10-live-update-cycle.ipynb``, the cycle panel), a table of phase times across runs, and the
rows of the conversion bench in the VM (``notebooks/20-conversion-strategies.ipynb``)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest

from workbench.lab.plots import conversion_end_to_end, cycle_timeline, phase_bars

CYCLE = {
    "record_id": "20260101-120000-abc123",
    "verified": True,
    "pages_checked": 32768,
    "blackout_s": 1.5,
    "phases": {  # in the order agent_result gives them; the timeline orders them itself
        "prepare": 0.8,
        "preserve": 0.05,
        "load": 0.2,
        "kexec": 1.5,
        "restore": 0.1,
        "verify": 0.6,
        "finish": 0.01,
    },
}


def _bars(fig: go.Figure) -> list[tuple[str, float, float]]:
    return [(t.name, float(t.base[0]), float(t.x[0])) for t in fig.data]


def test_cycle_timeline_lays_the_phases_end_to_end_and_shades_the_blackout():
    fig = cycle_timeline(CYCLE)
    assert isinstance(fig, go.Figure) and all(isinstance(t, go.Bar) and t.orientation == "h" for t in fig.data)
    bars = _bars(fig)
    assert [name for name, _, _ in bars] == ["prepare", "preserve", "load", "kexec", "restore", "verify", "finish"]
    ends = 0.0
    for _name, base, width in bars:
        assert base == pytest.approx(ends)
        ends += width
    assert ends == pytest.approx(sum(CYCLE["phases"].values()))
    (shade,) = fig.layout.shapes
    assert (shade.x0, shade.x1) == pytest.approx((1.05, 2.55))  # kexec starts after prepare, preserve and load
    assert [a.text for a in fig.layout.annotations] == ["blackout 1.50 s"]
    assert fig.layout.title.text == "Cycle 20260101-120000-abc123: verified, 32768 pages"
    assert fig.layout.barmode == "stack"
    assert len({t.marker.color for t in fig.data}) == len(fig.data)  # one colour per phase


def test_the_blackouts_named_phases_fill_the_kexec_bar_on_their_own_row():
    anatomy = {"kexec_to_console": 0.2, "early_boot": 0.3, "initcalls": 0.4, "agent_start": 0.5}
    fig = cycle_timeline({**CYCLE, "blackout_phases": anatomy, "unexplained_s": 0.1})
    rows = [(t.name, float(t.base[0]), float(t.x[0])) for t in fig.data if t.y[0] == "blackout"]
    assert [name for name, _, _ in rows] == [*anatomy, "unexplained"]
    assert rows[0][1] == pytest.approx(1.05)  # starts where the kexec bar starts
    assert rows[-1][1] + rows[-1][2] == pytest.approx(1.05 + 1.5)  # and ends where it ends
    assert fig.layout.yaxis.visible is True


def test_cycle_timeline_of_a_failed_cycle_without_kexec_has_no_blackout():
    result = {"phases": {"restore": 0.3, "prepare": 0.5, "convert": 0.2}, "blackout_s": 0.0, "verified": False}
    fig = cycle_timeline(result, title="stopped before the kexec")
    assert _bars(fig) == [("prepare", 0.0, 0.5), ("convert", 0.5, 0.2), ("restore", 0.7, 0.3)]
    assert fig.layout.shapes == () and fig.layout.annotations == ()
    assert fig.layout.title.text == "stopped before the kexec"
    assert cycle_timeline({**result, "record_id": "r1"}).layout.title.text == "Cycle r1: NOT verified, 0 pages"


def test_phase_bars_stacks_each_phase_across_runs_in_cycle_order():
    runs = pd.DataFrame(
        [
            {"run_id": run_id, "phase": phase, "seconds": seconds}
            for run_id, phases in (("r1", CYCLE["phases"]), ("r2", {"verify": 0.7, "prepare": 0.9, "kexec": 1.4}))
            for phase, seconds in phases.items()
        ]
    )
    fig = phase_bars(runs)
    assert [t.name for t in fig.data] == ["prepare", "preserve", "load", "kexec", "restore", "verify", "finish"]
    by_phase = {t.name: dict(zip(t.x, t.y, strict=True)) for t in fig.data}
    assert by_phase["prepare"] == {"r1": 0.8, "r2": 0.9}
    assert by_phase["kexec"] == {"r1": 1.5, "r2": 1.4}
    assert by_phase["load"] == {"r1": 0.2}  # r2 stopped without one
    assert fig.layout.barmode == "stack" and fig.layout.yaxis.title.text == "seconds"
    assert phase_bars(runs.iloc[0:0]).data == ()


def test_conversion_end_to_end_stacks_each_strategys_way_to_a_verified_memfd():
    rows = pd.DataFrame(
        {
            "strategy": ["copy-fresh", "vmsplice-gift", "process_vm_readv"],
            "copier": ["memcpy", "splice", "syscall"],
            "threads": [1, 1, 4],
            "size": [64 << 20] * 3,
            "convert_s": [0.12, 0.30, 0.08],
            "bytes_per_s": [5.6e8, 2.2e8, 8.4e8],
            "preserve_s": [0.010, 0.011, 0.012],
            "blackout_s": [1.7, 1.7, 1.7],
            "retrieve_s": [0.002, 0.003, 0.004],
            "verify_s": [0.4, 0.41, 0.42],
            "end_to_end_s": [2.232, 2.424, 2.216],
            "verified": [True, True, True],
        }
    )
    fig = conversion_end_to_end(rows)
    assert [t.name for t in fig.data] == ["convert", "preserve", "kexec blackout (shared)", "retrieve", "verify"]
    labels = ["copy-fresh (memcpy, 1 thr)", "vmsplice-gift (splice, 1 thr)", "process_vm_readv (syscall, 4 thr)"]
    for trace, column in zip(
        fig.data, ["convert_s", "preserve_s", "blackout_s", "retrieve_s", "verify_s"], strict=True
    ):
        assert trace.orientation == "h" and list(trace.y) == labels
        assert list(trace.x) == list(rows[column])
    assert fig.layout.barmode == "stack" and fig.layout.height == 120 + 32 * 3
