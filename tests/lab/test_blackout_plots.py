"""The figures and tables of a ``bench blackout`` sweep, from points made with known phases."""

import pandas as pd
import pytest

from workbench.lab.blackout_bench import summarize_points
from workbench.lab.blackout_plots import anatomy_bars, phase_slopes, ratio_table

PHASES = {"kexec_to_console": 0.6, "early_boot": 0.08, "initcalls": 1.2, "kernel_to_init": 0.01, "agent_start": 5.0}


def anatomy_points(repeats: int = 2) -> pd.DataFrame:
    rows = []
    for kernel in ("7.2", "7.2+deferred-init"):
        for memory in (1024, 2048):
            for share in (0.0, 0.5):
                preserved_gib = memory * share / 1024
                for repeat in range(repeats):
                    phases = dict(PHASES, memmap_init=0.02 * memory / 1024, kho_restore=2.5 * preserved_gib)
                    phases["initcalls"] += 0.1 * repeat
                    rows.append(
                        {"kernel": kernel, "memory_mb": memory, "share": share, "repeat": repeat,
                         "preserved_bytes": int(preserved_gib * (1 << 30)), "blackout_s": sum(phases.values()),
                         "unexplained_s": 0.0, "accelerator": "tcg", "tcg_threads": "single",
                         "agent_start_s": phases["agent_start"]}
                        | {f"phase_{name}_s": seconds for name, seconds in phases.items()}
                    )  # fmt: skip
    return pd.DataFrame(rows)


def test_anatomy_bars_stack_each_points_mean_phases_in_a_panel_per_kernel():
    points = anatomy_points()
    fig = anatomy_bars(points)
    first_panel = [trace for trace in fig.data if trace.xaxis == "x"]
    assert {trace.name for trace in first_panel} >= {"memmap_init", "kho_restore", "agent_start", "unexplained"}
    assert "retrieve" not in {trace.name for trace in fig.data}
    labels = list(first_panel[0].x)
    assert labels == ["1 GiB, 0%", "1 GiB, 50%", "2 GiB, 0%", "2 GiB, 50%"]
    stacked = [sum(trace.y[i] for trace in first_panel) for i in range(len(labels))]
    means = points[points["kernel"] == "7.2"].groupby(["memory_mb", "share"])["blackout_s"].mean()
    assert stacked == pytest.approx(list(means))
    assert "tcg" in fig.layout.title.text and len({trace.xaxis for trace in fig.data}) == 2


def test_phase_slopes_and_ratios_as_tables():
    summary = summarize_points(anatomy_points())
    slopes = phase_slopes(summary).set_index(["kernel", "measured"])
    assert slopes.loc[("7.2", "kho_restore"), "per_gib_preserved_s"] == pytest.approx(2.5)
    assert slopes.loc[("7.2", "memmap_init"), "per_gib_ram_s"] == pytest.approx(0.02)
    assert not slopes.index.duplicated().any()  # agent_start_s and phase_agent_start_s are one row
    ratios = ratio_table(summary)
    assert len(ratios) == 8 and list(ratios.loc[ratios["share"] == 0, "blackout_ratio"]) == pytest.approx([1.0] * 4)
    assert phase_slopes({}).empty and ratio_table({}).empty
