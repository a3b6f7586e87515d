"""Fitting the blackout model (:mod:`workbench.kernels.blackout.model`) to measured points, and its error on
points the fit did not see.

Fit points are tidy, one row per measurement, with the columns of :data:`POINT_COLUMNS`:

``phase``
    what was timed: ``fault`` (first touch of ``size_bytes`` of fresh anonymous memory in folios of
    ``folio_size``), ``memcpy`` (a copy between prefaulted buffers), ``convert`` (strategy ``strategy``), and from
    lab cycles ``preserve``, ``load``, ``kexec`` and ``restore``. A lab's ``kexec`` runs from ``reboot()`` to the
    agent running again, so it is the model's ``kexec + memmap + kho_decode`` for a machine of ``mem_bytes``.
    A cycle that reports its blackout's anatomy (:mod:`workbench.lab.blackout_anatomy`) gives the three apart
    instead: ``memmap`` (struct page initialisation of a machine of ``mem_bytes``), ``kho_decode`` (KHO restoring
    ``size_bytes`` of preserved memory in early boot) and ``kexec_rest`` (the rest of the kexec → /init span,
    the model's fixed ``kexec``); when any such point is given, the lumped ``kexec`` points are not used.
    ``fault = (z·B + a·(n_f - n_4k)) / S(N)`` and ``memcpy = u·B / S(N)`` are not phases of a live update: they
    calibrate the allocation cost per folio ``a``, the copy floor ``u`` and, with ``convert``, the efficiency
    ``e`` (from the same measurement at one thread and at more).
``strategy``
    the conversion strategy (``convert`` rows only; empty elsewhere).
``size_bytes``
    bytes converted, touched, copied or preserved.
``mem_bytes``
    RAM of the machine that booted (``kexec``, ``memmap``, ``kho_decode`` and ``kexec_rest`` rows; NaN elsewhere).
``folio_size``
    bytes per folio of the memory measured (4096 unless huge pages were obtained).
``threads``
    threads that did the work (for a lab ``kexec``, the CPUs of the booted machine).
``seconds``
    the measured time.

:mod:`workbench.kernels.blackout.points` makes such points from this machine's measurements and the record
store.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from workbench.kernels.blackout.model import (
    BASE_PAGE,
    FROM_BIRTH,
    PHASES,
    STRATEGIES,
    Configs,
    ModelParams,
    evaluate,
)

__all__ = [
    "OBSERVED_PHASES",
    "BOOT_PHASES",
    "ANATOMY_PHASES",
    "POINT_COLUMNS",
    "HoldoutReport",
    "validate_points",
    "predict_points",
    "fit",
    "holdout_error",
]

OBSERVED_PHASES: tuple[str, ...] = (
    "fault",
    "memcpy",
    "convert",
    "preserve",
    "load",
    "kexec",
    "memmap",
    "kho_decode",
    "kexec_rest",
    "restore",
)
"""The values the ``phase`` column of fit points may take."""

POINT_COLUMNS: tuple[str, ...] = ("phase", "strategy", "size_bytes", "mem_bytes", "folio_size", "threads", "seconds")
"""The columns of fit points, described in the module docstring."""

#: the observed phases that time a boot of a machine of ``mem_bytes``
BOOT_PHASES: tuple[str, ...] = ("kexec", "memmap", "kho_decode", "kexec_rest")
#: the observed phases of a blackout's anatomy, and the model phase each one measures
ANATOMY_PHASES: dict[str, str] = {"memmap": "memmap", "kho_decode": "kho_decode", "kexec_rest": "kexec"}
_GROWS_WITH_RAM = ("memmap", "kexec_rest")

# --- fit points ------------------------------------------------------------------------------------------------


def validate_points(points: pd.DataFrame) -> pd.DataFrame:
    """A clean copy of ``points``: the :data:`POINT_COLUMNS` with their types (``mem_bytes`` may be missing and
    becomes NaN; ``strategy`` is empty outside ``convert`` rows), rows without a positive finite time dropped.
    Raises ``ValueError`` for a missing column, an unknown phase or strategy."""
    missing = [c for c in POINT_COLUMNS if c not in points.columns and c != "mem_bytes"]
    if missing:
        raise ValueError(f"fit points lack the columns {missing}; expected {list(POINT_COLUMNS)}")
    frame = points.copy()
    if "mem_bytes" not in frame.columns:
        frame["mem_bytes"] = math.nan
    frame = frame[list(POINT_COLUMNS)]
    unknown = sorted(set(frame["phase"]) - set(OBSERVED_PHASES))
    if unknown:
        raise ValueError(f"unknown phases {unknown} in fit points: use {', '.join(OBSERVED_PHASES)}")
    frame["strategy"] = frame["strategy"].where(frame["phase"] == "convert", "").fillna("").astype(str)
    bad = sorted(set(frame.loc[frame["phase"] == "convert", "strategy"]) - set(STRATEGIES))
    if bad:
        raise ValueError(f"unknown strategies {bad} in convert points: choose from {', '.join(STRATEGIES)}")
    for column in ("size_bytes", "mem_bytes", "folio_size", "seconds"):
        frame[column] = frame[column].astype(np.float64)
    frame["threads"] = frame["threads"].astype(np.int64)
    keep = np.isfinite(frame["seconds"]) & (frame["seconds"] > 0) & (frame["strategy"] != FROM_BIRTH)
    return frame[keep].reset_index(drop=True)


def _speedup(threads: np.ndarray, efficiency: float) -> np.ndarray:
    threads = np.asarray(threads, dtype=np.float64)
    return np.where(threads > 1, 1.0 + (threads - 1.0) * efficiency, 1.0)


def _folio_terms(size_bytes: np.ndarray, folio_size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    folios = np.ceil(size_bytes / folio_size)
    return folios, folios - np.ceil(size_bytes / BASE_PAGE)


def predict_points(points: pd.DataFrame, params: ModelParams) -> np.ndarray:
    """The model's value of every point's measurement (see the module docstring for what each phase means).

    ``points``: fit points (see :data:`POINT_COLUMNS`); ``params``: the model's parameters."""
    pts = points.reset_index(drop=True)
    phase = pts["phase"].to_numpy()
    size = pts["size_bytes"].to_numpy(np.float64)
    folio = pts["folio_size"].to_numpy(np.float64)
    threads = pts["threads"].to_numpy(np.int64)
    speedup = _speedup(threads, params.parallel_efficiency)
    _, extra_folios = _folio_terms(size, folio)
    folio_saving = np.zeros(len(pts))
    has_extra = extra_folios != 0
    folio_saving[has_extra] = params.fault_per_folio_s * extra_folios[has_extra]
    predicted = np.full(len(pts), math.nan)
    predicted[phase == "fault"] = ((params.fault_per_byte_s * size + folio_saving) / speedup)[phase == "fault"]
    predicted[phase == "memcpy"] = (params.memcpy_per_byte_s * size / speedup)[phase == "memcpy"]
    model_rows = np.isin(phase, ("convert", "preserve", "load", "restore", *BOOT_PHASES))
    if model_rows.any():
        rows = pts[model_rows]
        mem = np.where(rows["phase"].isin(BOOT_PHASES), rows["mem_bytes"], rows["size_bytes"]).astype(np.float64)
        valid = np.isfinite(mem) & (mem > 0)
        configs = Configs.make(
            np.where(valid, mem, BASE_PAGE),
            np.where(valid, np.clip(rows["size_bytes"] / np.where(valid, mem, 1.0), 0.0, 1.0), 0.0),
            rows["folio_size"].to_numpy(),
            rows["threads"].to_numpy(),
            np.where(rows["phase"] == "convert", rows["strategy"], FROM_BIRTH),
        )
        phases = evaluate(configs, params).phase_seconds
        column = {p: PHASES.index(p) for p in PHASES}
        values = np.empty(len(rows))
        for i, name in enumerate(rows["phase"]):
            if name == "kexec":
                values[i] = phases[i, column["kexec"]] + phases[i, column["memmap"]] + phases[i, column["kho_decode"]]
            else:
                values[i] = phases[i, column[ANATOMY_PHASES.get(name, name)]]
        values[~valid] = math.nan
        predicted[model_rows] = values
    return predicted


