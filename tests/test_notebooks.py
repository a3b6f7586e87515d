"""Every notebook runs top to bottom in a real Jupyter kernel (smoke parameters), exports to static HTML and
publishes its headline with a figure; the report's front page over them renders in Chromium. A recorded notebook
run keeps its headlines, and a failing one says which record it left.

Each notebook is executed once in the whole suite: the session's smoke report (:func:`smoke_report`) runs the
notebooks that the selected tests need, as one ``workbench demo --smoke`` would, and the tests check its output.
"""

import html
import json
from pathlib import Path

import nbformat
import pytest

from tests.chromium import open_page
from workbench.notebooks import NOTEBOOK_DIR, list_notebooks, record_notebook
from workbench.records import RecordStore
from workbench.report.errors import DemoFailed, NotebookFailed, UnknownNotebook

from .report.helpers import COUNTING_CELL, source_notebook

NOTEBOOKS = list_notebooks()
#: the notebooks that boot the lab VM (their tests are marked ``lab`` too)
LAB_NOTEBOOKS = {
    "10-live-update-cycle",
    "15-systemd-guest",
    "20-conversion-strategies",
    "40-inspect-kho-luo",
    "55-blackout-anatomy",
    "60-criu-process",
    "70-qualification",
}


def _run_params():
    return [
        pytest.param(
            nb, id=nb.stem, marks=[pytest.mark.notebook, *([pytest.mark.lab] if nb.stem in LAB_NOTEBOOKS else [])]
        )
        for nb in NOTEBOOKS
    ]


@pytest.fixture(scope="session")
def smoke_report(request, tmp_path_factory):
    """The smoke report of the notebooks the selected tests need (all of them for the front page's test), made
    once by :func:`workbench.report.demo.run_demo` into a fresh record store: ``(report, store)``."""
    from workbench.report.demo import run_demo

    needed = set()
    for item in request.session.items:
        if "smoke_report" not in getattr(item, "fixturenames", ()):
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "notebook" in callspec.params:
            needed.add(callspec.params["notebook"].name)
        else:
            needed.update(nb.name for nb in NOTEBOOKS)
    notebooks = [nb for nb in NOTEBOOKS if nb.name in needed]
    if any(nb.stem in LAB_NOTEBOOKS for nb in notebooks):
        request.getfixturevalue("lab_kernel")  # built (or found in the cache) before any notebook boots it
    store = RecordStore(tmp_path_factory.mktemp("smoke-report") / "data")
    try:
        report = run_demo(store, notebooks, {"SMOKE": True})
    except DemoFailed as exc:
        report = exc.report  # each notebook's test reports its own failure
    return report, store


def _row(report, notebook):
    (row,) = [r for r in report.rows if r["notebook"] == notebook.name]
    return row


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


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_calls_show_headline(notebook):
    assert "show_headline(" in notebook.read_text(), f"{notebook.name} publishes no headline"


@pytest.mark.parametrize("notebook", _run_params())
def test_smoke_run_exports_and_publishes_a_headline_with_a_figure(notebook, smoke_report):
    report, store = smoke_report
    row = _row(report, notebook)
    assert row["status"] == "ok", f"{notebook.name} failed: {row['error']}"
    executed = nbformat.read(store.data_dir / "reports" / report.record_id / "executed" / notebook.name, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    page = (report.index.parent / row["page"]).read_text()
    if "plotly" in notebook.read_text():
        assert "Plotly.newPlot" in page, "plotly figures must survive the static HTML export"
    assert row["headlines"], f"{notebook.name} published no headline"
    for headline in row["headlines"]:
        assert headline["figure"] and headline["figure"]["data"], f"headline {headline['key']} has no figure"
        assert headline["numbers"] and headline["text"]
        assert "Headline: " + html.escape(headline["title"]) in page  # the notebook's own page shows it
        for record_id in headline["record_ids"]:
            assert store.get(record_id).status == "ok"
    stored = store.get(report.record_id).result["headlines"]
    assert [h["key"] for h in stored if h["notebook"] == notebook.name] == [h["key"] for h in row["headlines"]]


@pytest.mark.notebook
@pytest.mark.browser
@pytest.mark.lab
def test_front_page_of_the_smoke_report_in_chromium(smoke_report, tmp_path):
    report, _ = smoke_report
    headlines = [h["key"] for r in report.rows for h in r["headlines"]]
    with open_page({"width": 1920, "height": 1080}) as (page, errors):
        page.goto(report.index.as_uri())
        try:
            page.wait_for_function(
                "n => document.querySelectorAll('.headline .js-plotly-plot .main-svg').length >= n",
                arg=len(headlines),
                timeout=120_000,
            )
        finally:
            page.screenshot(path=str(tmp_path / "front-page.png"), full_page=True)
        cards = page.evaluate(
            "() => [...document.querySelectorAll('.card')].map(c => [c.dataset.notebook, c.className])"
        )
        drawn = page.evaluate(
            "() => [...document.querySelectorAll('.headline')]"
            ".map(h => [h.dataset.key, !!h.querySelector('.js-plotly-plot .main-svg')])"
        )
        widths = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert cards == [[nb.name, "card ok"] for nb in NOTEBOOKS]
    assert drawn == [[key, True] for key in headlines] and len(headlines) >= len(NOTEBOOKS)
    assert widths[0] <= widths[1], f"the page scrolls sideways at 1920 px: {widths}"
    assert not errors, errors


@pytest.mark.notebook
def test_record_notebook_keeps_headlines_and_names_the_record_of_a_failure(tmp_path):
    store = RecordStore(tmp_path / "data")
    good = source_notebook(tmp_path / "nb" / "good.ipynb", COUNTING_CELL)
    summary = record_notebook(store, good, {"SMOKE": True})
    record = store.get(summary["record_id"])
    assert (
        record.kind == "notebook"
        and record.status == "ok"
        and record.params == {"notebook": "good.ipynb", "SMOKE": True}
    )
    assert record.result["headlines"] == summary["headlines"] and summary["headlines"][0]["page"] == "good.html"
    assert Path(record.result["html"]).exists() and Path(record.result["executed"]).exists()
    assert store.runs(kind="test.tiny")[0].params == {"smoke": True}  # the kernel wrote to this store

    failing = source_notebook(tmp_path / "nb" / "failing.ipynb", "raise RuntimeError('boom')")
    with pytest.raises(NotebookFailed, match=r"failing.ipynb failed in cell \d+: RuntimeError: boom \(record ") as err:
        record_notebook(store, failing)
    failed = store.get(err.value.record_id)
    assert failed.status == "failed" and "boom" in failed.error
    assert failed.result["headlines"] == [] and Path(failed.result["executed"]).exists()


def test_record_notebook_refuses_an_unknown_notebook(tmp_path):
    with pytest.raises(UnknownNotebook, match="the notebooks are: 00-tour"):
        record_notebook(RecordStore(tmp_path / "data"), "no-such-thing")
    assert RecordStore(tmp_path / "data").runs() == []


def test_notebook_dir_is_in_repo():
    assert NOTEBOOK_DIR.is_dir()
