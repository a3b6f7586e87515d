"""Re-running a recorded experiment with the same parameters and saying whether the new result agrees.

:func:`rerun` looks up the :class:`~workbench.experiments.registry.Experiment` of the record's kind, runs it again
with the stored parameters (optionally some changed on purpose, and repeated), compares the results
(:mod:`workbench.experiments.compare`) and keeps the verdict in a ``rerun`` record of its own, with the compared
fields as its ``fields`` table. A lab kernel named in the parameters is built again when the cache no longer
has it, as for any cycle."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from workbench.experiments.compare import Comparison, compare_results
from workbench.experiments.errors import ExperimentError, InvalidOverride
from workbench.experiments.registry import experiment_for
from workbench.records import RecordStore, RunRecord
from workbench.units import parse_size

__all__ = ["RerunReport", "rerun", "apply_overrides", "parse_override"]


@dataclass
class RerunReport:
    """What :func:`rerun` found: the original record's id, the new records' ids (one per repeat), the ``rerun``
    record's id, the verdict and the field-by-field comparison."""

    original_id: str
    rerun_ids: list[str]
    record_id: str
    comparison: Comparison
    overrides: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return self.comparison.verdict

    def as_dict(self) -> dict[str, Any]:
        differences = [
            {
                "field": f.path,
                "class": f.klass,
                "original": f.original,
                "rerun": f.rerun,
                "difference": f.difference,
                "allowed": f.allowed,
                "noise": f.noise,
                "noise_source": f.noise_source,
                "note": f.note,
            }
            for f in self.comparison.differences
        ]
        return {
            "original": self.original_id,
            "reruns": self.rerun_ids,
            "record_id": self.record_id,
            "verdict": self.verdict,
            "overrides": self.overrides,
            "compared_fields": len(self.comparison.fields),
            "differences": differences,
            "errors": self.errors,
        }


def parse_override(original: Any, text: str) -> Any:
    """The value of ``text`` (YAML, so ``3``, ``true``, ``[1, 2]``, ``null``) for a parameter whose recorded value
    is ``original``; a size such as ``32M`` for an integer parameter."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(original, int) and not isinstance(original, bool) and isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as exc:
            raise InvalidOverride(f"{text!r} is neither a number nor a size: {exc}") from None
    return value


def apply_overrides(params: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with ``overrides`` applied; each must name a parameter the record has. Text values (from a
    command line) are read with :func:`parse_override`."""
    out = dict(params)
    for key, value in overrides.items():
        if key not in out:
            raise InvalidOverride(f"the record has no parameter {key!r}; it has {', '.join(sorted(out)) or 'none'}")
        out[key] = parse_override(out[key], value) if isinstance(value, str) else value
    return out


def _outcome(record: RunRecord) -> dict[str, Any]:
    return {"status": record.status, **record.result}


def _earlier(store: RecordStore, original: RunRecord, before: float) -> list[RunRecord]:
    """The other finished runs of the original's kind with exactly its parameters, on the same machine (for the
    noise: runs imported from another machine measure that machine)."""
    host = original.environment.get("hostname")
    return [
        r
        for r in store.runs(kind=original.kind, status="ok")
        if r.id != original.id
        and r.params == original.params
        and r.started.timestamp() < before
        and r.environment.get("hostname") == host
    ]


def rerun(
    store: RecordStore,
    run_id: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    repeats: int = 1,
) -> RerunReport:
    """Runs the record ``run_id`` (an id or a unique part of one) again ``repeats`` times with its parameters
    (``overrides`` changed) and compares. Raises :class:`~workbench.experiments.errors.NotRerunnable` for a kind
    that cannot be re-run and :class:`~workbench.experiments.errors.InvalidOverride` for a bad override, before
    anything runs; a re-run that fails is recorded and makes the verdict ``disagree``."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    original = store.get(run_id)
    experiment = experiment_for(original.kind, original.params)
    overrides = dict(overrides or {})
    params = apply_overrides(original.params, overrides)
    started = time.time()
    record_params = {"original": original.id, "kind": original.kind, "overrides": overrides, "repeats": repeats}
    with store.run("rerun", record_params) as run:
        errors: list[str] = []
        for _ in range(repeats):
            known = {r.id for r in store.runs(kind=original.kind)}
            try:
                new_id = experiment.run(store, params)
            except Exception as exc:  # noqa: BLE001 (a failed re-run is a finding: recorded, compared, reported)
                errors.append(f"{type(exc).__name__}: {exc}")
                # the failed run's record: the one of this kind this process started meanwhile
                mine = [
                    r
                    for r in store.runs(kind=original.kind)
                    if r.id not in known and r.environment.get("hostname") == socket.gethostname()
                ]
                if not mine:
                    raise ExperimentError(f"the {original.kind} re-run could not start: {errors[-1]}") from None
                new_id = mine[-1].id
            run.update_result(reruns=[*run.result.get("reruns", []), new_id])
        rerun_records = [store.get(i) for i in run.result["reruns"]]
        earlier = [_outcome(r) for r in _earlier(store, original, started)]
        comparison = compare_results(experiment, _outcome(original), [_outcome(r) for r in rerun_records], earlier)
        report = RerunReport(original.id, [r.id for r in rerun_records], run.id, comparison, overrides, errors)
        run.add_table("fields", comparison.table())
        summary = report.as_dict()
        run.update_result(**{k: v for k, v in summary.items() if k not in ("record_id", "reruns")})
    return report
