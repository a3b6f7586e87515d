"""The demo: every notebook run headless into one report, recorded as a ``demo`` experiment whose result keeps
every notebook's headlines and their comparison with earlier reports on this machine (``workbench demo``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.records import RecordStore
from workbench.report.build import describe_parameters, run_notebooks
from workbench.report.changes import Changes, changes_since, chosen_reports
from workbench.report.errors import DemoFailed
from workbench.report.front_page import write_front_page
from workbench.report.machine import machine_of

__all__ = ["DemoReport", "run_demo", "RECORD_KIND"]

#: the kind of the records :func:`run_demo` makes
RECORD_KIND = "demo"


@dataclass(frozen=True)
class DemoReport:
    """A finished demo: its record, its front page, one row per notebook (see
    :func:`~workbench.report.build.run_notebooks`) and the comparison with earlier reports."""

    record_id: str
    index: Path
    rows: list[dict[str, Any]]
    changes: Changes

    @property
    def failed(self) -> list[str]:
        return [r["notebook"] for r in self.rows if r["status"] != "ok"]


def run_demo(
    store: RecordStore,
    notebooks: Sequence[Path],
    parameters: dict[str, Any] | None = None,
    *,
    compare_with: Iterable[str] = (),
    on_start: Callable[[Path], None] | None = None,
    on_notebook: Callable[[Path, str, float], None] | None = None,
) -> DemoReport:
    """Runs ``notebooks`` into ``<data>/reports/<record id>/`` inside a ``demo`` record and writes the front page.

    The record's parameters are ``smoke``, ``full`` and ``notebooks`` (and ``compare_with`` when given); its
    result has ``report`` (the front page), ``notebooks`` (each one's status, error, seconds and page),
    ``failed``, ``headlines`` (every notebook's, see :func:`~workbench.report.collect.headlines_of`),
    ``machine`` and ``changes`` (:meth:`Changes.as_json`).

    :param store: the record store; the notebooks' kernels write their records to it too
    :param notebooks: the notebooks, in the order they run
    :param parameters: the parameters cell's overrides for every notebook: ``{"SMOKE": True}``, ``{"FULL": True}``
        or None for the meeting-sized defaults
    :param compare_with: demo record ids to compare with instead of the previous report on this machine; checked
        before any notebook runs
    :param on_start: called with the report's folder before the first notebook
    :param on_notebook: called after each notebook with its path, status and seconds
    :raises ~workbench.report.errors.ChangesError: a ``compare_with`` record cannot be compared with (nothing ran)
    :raises ~workbench.report.errors.DemoFailed: some notebooks failed; the report and the record (failed) were
        still written, with every other notebook's headlines
    """
    chosen = [r.id for r in chosen_reports(store, compare_with)]
    smoke = bool(parameters and parameters.get("SMOKE"))
    full = bool(parameters and parameters.get("FULL"))
    params: dict[str, Any] = {"smoke": smoke, "full": full, "notebooks": [nb.name for nb in notebooks]}
    if chosen:
        params["compare_with"] = chosen
    with store.run(RECORD_KIND, params) as run:
        out_dir = store.data_dir / "reports" / run.id
        if on_start:
            on_start(out_dir)
        rows = run_notebooks(out_dir, notebooks, parameters, on_notebook, data_dir=store.data_dir)
        headlines = [h for row in rows for h in row["headlines"]]
        failed = [r["notebook"] for r in rows if r["status"] != "ok"]
        index = out_dir / "index.html"
        summaries = [{k: v for k, v in row.items() if k != "headlines"} for row in rows]
        run.update_result(report=str(index), notebooks=summaries, failed=failed, headlines=headlines)
        record = store.get(run.id)
        changes = changes_since(
            store,
            headlines,
            hostname=record.environment.get("hostname"),
            smoke=smoke,
            full=full,
            before=record.started,
            exclude=[run.id],
            compare_with=chosen or None,
            notebooks=[nb.name for nb in notebooks],
        )
        machine = machine_of(record.environment, store, since=record.started)
        write_front_page(
            index,
            rows,
            machine,
            changes=changes,
            parameters=describe_parameters(parameters),
            record_id=run.id,
        )
        run.update_result(machine=machine.as_dict(), changes=changes.as_json())
        report = DemoReport(run.id, index, rows, changes)
        if failed:
            raise DemoFailed(
                f"notebooks failed: {', '.join(failed)}; the report is still at {index} (record {run.id})",
                run.id,
                index,
                failed,
                report,
            )
    return report