# --- fitting ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Term:
    name: str
    on_unidentifiable: str  # "zero": a fixed cost the other terms absorb; "nan": unknown without more points
    varies: str = ""


def _fit_terms(
    columns: np.ndarray, seconds: np.ndarray, terms: Sequence[_Term], phase: str
) -> tuple[dict[str, float], dict[str, str]]:
    """Non-negative least squares of ``seconds ≈ columns @ values``, relative to each measurement.

    The terms are in order of preference: when the points cannot tell all of them apart, the first subset of
    terms (largest first, earlier terms preferred) that the points do determine is fitted and each term left out
    becomes 0 or NaN as it declares."""
    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    if len(seconds) == 0:
        for term in terms:
            values[term.name], notes[term.name] = math.nan, f"no {phase} points"
        return values, notes
    weighted = columns / seconds[:, None]
    scale = np.linalg.norm(weighted, axis=0)
    scale[scale == 0] = 1.0
    normalised = weighted / scale
    chosen: tuple[int, ...] = ()
    for k in range(len(terms), 0, -1):
        for subset in itertools.combinations(range(len(terms)), k):
            if np.linalg.matrix_rank(normalised[:, subset]) == k:
                chosen = subset
                break
        if chosen:
            break
    best, best_residual = np.zeros(len(chosen)), math.inf
    ones = np.ones(len(seconds))
    for k in range(len(chosen), -1, -1):
        for active in itertools.combinations(range(len(chosen)), k):
            solution = np.zeros(len(chosen))
            if active:
                picked = [chosen[i] for i in active]
                solution[list(active)] = np.linalg.lstsq(normalised[:, picked], ones, rcond=None)[0]
            if (solution < 0).any():
                continue
            residual = float(np.sum((normalised[:, list(chosen)] @ solution - ones) ** 2)) if chosen else len(ones)
            if residual < best_residual * (1 - 1e-9):
                best, best_residual = solution, residual
    for i, term in enumerate(terms):
        if i in chosen:
            values[term.name] = float(best[chosen.index(i)] / scale[i])
            notes[term.name] = f"fitted on {len(seconds)} {phase} points"
        elif term.on_unidentifiable == "zero":
            values[term.name] = 0.0
            notes[term.name] = f"0: the {phase} points cannot separate it from the other terms"
        else:
            values[term.name] = math.nan
            notes[term.name] = f"not fitted: needs {phase} points that vary {term.varies}"
    return values, notes


