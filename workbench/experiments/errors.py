"""The errors of :mod:`workbench.experiments`: one tree, each message naming the problem and what to do."""

from __future__ import annotations

__all__ = ["ExperimentError", "NotRerunnable", "InvalidOverride"]


class ExperimentError(RuntimeError):
    """An experiment cannot be recorded, re-run or compared."""


class NotRerunnable(ExperimentError):
    """The record's kind (or the way it was made) has no registered experiment that can run it again."""


class InvalidOverride(ExperimentError):
    """A parameter given to change on a re-run is not one the record has, or its value cannot be read."""
