"""Every notebook runs top to bottom in a real Jupyter kernel (smoke parameters) and exports to static HTML."""

import json

import nbformat
import pytest

from workbench.notebooks import NOTEBOOK_DIR, execute, export_html, list_notebooks

NOTEBOOKS = list_notebooks()


def test_there_are_notebooks():
    assert any(nb.name.startswith("00-tour") for nb in NOTEBOOKS)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(notebook):
    nb = json.loads(notebook.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{notebook.name} cell {i} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{notebook.name} cell {i} has an execution count"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_parameters_cell_with_smoke(notebook):
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{notebook.name} needs exactly one cell tagged 'parameters'"
    assert "SMOKE = False" in cells[0].source


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom_and_exports(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    executed = execute(notebook, tmp_path / notebook.name, {"SMOKE": True})
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    page = export_html(executed, tmp_path / f"{notebook.stem}.html").read_text()
    if "plotly" in notebook.read_text():
        assert "application/vnd.plotly.v1+json" in json.dumps(nb.dict()) or "Plotly.newPlot" in page
        assert "Plotly.newPlot" in page, "plotly figures must survive the static HTML export"


def test_notebook_dir_is_in_repo():
    assert NOTEBOOK_DIR.is_dir()
