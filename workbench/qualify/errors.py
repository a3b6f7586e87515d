"""Exceptions raised by :mod:`workbench.qualify`: one base class, :class:`QualifyError`.

A cell whose cycle fails is not an error of the qualification: its outcome says how it failed. These are for a
qualification that cannot start (unknown kernel or check, bad sizes) or cannot go on."""

from __future__ import annotations

__all__ = ["QualifyError", "InvalidQualification"]


class QualifyError(RuntimeError):
    """Base class of every failure of :mod:`workbench.qualify`."""


class InvalidQualification(QualifyError, ValueError):
    """The qualification asked for cannot run as given; the message names the parameter and what to do."""
