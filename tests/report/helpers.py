"""Headlines and executed notebooks made by hand, for the report's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import plotly.graph_objects as go

from workbench.report.headline import Headline, Number, figure_json


def a_figure(title: str = "a figure") -> dict[str, Any]:
    return figure_json(go.Figure(go.Bar(x=["a", "b"], y=[1.0, 2.0]), layout={"title": title}))


def a_headline(key: str = "cycle", value: float = 1.5, *, verified: bool = True, noise: float | None = None) -> dict:
    """A headline as a notebook displays it: a measured time and an exact verdict, with a figure."""
    return Headline(
        key,
        f"Title of {key}",
        f"The {key} finding <b>in words</b>.",
        (
            Number("blackout_s", "blackout", value, "s", noise=noise, better="lower"),
            Number("verified", "every page came back", verified, exact=True),
        ),
        a_figure(key),
        ("20260101-000000-abcdef",),
    ).to_json()


def executed_notebook(path: Path, outputs_per_cell: list[list[dict[str, Any]]]) -> Path:
    """An executed notebook at ``path`` whose code cells have these outputs (``nbformat.v4.new_output`` dicts)."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# A hand-made notebook"))
    for i, outputs in enumerate(outputs_per_cell):
        cell = nbformat.v4.new_code_cell(f"cell_{i} = {i}", execution_count=i + 1)
        cell.outputs = [nbformat.from_dict(o) for o in outputs]
        nb.cells.append(cell)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path


def display_output(data: dict[str, Any]) -> dict[str, Any]:
    return nbformat.v4.new_output("display_data", data=data)


#: a notebook cell that records a run in the store it was given, then publishes a headline whose exact number
#: is how many such runs the store had before it (so that a second report differs from the first)
COUNTING_CELL = """\
import plotly.graph_objects as go

from workbench.records import open_store
from workbench.report import show_headline

store = open_store()
before = len(store.runs(kind="test.tiny"))
with store.run("test.tiny", {"smoke": SMOKE}) as run:
    pass
show_headline("tiny", "A tiny finding", f"{before} runs before this one.",
              [{"name": "runs_before", "label": "runs before", "value": before, "exact": True},
               {"name": "seconds", "label": "seconds", "value": 1.0 + before, "unit": "s", "better": "lower"}],
              figure=go.Figure(go.Bar(x=["runs"], y=[before])), record_ids=[run.id])
"""


def source_notebook(path: Path, *cells: str) -> Path:
    """A notebook to execute: a ``parameters`` cell (``SMOKE = False``), then ``cells``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {path.stem}"))
    nb.cells.append(nbformat.v4.new_code_cell("SMOKE = False", metadata={"tags": ["parameters"]}))
    nb.cells += [nbformat.v4.new_code_cell(source) for source in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path
