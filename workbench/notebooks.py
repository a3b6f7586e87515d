"""The notebooks: finding them, running one headless (papermill), exporting it to a static HTML page, and a
recorded run of one (:func:`record_notebook`, what ``workbench run-notebook`` does). The report built from them (a
front page of findings over every notebook's page) is :mod:`workbench.report`."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.environment import REPO_ROOT
from workbench.report.collect import headlines_of
from workbench.report.errors import BadHeadline, NotebookFailed, UnknownNotebook

if TYPE_CHECKING:
    from workbench.records import RecordStore

__all__ = [
    "NOTEBOOK_DIR",
    "RECORD_KIND",
    "list_notebooks",
    "find_notebook",
    "notebook_title",
    "execute",
    "export_html",
    "record_notebook",
]

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: the kind of the records :func:`record_notebook` makes
RECORD_KIND = "notebook"


def list_notebooks(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.ipynb") if not p.name.startswith("."))


def find_notebook(name: str, directory: Path = NOTEBOOK_DIR) -> Path:
    """A notebook by path, file name, stem, or a unique part of its name (``tour``, ``10``)."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.exists():
        return path
    matches = [p for p in list_notebooks(directory) if name in (p.stem, p.name)] or [
        p for p in list_notebooks(directory) if name in p.stem
    ]
    if len(matches) != 1:
        names = ", ".join(p.stem for p in list_notebooks(directory))
        what = "no notebook" if not matches else f"{len(matches)} notebooks"
        raise FileNotFoundError(f"{what} match {name!r}; the notebooks are: {names}")
    return matches[0]


def execute(
    notebook: Path,
    output: Path,
    parameters: dict[str, Any] | None = None,
    timeout_s: int = 3600,
    log_output: bool = False,
    data_dir: Path | None = None,
) -> Path:
    """Executes ``notebook`` top to bottom in a fresh Jupyter kernel, writing the executed copy to ``output``.
    Raises papermill's ``PapermillExecutionError`` (which names the failing cell) on any error.

    :param data_dir: the record folder the notebook's kernel writes to (its ``WORKBENCH_DATA``); default: this
        process's"""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("PYDEVD_DISABLE_FILE_VALIDATION")
    data_before = os.environ.get("WORKBENCH_DATA")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    if data_dir is not None:
        os.environ["WORKBENCH_DATA"] = str(Path(data_dir).resolve())
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters or {},
            kernel_name="python3",
            cwd=str(notebook.parent),
            execution_timeout=timeout_s,
            progress_bar=False,
            log_output=log_output,
        )
    finally:
        if env_before is None:
            os.environ.pop("PYDEVD_DISABLE_FILE_VALIDATION", None)
        if data_dir is not None:
            if data_before is None:
                os.environ.pop("WORKBENCH_DATA", None)
            else:
                os.environ["WORKBENCH_DATA"] = data_before
    return output


def export_html(executed: Path, html_path: Path) -> Path:
    """A static HTML page of an executed notebook; plotly figures carry plotly.js and work offline."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    # The page must work offline: drop the template's CDN scripts (require.js, MathJax); plotly.js is inline.
    body = re.sub(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>', "", body)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(body)
    tmp.replace(html_path)
    return html_path


def notebook_title(notebook: Path) -> str:
    """The first Markdown heading of ``notebook``, or its file stem when it has none."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return notebook.stem


def record_notebook(
    store: RecordStore, notebook: str | Path, parameters: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Runs ``notebook`` top to bottom in a fresh Jupyter kernel, recorded as a ``notebook`` run whose parameters
    are ``{"notebook": <file name>, **parameters}`` and whose result has ``executed`` (the executed copy in the
    run's folder), ``html`` (its page) and ``headlines`` (see :func:`~workbench.report.collect.headlines_of`).
    The notebook's own records go to the same store.

    :param store: the record store (the notebook's kernel gets its folder as ``WORKBENCH_DATA``)
    :param notebook: a notebook's path, file name, or a unique part of its name (``tour``, ``10``)
    :param parameters: overrides of the notebook's parameters cell, e.g. ``{"SMOKE": True}``
    :returns: ``notebook``, ``record_id``, ``executed``, ``html`` and ``headlines``
    :raises ~workbench.report.errors.UnknownNotebook: no notebook, or several, match ``notebook``
    :raises ~workbench.report.errors.NotebookFailed: a cell raised, or a headline is malformed; the record (its
        id is in the exception and its message) is kept as failed, with the executed copy up to the error
    """
    from papermill.exceptions import PapermillExecutionError

    path = Path(notebook)
    if not (path.suffix == ".ipynb" and path.exists()):
        try:
            path = find_notebook(str(notebook))
        except FileNotFoundError as exc:
            raise UnknownNotebook(str(exc)) from None
    params = dict(parameters or {})
    with store.run(RECORD_KIND, {"notebook": path.name, **params}) as run:
        executed = run.artifacts_dir / path.name
        failure, cause = None, None
        try:
            execute(path, executed, params, data_dir=store.data_dir)
        except PapermillExecutionError as exc:
            failure, cause = f"{path.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}", exc
        except Exception as exc:  # noqa: BLE001 - the kernel died or timed out: the notebook failed all the same
            failure, cause = f"{path.name} stopped: {type(exc).__name__}: {exc}", exc
        page = export_html(executed, run.artifacts_dir / f"{path.stem}.html") if executed.exists() else None
        headlines: list[dict[str, Any]] = []
        if executed.exists():
            try:
                headlines = headlines_of(executed, page.name if page else None)
            except BadHeadline as exc:
                if failure is None:
                    failure, cause = f"{path.name} published a malformed headline: {exc}", exc
        run.update_result(executed=str(executed), html=str(page) if page else None, headlines=headlines)
        if failure:
            raise NotebookFailed(f"{failure} (record {run.id})", run.id, path.name) from cause
    return {
        "notebook": path.name,
        "record_id": run.id,
        "executed": str(executed),
        "html": str(page),
        "headlines": headlines,
    }
