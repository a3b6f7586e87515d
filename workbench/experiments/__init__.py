"""Experiments as things that can be run again: the registry of record kinds that can be re-run
(:mod:`~workbench.experiments.registry`, one module per kind beside it), recording one
(:mod:`~workbench.experiments.recording`), comparing results (:mod:`~workbench.experiments.compare`) and
re-running a record (:mod:`~workbench.experiments.rerun`)."""

from workbench.experiments.compare import Comparison, FieldComparison, compare_results, flatten
from workbench.experiments.errors import ExperimentError, InvalidOverride, NotRerunnable
from workbench.experiments.recording import record_summary
from workbench.experiments.registry import Experiment, experiment_for, experiment_kinds, register
from workbench.experiments.rerun import RerunReport, rerun

__all__ = [
    "Comparison",
    "Experiment",
    "ExperimentError",
    "FieldComparison",
    "InvalidOverride",
    "NotRerunnable",
    "RerunReport",
    "compare_results",
    "experiment_for",
    "experiment_kinds",
    "flatten",
    "record_summary",
    "register",
    "rerun",
]
