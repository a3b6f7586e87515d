"""The experiments the workbench can run again, by record kind.

An :class:`Experiment` knows how to run one kind of record (``bench.hash``, ``lab.cycle``, ``notebook``...) from
nothing but the parameters stored with it, and which fields of its result are exact (must match on a re-run:
verdicts, page counts, decoded sizes) and which are measured (compared against the noise). The built-in ones
live in a module each beside this one and are imported by name on first use; a new one is a new module that
calls :func:`register`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from workbench.experiments.errors import NotRerunnable
from workbench.records import RecordStore

__all__ = ["Experiment", "register", "experiment_for", "experiment_kinds", "EXACT", "MEASURED"]

EXACT = "exact"
MEASURED = "measured"

_BUILTIN = {
    "bench.hash": "workbench.experiments.bench_hash",
    "bench.metadata": "workbench.experiments.bench_metadata",
    "bench.preload": "workbench.experiments.bench_preload",
    "bench.conversion": "workbench.experiments.bench_conversion",
    "lab.cycle": "workbench.experiments.lab_cycle",
    "notebook": "workbench.experiments.notebook",
}
_REGISTRY: dict[str, list[Experiment]] = {}


def _always(params: dict[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Experiment:
    """``kind``: the record kind it makes; ``run(store, params)`` runs it with a record's ``params`` (a dict as
    stored) into ``store`` and returns the new record's id (raising on failure, the record kept); ``exact`` and
    ``measured``: glob patterns over the dotted paths of the result's fields (see
    :func:`workbench.experiments.compare.flatten`), fields matching neither are not compared; ``tolerance``: a
    measured value may differ by the factor ``1 + tolerance`` either way while its noise is not known well (fewer
    than five repeats and earlier runs); ``accepts(params)``: whether the
    record's parameters are ones this experiment can run (several experiments may share a kind);
    ``describe``: one line for people; ``classifier(path, original)``: decides before the patterns, for results
    that say themselves which fields are exact (None from it falls back to the patterns)."""

    kind: str
    run: Callable[[RecordStore, dict[str, Any]], str]
    exact: tuple[str, ...] = ()
    measured: tuple[str, ...] = ()
    tolerance: float = 0.25
    accepts: Callable[[dict[str, Any]], bool] = _always
    describe: str = ""
    classifier: Callable[[str, dict[str, Any]], str | None] | None = None
    timer_floor_s: float = 0.02
    """The smallest difference in seconds of a timing (a field ending in ``_s``, or under ``phases``) that can
    disagree: milliseconds lost to other work on a shared machine are not evidence either way."""

    def classify(self, path: str, original: dict[str, Any]) -> str | None:
        """``EXACT``, ``MEASURED`` or None (not compared) for the result field at ``path``; ``original`` is the
        whole original result, for experiments whose results say themselves which fields are exact."""
        if self.classifier is not None:
            decided = self.classifier(path, original)
            if decided is not None:
                return decided
        if any(fnmatchcase(path, pattern) for pattern in self.exact):
            return EXACT
        if any(fnmatchcase(path, pattern) for pattern in self.measured):
            return MEASURED
        return None


def register(experiment: Experiment) -> Experiment:
    """Makes ``experiment`` known for its kind (after those registered before it for the same kind)."""
    _REGISTRY.setdefault(experiment.kind, []).append(experiment)
    return experiment


def experiment_kinds() -> list[str]:
    """Every record kind that can be re-run."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def experiment_for(kind: str, params: dict[str, Any]) -> Experiment:
    """The experiment that can run a record of ``kind`` with ``params`` again; :class:`NotRerunnable` names why
    not."""
    if kind not in _REGISTRY and kind in _BUILTIN:
        importlib.import_module(_BUILTIN[kind])
    candidates = _REGISTRY.get(kind, [])
    if not candidates:
        raise NotRerunnable(
            f"records of kind {kind!r} cannot be re-run; the kinds that can are {', '.join(experiment_kinds())}"
        )
    source = params.get("source")
    if source:
        raise NotRerunnable(
            f"this {kind} record was made inside {source}: re-run that notebook's record (kind notebook) instead"
        )
    for experiment in candidates:
        if experiment.accepts(params):
            return experiment
    raise NotRerunnable(f"this {kind} record's parameters are not ones the workbench can run again")