def _fit_parallel_efficiency(points: pd.DataFrame) -> tuple[float, str]:
    """``e`` from the same measurement at one thread and at ``N``: ``t1 / tN = 1 + (N - 1)·e``, the median over
    all such pairs, clipped to 0..1."""
    parallel = points[points["phase"].isin(("fault", "memcpy", "convert", "restore"))]
    keys = ["phase", "strategy", "size_bytes", "folio_size", "mem_bytes"]
    medians = parallel.fillna({"mem_bytes": -1}).groupby(keys + ["threads"])["seconds"].median().reset_index()
    estimates = []
    for _, group in medians.groupby(keys):
        single = group.loc[group["threads"] == 1, "seconds"]
        if single.empty:
            continue
        for threads, seconds in zip(group["threads"], group["seconds"], strict=True):
            if threads > 1:
                estimates.append((single.iloc[0] / seconds - 1.0) / (threads - 1.0))
    if not estimates:
        return math.nan, "not fitted: needs the same measurement at one thread and at more"
    return float(np.clip(np.median(estimates), 0.0, 1.0)), f"median of {len(estimates)} one-vs-N-thread pairs"


def fit(points: pd.DataFrame) -> ModelParams:
    """Fits :class:`ModelParams` to measured ``points`` (columns :data:`POINT_COLUMNS`; see the module
    docstring). Each phase's terms are fitted by non-negative least squares on relative error; a parameter
    whose phase has no points stays NaN, and :attr:`ModelParams.provenance` says what each value rests on."""
    pts = validate_points(points)
    values: dict[str, Any] = {}
    notes: dict[str, str] = {}
    efficiency, notes["parallel_efficiency"] = _fit_parallel_efficiency(pts)
    values["parallel_efficiency"] = efficiency

    def rows(phase: str, strategy: str = "") -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        selected = pts[(pts["phase"] == phase) & (pts["strategy"] == strategy)]
        speedup = _speedup(selected["threads"].to_numpy(), efficiency)
        usable = np.isfinite(speedup)
        selected, speedup = selected[usable], speedup[usable]
        folios, extra = _folio_terms(selected["size_bytes"].to_numpy(), selected["folio_size"].to_numpy())
        return selected, speedup, np.column_stack([folios, extra]) if len(selected) else np.zeros((0, 2))

    def run(phase: str, selected: pd.DataFrame, columns: list[np.ndarray], terms: list[_Term], seconds=None):
        matrix = np.column_stack(columns) if len(selected) else np.zeros((0, len(terms)))
        target = selected["seconds"].to_numpy() if seconds is None else seconds
        fitted, why = _fit_terms(matrix, target, terms, phase)
        values.update(fitted)
        notes.update(why)

    selected, speedup, folio_columns = rows("fault")
    run(
        "fault",
        selected,
        [selected["size_bytes"].to_numpy() / speedup, folio_columns[:, 1] / speedup],
        [_Term("fault_per_byte_s", "nan", "size"), _Term("fault_per_folio_s", "nan", "the folio size")],
    )
    selected, speedup, _ = rows("memcpy")
    run("memcpy", selected, [selected["size_bytes"].to_numpy() / speedup], [_Term("memcpy_per_byte_s", "nan", "size")])

    fixed: dict[str, float] = {}  # ModelParams sets memfd-from-birth's to 0
    per_byte: dict[str, float] = {}
    for strategy in STRATEGIES:
        if strategy == FROM_BIRTH:
            continue
        selected, speedup, folio_columns = rows("convert", strategy)
        saving = np.where(folio_columns[:, 1] != 0, values["fault_per_folio_s"] * folio_columns[:, 1], 0.0)
        known = np.isfinite(saving)
        selected, speedup, saving = selected[known], speedup[known], saving[known]
        fitted, why = _fit_terms(
            np.column_stack([selected["size_bytes"].to_numpy() / speedup, np.ones(len(selected)) / speedup])
            if len(selected)
            else np.zeros((0, 2)),
            selected["seconds"].to_numpy() - saving / speedup,
            [_Term("per_byte", "nan", "size"), _Term("fixed", "zero")],
            f"convert/{strategy}",
        )
        per_byte[strategy], fixed[strategy] = fitted["per_byte"], fitted["fixed"]
        notes[f"convert_per_byte_s[{strategy}]"] = why["per_byte"]
        notes[f"convert_fixed_s[{strategy}]"] = why["fixed"]
    notes[f"convert_per_byte_s[{FROM_BIRTH}]"] = "0 by definition: nothing to convert"

    selected, _, folio_columns = rows("preserve")
    run(
        "preserve",
        selected,
        [folio_columns[:, 0], np.ones(len(selected))],
        [_Term("preserve_per_folio_s", "nan", "the preserved size"), _Term("preserve_fixed_s", "zero")],
    )
    selected, _, _ = rows("load")
    run("load", selected, [np.ones(len(selected))], [_Term("load_s", "nan")])
    if pts["phase"].isin(list(ANATOMY_PHASES)).any():
        _fit_boot_from_anatomy(rows, run, notes, lumped=int((pts["phase"] == "kexec").sum()))
    else:
        _fit_boot_lumped(rows, run, notes)
    selected, speedup, folio_columns = rows("restore")
    run(
        "restore",
        selected,
        [folio_columns[:, 0] / speedup, np.ones(len(selected)) / speedup],
        [_Term("restore_per_folio_s", "nan", "the preserved size"), _Term("restore_fixed_s", "zero")],
    )
    return ModelParams(**values, convert_fixed_s=fixed, convert_per_byte_s=per_byte, provenance=notes)


