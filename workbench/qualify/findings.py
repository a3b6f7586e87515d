"""A qualification for people: the from × to matrix as a heatmap, the cells as a table, the ABI diff's structs as a
table, and the headline finding for the notebook and the meeting report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from workbench.qualify.outcome import OUTCOMES
from workbench.report.headline import Finding, Number, format_value

__all__ = ["OUTCOME_COLOURS", "matrix_figure", "cells_table", "abi_structs_table", "qualification_finding"]

#: one colour per outcome, from good to bad
OUTCOME_COLOURS = {
    "pass": "#2ca02c",
    "refused": "#ff7f0e",
    "fail": "#d62728",
    "hang": "#9467bd",
    "panic": "#8c1c13",
    "error": "#7f7f7f",
}


def cells_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """One row per cell of a :func:`~workbench.qualify.run.qualify` result: from, to, check, outcome, stage,
    blackout, diagnosis (or the error), pages checked and the cycle's record."""
    rows = [
        {
            "from": r["from"],
            "to": r["to"],
            "check": r["check"],
            "outcome": r["outcome"],
            "stage": r.get("stage"),
            "blackout_s": r.get("blackout_s"),
            "pages_checked": r.get("pages_checked"),
            "diagnosis": r.get("diagnosis") or (r.get("message") if r["outcome"] != "pass" else None),
            "record": (r.get("record_ids") or [None])[0],
        }
        for r in result.get("cells", [])
    ]
    return pd.DataFrame(
        rows,
        columns=["from", "to", "check", "outcome", "stage", "blackout_s", "pages_checked"] + ["diagnosis", "record"],
    )


def _hover(cells: list[Mapping[str, Any]]) -> str:
    lines = []
    for r in cells:
        blackout = f", blackout {format_value(r.get('blackout_s'), 's')}" if r.get("blackout_s") else ""
        why = r.get("diagnosis") or (r.get("message") if r["outcome"] != "pass" else None)
        stage = f" at {r['stage']}" if r.get("stage") else ""
        lines.append(f"{r['check']}: {r['outcome']}{stage}{blackout}" + (f"<br>  {why[:120]}" if why else ""))
    return "<br>".join(lines)


def matrix_figure(result: Mapping[str, Any]):
    """The from × to heatmap of a qualification: each square coloured by the pair's worst outcome, its hover
    listing every check with its outcome, stage, blackout and diagnosis."""
    import plotly.graph_objects as go

    kernels = list(dict.fromkeys([r["from"] for r in result["cells"]] + [r["to"] for r in result["cells"]]))
    by_pair: dict[tuple[str, str], list] = {}
    for r in result["cells"]:
        by_pair.setdefault((r["from"], r["to"]), []).append(r)
    worst = {(p["from"], p["to"]): p["outcome"] for p in result.get("pairs", [])}
    z, text, hover = [], [], []
    for source in kernels:
        z.append([OUTCOMES.index(worst[(source, t)]) if (source, t) in worst else None for t in kernels])
        text.append([worst.get((source, t), "") for t in kernels])
        hover.append([_hover(by_pair.get((source, t), [])) for t in kernels])
    n = len(OUTCOMES)
    scale = []
    for i, outcome in enumerate(OUTCOMES):
        scale += [[i / n, OUTCOME_COLOURS[outcome]], [(i + 1) / n, OUTCOME_COLOURS[outcome]]]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=kernels,
            y=kernels,
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{y} → %{x}<br>%{customdata}<extra></extra>",
            colorscale=scale,
            zmin=-0.5,
            zmax=n - 0.5,
            showscale=False,
            xgap=3,
            ygap=3,
        )
    )
    accel = ", ".join(result.get("accelerators") or []) or "lab VM"
    fig.update_layout(
        title=f"Live update qualification ({accel})",
        xaxis_title="kexec into (to)",
        yaxis_title="booted (from)",
        yaxis_autorange="reversed",
        height=220 + 90 * len(kernels),
    )
    return fig


