"""Comparing a re-run with the run it repeats: exact fields must match, measured ones must stay within the noise.

A result (nested JSON) is first flattened into dotted paths (:func:`flatten`): ``phases.kexec``,
``strategies.copy.bytes_per_s``, ``headlines.blackout.numbers.blackout_s.value``. Lists of objects that carry a
naming field (``key``, ``name``, ``strategy``, ``structure``, ``phase``...) are keyed by it, so that a re-run that
lists the same things in another order still lines up; other lists by position.

The noise of a measured field comes from the runs themselves: the original, the earlier runs with the same
parameters in the store and the re-run's repeats (not the original itself, which is what is being judged). With
two or more such values their standard deviation is the noise, and the original disagrees when it lies outside
the 99 % prediction interval around the re-run's value (Student's t, so that a spread from few samples is trusted
as little as it deserves; never narrower than 2 % of the value, nor 20 ms for a time); with fewer, the experiment's
assumed tolerance is used (a factor either way), which also stays the floor until there are five samples; the
comparison says which."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from workbench.experiments.registry import EXACT, MEASURED, Experiment

__all__ = [
    "flatten",
    "FieldComparison",
    "Comparison",
    "compare_results",
    "t_quantile",
    "RELATIVE_FLOOR",
    "TIMER_FLOOR_S",
]

#: Student's t at 0.995 (a two-sided 99 % interval) for 1-30 degrees of freedom; the normal 2.576 beyond
_T_995 = (
    63.657, 9.925, 5.841, 4.604, 4.032, 3.707, 3.499, 3.355, 3.250, 3.169,
    3.106, 3.055, 3.012, 2.977, 2.947, 2.921, 2.898, 2.878, 2.861, 2.845,
    2.831, 2.819, 2.807, 2.797, 2.787, 2.779, 2.771, 2.763, 2.756, 2.750,
)  # fmt: skip
#: below this many samples a measured spread is not trusted alone (two runs can agree closely by chance)
MIN_SAMPLES = 5
#: the smallest relative difference that can disagree, whatever the measured noise
RELATIVE_FLOOR = 0.02
#: the smallest difference in seconds that can disagree: on a shared machine one timing can lose a few scheduler
#: slices to other work, so milliseconds are not evidence either way
TIMER_FLOOR_S = 0.02
_KEY_FIELDS = ("key", "name", "strategy", "structure", "phase", "notebook", "memfd", "token")


def t_quantile(degrees_of_freedom: int) -> float:
    """Student's t at 0.995 for ``degrees_of_freedom`` (≥ 1): the half-width, in standard deviations, of a
    two-sided 99 % interval estimated from ``degrees_of_freedom + 1`` samples."""
    if degrees_of_freedom < 1:
        raise ValueError("a spread needs at least two samples")
    return _T_995[degrees_of_freedom - 1] if degrees_of_freedom <= len(_T_995) else 2.576


def _list_key(items: list[Any]) -> str | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    for key in _KEY_FIELDS:
        values = [item.get(key) for item in items]
        if all(isinstance(v, str | int) and not isinstance(v, bool) for v in values) and len(set(values)) == len(
            values
        ):
            return key
    return None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every scalar of the JSON value ``value`` by dotted path (see the module's docstring)."""
    out: dict[str, Any] = {}
    join = (lambda k: f"{prefix}.{k}") if prefix else str
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, join(k)))
    elif isinstance(value, list):
        key = _list_key(value)
        for i, item in enumerate(value):
            out.update(flatten(item, join(item[key] if key else i)))
    elif prefix:
        out[prefix] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


@dataclass
class FieldComparison:
    """One compared field: its ``path``, ``klass`` (exact or measured), the ``original`` value and the re-run's
    (the mean of its repeats for a measured field), the ``allowed`` difference and where the noise came from."""

    path: str
    klass: str
    original: Any
    rerun: Any
    agrees: bool
    allowed: float | None = None
    noise: float | None = None
    noise_source: str = ""
    note: str = ""

    @property
    def difference(self) -> float | None:
        if _is_number(self.original) and _is_number(self.rerun):
            return float(self.rerun) - float(self.original)
        return None