def _fit_boot_lumped(rows: Any, run: Any, notes: dict[str, str]) -> None:
    """``kexec_s``, ``memmap_per_page_s`` and ``kho_decode_per_folio_s`` together, from lab ``kexec`` points (the
    whole boot: their sum for a machine of ``mem_bytes``); ``kho_decode_per_folio2_s`` stays 0."""
    notes["kho_decode_per_folio2_s"] = "0: lumped kexec points cannot tell it apart; the blackout's anatomy can"
    selected, speedup, folio_columns = rows("kexec")
    selected_mem = selected["mem_bytes"].to_numpy()
    with_mem = np.isfinite(selected_mem)
    run(
        "kexec",
        selected[with_mem],
        [np.ones(len(selected))[with_mem], (selected_mem / BASE_PAGE / speedup)[with_mem], folio_columns[with_mem, 0]],
        [
            _Term("kexec_s", "nan"),
            _Term("memmap_per_page_s", "nan", "the booted machine's memory (mem_bytes)"),
            _Term("kho_decode_per_folio_s", "nan", "the preserved size"),
        ],
    )


def _fit_boot_from_anatomy(rows: Any, run: Any, notes: dict[str, str], lumped: int) -> None:
    """The same three parameters each from its own phase of the blackout's anatomy: ``memmap`` points per base
    page of the booted machine, ``kho_decode`` points per preserved folio (those that preserved something),
    ``kexec_rest`` points as a fixed cost."""
    selected, speedup, _ = rows("memmap")
    with_mem = np.isfinite(selected["mem_bytes"].to_numpy())
    selected, speedup = selected[with_mem], speedup[with_mem]
    run(
        "memmap",
        selected,
        [selected["mem_bytes"].to_numpy() / BASE_PAGE / speedup],
        [_Term("memmap_per_page_s", "nan", "the booted machine's memory (mem_bytes)")],
    )
    selected, _, folio_columns = rows("kho_decode")
    preserved = folio_columns[:, 0] > 0 if len(selected) else np.zeros(0, dtype=bool)
    folios = folio_columns[preserved, 0]
    run(
        "kho_decode",
        selected[preserved],
        [folios, folios * folios],
        [_Term("kho_decode_per_folio_s", "zero"), _Term("kho_decode_per_folio2_s", "zero")],
    )
    selected, _, _ = rows("kexec_rest")
    run("kexec_rest", selected, [np.ones(len(selected))], [_Term("kexec_s", "nan")])
    if lumped:
        for name in ("kexec_s", "memmap_per_page_s", "kho_decode_per_folio_s", "kho_decode_per_folio2_s"):
            notes[name] += f" (the blackout's anatomy; {lumped} lumped kexec points not used)"


