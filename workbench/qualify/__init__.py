"""Qualifying a live update from one kernel version to another.

:func:`~workbench.qualify.run.qualify` runs a matrix: for every ordered pair of kernels (each into itself
included) and every check (:mod:`workbench.qualify.checks`: memfds of several sizes and many small files, upstream's
liveupdate selftests with stage 1 in the ``from`` kernel and stage 2 in the ``to`` kernel, CRIU in same-version
cells) one cycle in the lab VM, run in parallel on Dask. Each cell ends ``pass``, ``refused``, ``fail``,
``panic`` or ``hang`` (:mod:`workbench.qualify.outcome`), with the stage, a diagnosis read from the serial log,
the blackout and phase times and its ``lab.cycle`` record; the whole is one ``qualification`` record.

The ABI side of a qualification (what the two kernels' handover structs and compatible strings are) is
``workbench abi diff`` (:mod:`workbench.inspect.abi_diff`); the check before each kexec is
:mod:`workbench.lab.preflight`."""

from workbench.qualify.errors import InvalidQualification, QualifyError
from workbench.qualify.matrix import Cell, plan_cells
from workbench.qualify.outcome import OUTCOMES
from workbench.qualify.params import DEFAULT_CHECKS, DEFAULT_SIZES, QualifyParams
from workbench.qualify.run import RECORD_KIND, qualify

__all__ = [
    "Cell",
    "DEFAULT_CHECKS",
    "DEFAULT_SIZES",
    "InvalidQualification",
    "OUTCOMES",
    "QualifyError",
    "QualifyParams",
    "RECORD_KIND",
    "plan_cells",
    "qualify",
]
