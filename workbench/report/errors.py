"""The report's errors: one tree, rooted at :class:`ReportError`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ReportError", "BadHeadline", "UnknownNotebook", "NotebookFailed", "DemoFailed", "ChangesError"]


class ReportError(RuntimeError):
    """Anything that stops a report, a recorded notebook run or a comparison."""


class BadHeadline(ReportError, ValueError):
    """A headline (from a notebook cell, or read back from a notebook or a record) that does not have the
    documented shape; the message names the field."""


class UnknownNotebook(ReportError, FileNotFoundError):
    """No notebook, or more than one, matches a name; the message lists the notebooks."""


class NotebookFailed(ReportError):
    """A recorded notebook run stopped at an error. The record (``record_id``) keeps the executed copy up to the
    failing cell and its HTML page."""

    def __init__(self, message: str, record_id: str, notebook: str):
        super().__init__(message)
        self.record_id = record_id
        self.notebook = notebook


class DemoFailed(ReportError):
    """Some notebooks of a demo failed; the report (``index``) was still written and the demo record
    (``record_id``) keeps what the others found. ``report`` is the :class:`~workbench.report.demo.DemoReport`."""

    def __init__(self, message: str, record_id: str, index: Path, failed: list[str], report: Any = None):
        super().__init__(message)
        self.record_id = record_id
        self.index = index
        self.failed = failed
        self.report = report


class ChangesError(ReportError):
    """Records chosen for a comparison that cannot be compared with (not demo records, or made before demo
    records stored their headlines)."""
