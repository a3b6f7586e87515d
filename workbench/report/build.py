"""Building the report: every notebook executed headless into one folder, one HTML page each, its headlines
collected, and the front page (``index.html``) written over them."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from workbench.notebooks import execute, export_html, notebook_title
from workbench.report.collect import headlines_of
from workbench.report.errors import BadHeadline
from workbench.report.front_page import write_front_page
from workbench.report.machine import machine_of

__all__ = ["run_notebooks", "build_report", "describe_parameters"]


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Sends file descriptor 2 (and so the Jupyter kernels started meanwhile, which inherit it) to ``path``: their
    start-up warnings belong in the report's log, not between the demo's progress lines."""
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


def describe_parameters(parameters: Mapping[str, Any] | None) -> str:
    """The notebooks' parameters in words: ``smoke``, ``full`` or ``meeting-sized``, then any other override."""
    parameters = dict(parameters or {})
    smoke, full = parameters.pop("SMOKE", False), parameters.pop("FULL", False)
    size = "smoke" if smoke else "full" if full else "meeting-sized"
    return ", ".join([size, *(f"{k}={v!r}" for k, v in parameters.items())])


def run_notebooks(
    out_dir: Path,
    notebooks: Iterable[Path],
    parameters: dict[str, Any] | None = None,
    on_notebook: Callable[[Path, str, float], None] | None = None,
    data_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Executes each notebook into ``out_dir/executed/`` and writes its HTML page ``out_dir/<stem>.html``.

    A notebook that fails still gets a page (its executed copy up to the error) and is marked failed; so is one
    whose headline output is malformed. Returns one row per notebook: ``notebook``, ``title``, ``status`` (``ok``
    or ``failed``), ``error``, ``seconds``, ``page`` (file name, or None) and ``headlines`` (as
    :func:`~workbench.report.collect.headlines_of` returns them).

    :param parameters: the parameters cell's overrides, the same for every notebook (e.g. ``{"SMOKE": True}``)
    :param on_notebook: called after each notebook with its path, status and seconds
    :param data_dir: the record folder the notebooks write to; default: this process's ``WORKBENCH_DATA``
    """
    from papermill.exceptions import PapermillExecutionError

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for nb in notebooks:
        executed = out_dir / "executed" / nb.name
        t0 = time.monotonic()
        status, error = "ok", None
        try:
            with _stderr_to(out_dir / "kernels.log"):
                execute(nb, executed, parameters, data_dir=data_dir)
        except PapermillExecutionError as exc:
            status, error = "failed", f"{exc.ename}: {exc.evalue}"
        except Exception as exc:  # noqa: BLE001 - the kernel died or timed out: this notebook failed, go on
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        page = export_html(executed, out_dir / f"{nb.stem}.html") if executed.exists() else None
        headlines: list[dict[str, Any]] = []
        if executed.exists():
            try:
                headlines = headlines_of(executed, page.name if page else None)
            except BadHeadline as exc:
                status, error = "failed", f"malformed headline: {exc}"
        seconds = time.monotonic() - t0
        if on_notebook:
            on_notebook(nb, status, seconds)
        rows.append(
            {
                "notebook": nb.name,
                "title": notebook_title(nb),
                "status": status,
                "error": error,
                "seconds": seconds,
                "page": page.name if page else None,
                "headlines": headlines,
            }
        )
    return rows


def build_report(
    out_dir: Path,
    notebooks: Iterable[Path],
    parameters: dict[str, Any] | None = None,
    on_notebook: Callable[[Path, str, float], None] | None = None,
    data_dir: Path | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """:func:`run_notebooks`, then the front page ``out_dir/index.html`` over them (this host's facts, no
    comparison: :func:`workbench.report.demo.run_demo` adds the lab VMs and what changed). Returns the front page
    and the rows."""
    rows = run_notebooks(out_dir, notebooks, parameters, on_notebook, data_dir)
    index = write_front_page(out_dir / "index.html", rows, machine_of(), parameters=describe_parameters(parameters))
    return index, rows