def abi_structs_table(diff: Mapping[str, Any]) -> pd.DataFrame:
    """The structs of an ABI diff (:meth:`~workbench.inspect.abi_diff.AbiDiff.as_dict`): name, header,
    subsystem, status, sizes in both kernels, whether it breaks the handover, and what changed."""
    rows = [
        {
            "struct": f"{s['kind']} {s['name']}",
            "header": s["header"],
            "subsystem": s["subsystem"],
            "status": s["status"],
            "size_a": s["size_a"],
            "size_b": s["size_b"],
            "breaking": s["breaking"],
            "changes": "; ".join(s["changes"]),
        }
        for s in diff.get("structs", [])
    ]
    columns = ["struct", "header", "subsystem", "status", "size_a", "size_b", "breaking", "changes"]
    return pd.DataFrame(rows, columns=columns)


def qualification_finding(result: Mapping[str, Any], diff: Mapping[str, Any] | None = None) -> Finding:
    """The headline of a qualification (:func:`~workbench.qualify.run.qualify`'s result) and, when given, of the
    ABI diff of its first two kernels: the verdict, what did not pass and why, the cells' outcomes, the wall time
    against the sum of the cells."""
    cells = list(result.get("cells", []))
    outcomes = dict(result.get("outcomes") or {})
    kernels = list(dict.fromkeys(r["from"] for r in cells))
    numbers = [
        Number("qualified", "every cell passed", bool(result.get("qualified")), exact=True),
        Number("cells", "cells", len(cells), exact=True),
    ]
    numbers += [Number(f"cells_{o}", f"cells {o}", int(outcomes.get(o, 0)), exact=True) for o in OUTCOMES]
    numbers += [
        Number("wall_s", "wall time", result.get("wall_s"), "s", better="lower"),
        Number("cells_s", "sum of the cells' times", result.get("cells_s"), "s", better="lower"),
        Number("parallel_speedup", "cells' time / wall time", result.get("parallel_speedup"), "×", better="higher"),
    ]
    if not cells:
        return Finding("No cell of the qualification finished.", numbers)
    bad = [r for r in cells if r["outcome"] != "pass"]
    if bad:
        shown = "; ".join(
            f"{r['from']} → {r['to']} {r['check']}: {r['outcome']}"
            + (f" ({r.get('diagnosis') or r.get('message')})" if r.get("diagnosis") or r.get("message") else "")
            for r in bad[:4]
        )
        verdict = f"{len(bad)} of {len(cells)} cells did not pass: {shown}"
    else:
        verdict = f"all {len(cells)} cells passed, every direction"
    accel = ", ".join(result.get("accelerators") or []) or "lab VM"
    text = (
        f"Live update between {', '.join(kernels)} ({len(cells)} cells, checks "
        f"{', '.join(dict.fromkeys(r['check'] for r in cells))}): {verdict}. The matrix took "
        f"{format_value(result.get('wall_s'), 's')} on {result.get('workers')} worker(s) for "
        f"{format_value(result.get('cells_s'), 's')} of cells ({accel})."
    )
    if diff:
        structs = diff.get("structs", [])
        same = sum(1 for s in structs if s["status"] == "same")
        names = f"{diff['a']['name']} → {diff['b']['name']}"
        text += (
            f" ABI diff {names}: {diff['verdict']}; {same} of {len(structs)} handover structs identical"
            + (f"; {'; '.join(diff['reasons'][:2])}" if diff.get("reasons") else "")
            + "."
        )
        numbers += [
            Number(
                "abi_compatible", "handover bytes compatible (ABI diff)", diff["verdict"] == "compatible", exact=True
            ),
            Number("abi_structs_compared", "handover structs compared", len(structs), exact=True),
            Number("abi_structs_same", "handover structs identical", same, exact=True),
        ]
    return Finding(text, numbers)