# --- hold-out error -----------------------------------------------------------------------------------------------


class HoldoutReport(NamedTuple):
    """Held-out points with their predictions (``points``), and the relative error per phase (``per_phase``)."""

    points: pd.DataFrame
    per_phase: pd.DataFrame


def holdout_error(points: pd.DataFrame, holdout_sizes: Sequence[float] | None = None) -> HoldoutReport:
    """Fits on some sizes and predicts the others: by default, for each phase (and conversion strategy) with
    at least two sizes measured, the largest size is held out, so the error is that of extrapolating to a
    larger size. The size is what the phase grows with: the booted machine's RAM (``mem_bytes``) for
    ``memmap`` and ``kexec_rest``, ``size_bytes`` for the others. ``holdout_sizes`` holds out exactly the
    points of those ``size_bytes`` instead. The relative error is ``(predicted - measured) / measured``."""
    pts = validate_points(points)
    if holdout_sizes is not None:
        held = pts["size_bytes"].isin([float(s) for s in holdout_sizes])
    else:
        driver = pts["size_bytes"].where(~pts["phase"].isin(_GROWS_WITH_RAM), pts["mem_bytes"])
        by_phase = driver.groupby([pts["phase"], pts["strategy"]])
        held = (driver == by_phase.transform("max")) & (by_phase.transform("nunique") >= 2)
    params = fit(pts[~held])
    tested = pts[held].copy()
    tested["predicted"] = predict_points(tested, params)
    tested["relative_error"] = (tested["predicted"] - tested["seconds"]) / tested["seconds"]
    summary = (
        tested.assign(abs_error=tested["relative_error"].abs())
        .groupby(["phase", "strategy"], sort=False)
        .agg(
            points=("seconds", "size"),
            held_out_sizes=("size_bytes", lambda s: sorted(int(v) for v in set(s))),
            held_out_mem=("mem_bytes", lambda s: sorted(int(v) for v in set(s.dropna()))),
            median_abs_rel_error=("abs_error", "median"),
            max_abs_rel_error=("abs_error", "max"),
            mean_rel_error=("relative_error", "mean"),
        )
        .reset_index()
    )
    return HoldoutReport(tested.reset_index(drop=True), summary)
