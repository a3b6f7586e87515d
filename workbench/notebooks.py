"""Running the notebooks headless (papermill), recording each run, and exporting a static HTML report."""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workbench.environment import REPO_ROOT

__all__ = ["NOTEBOOK_DIR", "list_notebooks", "find_notebook", "execute", "export_html", "build_report"]

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def list_notebooks(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.ipynb") if not p.name.startswith("."))


def find_notebook(name: str, directory: Path = NOTEBOOK_DIR) -> Path:
    """A notebook by path, file name, stem, or a unique part of its name (``tour``, ``10``)."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.exists():
        return path
    matches = [p for p in list_notebooks(directory) if name in p.stem]
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
) -> Path:
    """Executes ``notebook`` top to bottom in a fresh Jupyter kernel, writing the executed copy to ``output``.
    Raises papermill's ``PapermillExecutionError`` (which names the failing cell) on any error."""
    import papermill

    output.parent.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get("PYDEVD_DISABLE_FILE_VALIDATION")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
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


def _title(notebook: Path) -> str:
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return notebook.stem


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Sends file descriptor 2 (and so the Jupyter kernels started meanwhile, which inherit it) to ``path``: their
    start-up warnings belong in the report's log, not between the demo's progress lines."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def build_report(
    out_dir: Path,
    notebooks: Iterable[Path],
    parameters: dict[str, Any] | None = None,
    on_notebook: Callable[[Path, str, float], None] | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Executes each notebook and writes one HTML page per notebook plus ``index.html`` into ``out_dir``.
    A notebook that fails still gets a page (its executed copy up to the error) and is marked failed."""
    from papermill.exceptions import PapermillExecutionError

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for nb in notebooks:
        executed = out_dir / "executed" / nb.name
        t0 = time.monotonic()
        status, error = "ok", None
        try:
            with _stderr_to(out_dir / "kernels.log"):
                execute(nb, executed, parameters)
        except PapermillExecutionError as exc:
            status, error = "failed", f"{exc.ename}: {exc.evalue}"
        page = export_html(executed, out_dir / f"{nb.stem}.html") if executed.exists() else None
        seconds = time.monotonic() - t0
        if on_notebook:
            on_notebook(nb, status, seconds)
        rows.append(
            {
                "notebook": nb.name,
                "title": _title(nb),
                "status": status,
                "error": error,
                "seconds": seconds,
                "page": page.name if page else None,
            }
        )
    items = "\n".join(
        f'<li class="{r["status"]}"><a href="{html.escape(r["page"] or "")}">{html.escape(r["title"])}</a> '
        f"<small>{html.escape(r['notebook'])}: {r['status']} in {r['seconds']:.0f} s"
        f"{' (' + html.escape(r['error']) + ')' if r['error'] else ''}</small></li>"
        for r in rows
    )
    index = out_dir / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Live Update Workbench report</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}li{margin:.5em 0}"
        ".failed a{color:#b00}</style></head><body><h1>Live Update Workbench report</h1>"
        f"<p>Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.</p><ol>{items}</ol></body></html>"
    )
    return index, rows
