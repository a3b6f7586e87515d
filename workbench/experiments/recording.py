"""Recording one experiment: its summary, tables and JSON file, whole, in one record."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.records import ActiveRun, RecordStore, write_json_atomic

__all__ = ["record_summary"]


def record_summary(
    store: RecordStore,
    kind: str,
    params: dict[str, Any],
    body: Callable[[ActiveRun], dict[str, Any]],
    *,
    output: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Runs ``body(run)`` inside a record of ``kind`` with ``params``; stores the summary it returns as the
    record's result (its ``tables`` entry, a dict of DataFrames, as the record's tables) and writes it as JSON to
    ``output`` (default: ``<kind>.json`` in the run's folder). Returns the summary (with ``record_id``) and the
    JSON file's path. An exception in ``body`` leaves the record ``failed`` and propagates."""
    with store.run(kind, params) as run:
        summary = body(run)
        tables = summary.pop("tables", {})
        for name, frame in tables.items():
            run.add_table(name, frame)
        summary["record_id"] = run.id
        run.update_result(**{k: v for k, v in summary.items() if k != "record_id"})
        path = write_json_atomic(output or (run.artifacts_dir / f"{kind}.json"), summary)
    return summary, path