@dataclass
class Comparison:
    """The verdict (``agree`` or ``disagree``) and every compared field."""

    fields: list[FieldComparison] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "agree" if all(f.agrees for f in self.fields) else "disagree"

    @property
    def differences(self) -> list[FieldComparison]:
        return [f for f in self.fields if not f.agrees]

    def table(self) -> pd.DataFrame:
        """One row per compared field, the disagreeing ones first."""
        rows = [
            {
                "field": f.path,
                "class": f.klass,
                "original": _text(f.original),
                "rerun": _text(f.rerun),
                "difference": f.difference,
                "allowed": f.allowed,
                "noise": f.noise,
                "noise_source": f.noise_source,
                "agrees": f.agrees,
                "note": f.note,
            }
            for f in sorted(self.fields, key=lambda f: (f.agrees, f.path))
        ]
        columns = ["field", "class", "original", "rerun", "difference", "allowed", "noise", "noise_source"]
        return pd.DataFrame(rows, columns=[*columns, "agrees", "note"])


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _measured(
    path: str,
    original: Any,
    values: list[Any],
    earlier: list[float],
    tolerance: float,
    timer_floor_s: float = TIMER_FLOOR_S,
) -> FieldComparison:
    if not _is_number(original) or not all(_is_number(v) for v in values):
        agrees = all(_same(original, v) for v in values)
        note = "" if agrees else "a measured value is missing (None) in one run but not the other"
        return FieldComparison(path, MEASURED, original, values[0], agrees, note=note)
    rerun = statistics.fmean(values)
    samples = [*earlier, *(values if len(values) > 1 else [])]
    band = _band(float(original), rerun, tolerance)
    noise = statistics.stdev(samples) if len(samples) >= 2 else None
    parts = [f"{len(earlier)} earlier run{'s' if len(earlier) != 1 else ''}"]
    if len(values) > 1:
        parts.append(f"{len(values)} repeats")
    if noise is not None:
        interval = t_quantile(len(samples) - 1) * noise * math.sqrt(1 + 1 / len(values))  # original vs mean
        allowed = max(interval, RELATIVE_FLOOR * abs(original))
        source = f"spread of {' and '.join(parts)}"
        if len(samples) < MIN_SAMPLES:
            allowed = max(allowed, band)
            source += f", at least the assumed factor {1 + tolerance:g} (fewer than {MIN_SAMPLES} samples)"
    else:
        allowed = band
        source = f"assumed factor {1 + tolerance:g} either way: fewer than 2 repeats or earlier runs"
    if (path.endswith("_s") and not path.endswith("_per_s")) or path.startswith("phases."):
        allowed = max(allowed, timer_floor_s)
    agrees = abs(rerun - original) <= allowed * (1 + 1e-12)
    return FieldComparison(path, MEASURED, original, rerun, agrees, allowed, noise, source)


def _band(original: float, rerun: float, tolerance: float) -> float:
    """The difference allowed on the side of ``rerun`` when values may differ by a factor ``1 + tolerance``
    either way (for a positive value; ``tolerance`` times its size otherwise)."""
    if original > 0:
        return original * tolerance if rerun >= original else original - original / (1 + tolerance)
    return abs(original) * tolerance


def compare_results(
    experiment: Experiment,
    original: dict[str, Any],
    reruns: Sequence[dict[str, Any]],
    earlier: Sequence[dict[str, Any]] = (),
) -> Comparison:
    """Compares the ``original`` result with the results of its ``reruns`` (one or more repeats) field by field,
    as ``experiment`` classifies them; ``earlier`` are the results of other runs with the same parameters, for the
    noise. Every run must carry ``status``; a re-run that failed disagrees on it."""
    if not reruns:
        raise ValueError("compare_results needs at least one re-run")
    flat_original = flatten(original)
    flat_reruns = [flatten(r) for r in reruns]
    flat_earlier = [flatten(r) for r in earlier]
    comparison = Comparison()
    for path, value in flat_original.items():
        klass = EXACT if path == "status" else experiment.classify(path, original)
        if klass is None:
            continue
        present = [r[path] for r in flat_reruns if path in r]
        if len(present) < len(flat_reruns):
            comparison.fields.append(
                FieldComparison(path, klass, value, None, False, note="missing in the re-run's result")
            )
        elif klass == EXACT:
            differing = [v for v in present if not _same(value, v)]
            comparison.fields.append(
                FieldComparison(path, EXACT, value, differing[0] if differing else present[0], not differing)
            )
        else:
            history = [float(r[path]) for r in flat_earlier if _is_number(r.get(path))]
            comparison.fields.append(
                _measured(path, value, present, history, experiment.tolerance, experiment.timer_floor_s)
            )
    return comparison
