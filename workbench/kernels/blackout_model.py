"""The blackout of a live update, modelled phase by phase and calibrated on measurements of this workbench.

A host of ``M`` bytes of RAM keeps a fraction ``p`` of it (``B = p·M`` bytes, the workload's memory) across a
kexec: the memory is first moved into memfds (unless it was a memfd from birth), LUO preserves the memfds, kexec
loads and jumps into the next kernel, which boots with KHO and hands the memfds back. With ``f`` the folio size,
``n_f = ceil(B / f)`` preserved folios, ``n_4k = ceil(B / 4096)`` and ``S(N) = 1 + (N - 1)·e`` the speed-up of
``N`` threads at parallel efficiency ``e`` (``S(1) = 1``), the phases are, in seconds::

    convert    = 0                                              for memfd-from-birth, otherwise
               = (c0[s] + max(c1[s]·B + a·(n_f - n_4k), u·B))   strategy s; c1 is measured at 4 KiB folios and a
                 / S(N)                                         is the allocation cost per folio, so larger folios
                                                                save a for every 4 KiB folio they replace; no
                                                                conversion beats copying its bytes between
                                                                prefaulted buffers (u per byte)
    preserve   = p0 + p1·n_f                                   LUO preserve: per-folio serialisation, one thread
    load       = l0                                            kexec_file_load of the next kernel
    kexec      = k0                                            shutdown, jump and the fixed part of the next boot
    memmap     = m1·(M / 4096) / S(N)                          struct page initialisation of every base page
                                                                (deferred, multi-threaded)
    kho_decode = d1·n_f                                        KHO preserved-memory radix tree, walked in early
                                                                boot, one thread
    restore    = (r0 + r1·n_f) / S(N)                          LUO retrieve and per-folio restore, in parallel
                                                                over memfds

The blackout is the sum of the phases during which the workload cannot run (:func:`blackout_mask`):

* ``convert`` counts for every converting strategy: a CRIU-like dump needs the process frozen to copy a
  consistent image, so the conversion happens inside the blackout. memfd-from-birth converts nothing.
* ``preserve`` counts: preserving a memfd fixes its size and the session must be complete at the reboot, so the
  workload is quiesced from then on.
* ``load`` does not count: the next kernel can be loaded while the workload still runs.
* ``kexec``, ``memmap``, ``kho_decode`` and ``restore`` count: the workload has no memory until its memfds are
  retrieved (deferred struct page initialisation finishes before init starts user space).

The parameters are fitted (:func:`fit`) from tidy measured points, one row per measurement, with the columns of
:data:`POINT_COLUMNS`:

``phase``
    what was timed: ``fault`` (first touch of ``size_bytes`` of fresh anonymous memory in folios of
    ``folio_size``), ``memcpy`` (a copy between prefaulted buffers), ``convert`` (strategy ``strategy``), and from
    lab cycles ``preserve``, ``load``, ``kexec`` and ``restore``. A lab's ``kexec`` runs from ``reboot()`` to the
    agent running again, so it is the model's ``kexec + memmap + kho_decode`` for a machine of ``mem_bytes``.
    ``fault = (z·B + a·(n_f - n_4k)) / S(N)`` and ``memcpy = u·B / S(N)`` are not phases of a live update: they
    calibrate the allocation cost per folio ``a``, the copy floor ``u`` and, with ``convert``, the efficiency
    ``e`` (from the same measurement at one thread and at more).
``strategy``
    the conversion strategy (``convert`` rows only; empty elsewhere).
``size_bytes``
    bytes converted, touched, copied or preserved.
``mem_bytes``
    RAM of the machine that booted (``kexec`` rows only; NaN elsewhere).
``folio_size``
    bytes per folio of the memory measured (4096 unless huge pages were obtained).
``threads``
    threads that did the work (for a lab ``kexec``, the CPUs of the booted machine).
``seconds``
    the measured time.

:func:`measure_points` measures ``fault``, ``memcpy`` and ``convert`` points on this machine,
:func:`conversion_points` adapts a :func:`workbench.kernels.conversion.run_conversion` frame and
:func:`lab_points` a frame of lab cycle phases (:func:`points_from_records` gathers all of them from the
record store). A parameter without points to fit it stays NaN (listed by :meth:`ModelParams.unfitted`), and so
does every prediction that needs it.

The calibration is only as good as its sources: the host-side parameters (``fault``, ``memcpy``, ``convert``)
come from the machine the measurements ran on, the kernel-side ones (``preserve`` to ``restore``) from lab cycles,
which run in a QEMU guest (under TCG on the project's machines, far slower than bare metal). Predictions for a
large host extrapolate both linearly in bytes, folios and base pages.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numba
import numpy as np
import pandas as pd

from workbench.kernels.threads import numba_threads

__all__ = [
    "BASE_PAGE",
    "STRATEGIES",
    "FROM_BIRTH",
    "PHASES",
    "OBSERVED_PHASES",
    "POINT_COLUMNS",
    "Configs",
    "ModelParams",
    "Evaluation",
    "HoldoutReport",
    "blackout_mask",
    "blackout_phases",
    "evaluate",
    "evaluate_packed",
    "evaluate_reference",
    "random_configs",
    "compare_speed",
    "prediction_table",
    "validate_points",
    "predict_points",
    "fit",
    "holdout_error",
    "synthetic_points",
    "conversion_points",
    "lab_points",
    "cycle_points",
    "points_from_records",
    "measure_points",
]

BASE_PAGE = 4096
HUGE_PAGE = 2 << 20

STRATEGIES: tuple[str, ...] = (
    "copy-fresh",
    "copy-fallocate",
    "copy-populate",
    "write",
    "pwrite",
    "vmsplice-splice",
    "vmsplice-gift",
    "process_vm_readv",
    "memfd-from-birth",
    "thp-shmem",
    "hugetlb",
)
"""Conversion strategies, in the order of their codes in :class:`Configs`."""

FROM_BIRTH = "memfd-from-birth"
_FROM_BIRTH_CODE = STRATEGIES.index(FROM_BIRTH)

PHASES: tuple[str, ...] = ("convert", "preserve", "load", "kexec", "memmap", "kho_decode", "restore")
"""The model's phases, in the order of the columns of :attr:`Evaluation.phase_seconds`."""

OBSERVED_PHASES: tuple[str, ...] = ("fault", "memcpy", "convert", "preserve", "load", "kexec", "restore")
"""The values the ``phase`` column of fit points may take."""

POINT_COLUMNS: tuple[str, ...] = ("phase", "strategy", "size_bytes", "mem_bytes", "folio_size", "threads", "seconds")

_SCALARS: tuple[str, ...] = (
    "parallel_efficiency",
    "fault_per_byte_s",
    "fault_per_folio_s",
    "memcpy_per_byte_s",
    "preserve_fixed_s",
    "preserve_per_folio_s",
    "load_s",
    "kexec_s",
    "memmap_per_page_s",
    "kho_decode_per_folio_s",
    "restore_fixed_s",
    "restore_per_folio_s",
)
# Positions in the packed scalar vector, read by the numba kernel as compile-time constants.
_EFFICIENCY, _FAULT_FOLIO, _MEMCPY_BYTE, _PRESERVE_FIXED, _PRESERVE_FOLIO = 0, 2, 3, 4, 5
_LOAD, _KEXEC, _MEMMAP_PAGE, _DECODE_FOLIO, _RESTORE_FIXED, _RESTORE_FOLIO = 6, 7, 8, 9, 10, 11


# --- configurations ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Configs:
    """Host configurations to evaluate, one per element of five equally long arrays."""

    mem_bytes: np.ndarray
    """RAM of the host (float64)."""
    preserved_fraction: np.ndarray
    """Fraction of the RAM kept across the kexec, 0..1 (float64)."""
    folio_bytes: np.ndarray
    """Folio size of the preserved memory (float64; a power of two, at least 4096)."""
    threads: np.ndarray
    """Threads (CPUs) for the parallel phases (int64, at least 1)."""
    strategy: np.ndarray
    """Index into :data:`STRATEGIES` (int64)."""

    @classmethod
    def make(
        cls,
        mem_bytes: Any,
        preserved_fraction: Any = 1.0,
        folio_bytes: Any = BASE_PAGE,
        threads: Any = 1,
        strategy: Any = FROM_BIRTH,
    ) -> Configs:
        """Configurations from arrays or scalars (broadcast together); strategies by name or code. Raises
        ``ValueError`` naming the first bad value."""
        codes = np.asarray(strategy)
        if codes.dtype.kind not in "iu":
            codes = np.vectorize(_strategy_code, otypes=[np.int64])(codes.astype(object))
        arrays = np.broadcast_arrays(
            np.asarray(mem_bytes, dtype=np.float64),
            np.asarray(preserved_fraction, dtype=np.float64),
            np.asarray(folio_bytes, dtype=np.float64),
            np.asarray(threads, dtype=np.int64),
            codes,
        )
        configs = cls(*(np.ascontiguousarray(a.reshape(-1)) for a in arrays))
        configs.check()
        return configs

    @classmethod
    def grid(
        cls,
        mem_bytes: Sequence[float],
        folio_bytes: Sequence[float],
        strategies: Sequence[str],
        threads: Sequence[int] = (1,),
        preserved_fraction: Sequence[float] = (1.0,),
    ) -> Configs:
        """Every combination of the given values (memory size varying slowest)."""
        rows = list(itertools.product(mem_bytes, preserved_fraction, folio_bytes, threads, strategies))
        return cls.make(*([row[i] for row in rows] for i in range(5)))

    def check(self) -> None:
        """Raises ``ValueError`` when the arrays differ in length or hold a value the model cannot take."""
        n = len(self.mem_bytes)
        if any(len(a) != n for a in (self.preserved_fraction, self.folio_bytes, self.threads, self.strategy)):
            raise ValueError("configuration arrays differ in length")
        with np.errstate(divide="ignore", invalid="ignore"):
            not_power_of_two = np.log2(self.folio_bytes) % 1 != 0
        problems = (
            (~(self.mem_bytes > 0), "mem_bytes must be positive"),
            (~((self.preserved_fraction >= 0) & (self.preserved_fraction <= 1)), "preserved_fraction is 0..1"),
            (~(self.folio_bytes >= BASE_PAGE) | not_power_of_two, "folio_bytes must be 4096·2^k"),
            (self.threads < 1, "threads must be at least 1"),
            ((self.strategy < 0) | (self.strategy >= len(STRATEGIES)), "strategy code out of range"),
        )
        for bad, message in problems:
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"configuration {i}: {message} ({self.row(i)})")

    def __len__(self) -> int:
        return len(self.mem_bytes)

    def row(self, i: int) -> dict[str, Any]:
        code = int(self.strategy[i])
        return {
            "mem_bytes": float(self.mem_bytes[i]),
            "preserved_fraction": float(self.preserved_fraction[i]),
            "folio_bytes": float(self.folio_bytes[i]),
            "threads": int(self.threads[i]),
            "strategy": STRATEGIES[code] if 0 <= code < len(STRATEGIES) else code,
        }

    def slice(self, start: int, stop: int) -> Configs:
        """Configurations ``start`` to ``stop`` (views, no copy)."""
        return Configs(*(a[start:stop] for a in self.arrays()))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.mem_bytes, self.preserved_fraction, self.folio_bytes, self.threads, self.strategy

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "mem_bytes": self.mem_bytes,
                "preserved_fraction": self.preserved_fraction,
                "folio_bytes": self.folio_bytes,
                "threads": self.threads,
                "strategy": np.asarray(STRATEGIES, dtype=object)[self.strategy],
            }
        )


def _strategy_code(strategy: Any) -> int:
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}: choose from {', '.join(STRATEGIES)}")
        return STRATEGIES.index(strategy)
    return int(strategy)


def random_configs(n: int, seed: int = 0) -> Configs:
    """``n`` random host configurations: 64 GiB to 4 TiB (log-uniform), 5-100 % preserved, 4 KiB / 2 MiB /
    1 GiB folios, 1 to 128 threads, any strategy."""
    rng = np.random.default_rng(seed)
    mem = np.exp2(rng.uniform(36, 42, n))
    return Configs.make(
        mem_bytes=np.ceil(mem / BASE_PAGE) * BASE_PAGE,
        preserved_fraction=rng.uniform(0.05, 1.0, n),
        folio_bytes=rng.choice([BASE_PAGE, HUGE_PAGE, 1 << 30], n),
        threads=rng.choice([1, 2, 4, 8, 16, 32, 64, 128], n),
        strategy=rng.integers(0, len(STRATEGIES), n),
    )


# --- parameters ----------------------------------------------------------------------------------------------


def _nan_per_strategy() -> dict[str, float]:
    return {name: (0.0 if name == FROM_BIRTH else math.nan) for name in STRATEGIES}


@dataclass(frozen=True)
class ModelParams:
    """The model's parameters (seconds, per byte, per folio or per base page; see the module docstring for the
    equations). NaN means not fitted: no measured point could determine it."""

    parallel_efficiency: float = math.nan
    fault_per_byte_s: float = math.nan
    fault_per_folio_s: float = math.nan
    memcpy_per_byte_s: float = math.nan
    preserve_fixed_s: float = math.nan
    preserve_per_folio_s: float = math.nan
    load_s: float = math.nan
    kexec_s: float = math.nan
    memmap_per_page_s: float = math.nan
    kho_decode_per_folio_s: float = math.nan
    restore_fixed_s: float = math.nan
    restore_per_folio_s: float = math.nan
    convert_fixed_s: dict[str, float] = field(default_factory=_nan_per_strategy)
    convert_per_byte_s: dict[str, float] = field(default_factory=_nan_per_strategy)
    provenance: dict[str, str] = field(default_factory=dict)
    """For each parameter, where its value came from (points used, or why it is NaN or 0)."""

    def __post_init__(self) -> None:
        for table in ("convert_fixed_s", "convert_per_byte_s"):
            given = getattr(self, table)
            unknown = sorted(set(given) - set(STRATEGIES))
            if unknown:
                raise ValueError(f"{table} names unknown strategies {unknown}: choose from {', '.join(STRATEGIES)}")
            complete = _nan_per_strategy()
            complete.update({name: float(value) for name, value in given.items() if name != FROM_BIRTH})
            object.__setattr__(self, table, complete)

    def pack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The scalars (in :data:`_SCALARS` order) and the per-strategy conversion arrays, for the kernel."""
        scalars = np.array([getattr(self, name) for name in _SCALARS], dtype=np.float64)
        fixed = np.array([self.convert_fixed_s.get(s, math.nan) for s in STRATEGIES], dtype=np.float64)
        per_byte = np.array([self.convert_per_byte_s.get(s, math.nan) for s in STRATEGIES], dtype=np.float64)
        fixed[_FROM_BIRTH_CODE] = per_byte[_FROM_BIRTH_CODE] = 0.0
        return scalars, fixed, per_byte

    def unfitted(self) -> list[str]:
        """Names of the parameters that are NaN (per-strategy ones as ``convert_per_byte_s[strategy]``)."""
        names = [name for name in _SCALARS if math.isnan(getattr(self, name))]
        for table in ("convert_fixed_s", "convert_per_byte_s"):
            names += [f"{table}[{s}]" for s, v in getattr(self, table).items() if math.isnan(v)]
        return names

    def fitted_strategies(self) -> list[str]:
        """Strategies whose conversion can be predicted (memfd-from-birth always can: it costs nothing)."""
        return [
            s
            for s in STRATEGIES
            if s == FROM_BIRTH
            or not (math.isnan(self.convert_per_byte_s.get(s, math.nan)) or math.isnan(self.convert_fixed_s[s]))
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (NaN as ``None``)."""

        def plain(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        out: dict[str, Any] = {name: plain(getattr(self, name)) for name in _SCALARS}
        out["convert_fixed_s"] = {s: plain(v) for s, v in self.convert_fixed_s.items()}
        out["convert_per_byte_s"] = {s: plain(v) for s, v in self.convert_per_byte_s.items()}
        out["provenance"] = dict(self.provenance)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelParams:
        """The inverse of :meth:`to_dict`."""

        def num(value: Any) -> float:
            return math.nan if value is None else float(value)

        kwargs: dict[str, Any] = {name: num(values.get(name)) for name in _SCALARS}
        for table in ("convert_fixed_s", "convert_per_byte_s"):
            kwargs[table] = {s: num(v) for s, v in (values.get(table) or {}).items()}
        kwargs["provenance"] = dict(values.get("provenance") or {})
        return cls(**kwargs)


# --- blackout --------------------------------------------------------------------------------------------------


def blackout_mask(
    convert_in_blackout: bool = True, preserve_in_blackout: bool = True, load_in_blackout: bool = False
) -> np.ndarray:
    """Which phases count as blackout for each strategy: a ``(len(STRATEGIES), len(PHASES))`` uint8 array.

    The defaults are the model's documented choice (see the module docstring). memfd-from-birth never counts a
    conversion. kexec, memmap, kho_decode and restore always count."""
    mask = np.ones((len(STRATEGIES), len(PHASES)), dtype=np.uint8)
    mask[:, PHASES.index("convert")] = convert_in_blackout
    mask[_FROM_BIRTH_CODE, PHASES.index("convert")] = 0
    mask[:, PHASES.index("preserve")] = preserve_in_blackout
    mask[:, PHASES.index("load")] = load_in_blackout
    return mask


def blackout_phases(mask: np.ndarray | None = None) -> dict[str, list[str]]:
    """For each strategy, the phases that count as blackout under ``mask`` (default :func:`blackout_mask`)."""
    mask = blackout_mask() if mask is None else mask
    return {s: [p for j, p in enumerate(PHASES) if mask[i, j]] for i, s in enumerate(STRATEGIES)}


# --- evaluation: the numba kernel and the plain-Python reference ---------------------------------------------


class Evaluation(NamedTuple):
    """Seconds per phase (``(n, len(PHASES))``, columns in :data:`PHASES` order) and the blackout (``(n,)``)."""

    phase_seconds: np.ndarray
    blackout_s: np.ndarray

    def to_frame(self, configs: Configs | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(self.phase_seconds, columns=[f"{p}_s" for p in PHASES])
        frame["blackout_s"] = self.blackout_s
        return frame if configs is None else pd.concat([configs.to_frame(), frame], axis=1)


@numba.njit(cache=True, nogil=True)
def _evaluate_kernel(mem, fraction, folio, threads, strategy, scalars, conv_fixed, conv_per_byte, mask, out, blackout):
    efficiency = scalars[_EFFICIENCY]
    for i in range(mem.shape[0]):
        preserved = fraction[i] * mem[i]
        folios = np.ceil(preserved / folio[i])
        base_folios = np.ceil(preserved / 4096.0)
        speedup = 1.0
        if threads[i] > 1:
            speedup = 1.0 + (threads[i] - 1.0) * efficiency
        s = strategy[i]
        convert = 0.0
        if s != _FROM_BIRTH_CODE:
            per_byte_work = conv_per_byte[s] * preserved
            if folios != base_folios:
                per_byte_work += scalars[_FAULT_FOLIO] * (folios - base_folios)
            copy_floor = scalars[_MEMCPY_BYTE] * preserved
            if per_byte_work < copy_floor:
                per_byte_work = copy_floor
            convert = (conv_fixed[s] + per_byte_work) / speedup
        out[i, 0] = convert
        out[i, 1] = scalars[_PRESERVE_FIXED] + scalars[_PRESERVE_FOLIO] * folios
        out[i, 2] = scalars[_LOAD]
        out[i, 3] = scalars[_KEXEC]
        out[i, 4] = scalars[_MEMMAP_PAGE] * (mem[i] / 4096.0) / speedup
        out[i, 5] = scalars[_DECODE_FOLIO] * folios
        out[i, 6] = (scalars[_RESTORE_FIXED] + scalars[_RESTORE_FOLIO] * folios) / speedup
        total = 0.0
        for j in range(out.shape[1]):
            if mask[s, j]:
                total += out[i, j]
        blackout[i] = total


def evaluate_packed(
    arrays: Sequence[np.ndarray],
    scalars: np.ndarray,
    conv_fixed: np.ndarray,
    conv_per_byte: np.ndarray,
    mask: np.ndarray,
) -> Evaluation:
    """The numba kernel on configuration ``arrays`` (as :meth:`Configs.arrays`) and packed parameters
    (:meth:`ModelParams.pack`): what a Dask worker runs on its chunk."""
    mem, fraction, folio, threads, strategy = (np.ascontiguousarray(a) for a in arrays)
    out = np.empty((len(mem), len(PHASES)), dtype=np.float64)
    blackout = np.empty(len(mem), dtype=np.float64)
    _evaluate_kernel(
        mem.astype(np.float64, copy=False),
        fraction.astype(np.float64, copy=False),
        folio.astype(np.float64, copy=False),
        threads.astype(np.int64, copy=False),
        strategy.astype(np.int64, copy=False),
        scalars,
        conv_fixed,
        conv_per_byte,
        np.ascontiguousarray(mask, dtype=np.uint8),
        out,
        blackout,
    )
    return Evaluation(out, blackout)


def evaluate(configs: Configs, params: ModelParams, mask: np.ndarray | None = None) -> Evaluation:
    """Per-phase seconds and blackout of every configuration (numba, one thread)."""
    return evaluate_packed(configs.arrays(), *params.pack(), blackout_mask() if mask is None else mask)


def evaluate_reference(configs: Configs, params: ModelParams, mask: np.ndarray | None = None) -> Evaluation:
    """The same model in plain Python: a loop over configurations with Python floats (slow; for checking the
    kernel and for measuring its speed-up)."""
    mask_rows = (blackout_mask() if mask is None else mask).tolist()
    e = params.parallel_efficiency
    fixed = [0.0 if s == FROM_BIRTH else params.convert_fixed_s[s] for s in STRATEGIES]
    per_byte = [0.0 if s == FROM_BIRTH else params.convert_per_byte_s[s] for s in STRATEGIES]
    rows, blackouts = [], []
    for mem, fraction, folio, threads, s in zip(*(a.tolist() for a in configs.arrays()), strict=True):
        preserved = fraction * mem
        folios = float(math.ceil(preserved / folio))
        base_folios = float(math.ceil(preserved / BASE_PAGE))
        speedup = 1.0 + (threads - 1.0) * e if threads > 1 else 1.0
        if STRATEGIES[s] == FROM_BIRTH:
            convert = 0.0
        else:
            per_byte_work = per_byte[s] * preserved
            if folios != base_folios:
                per_byte_work += params.fault_per_folio_s * (folios - base_folios)
            copy_floor = params.memcpy_per_byte_s * preserved
            if per_byte_work < copy_floor:
                per_byte_work = copy_floor
            convert = (fixed[s] + per_byte_work) / speedup
        phases = [
            convert,
            params.preserve_fixed_s + params.preserve_per_folio_s * folios,
            params.load_s,
            params.kexec_s,
            params.memmap_per_page_s * (mem / BASE_PAGE) / speedup,
            params.kho_decode_per_folio_s * folios,
            (params.restore_fixed_s + params.restore_per_folio_s * folios) / speedup,
        ]
        blackouts.append(sum(value for value, counts in zip(phases, mask_rows[s], strict=True) if counts))
        rows.append(phases)
    return Evaluation(np.array(rows, dtype=np.float64).reshape(-1, len(PHASES)), np.array(blackouts, dtype=np.float64))


def _best_time(call: Any, repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), result


def compare_speed(params: ModelParams, n_configs: int = 10_000, seed: int = 0, repeats: int = 3) -> dict[str, Any]:
    """Times the numba kernel (compiled beforehand) and the plain-Python reference on the same ``n_configs``
    random configurations, each the best of ``repeats``, in this run, and checks that they agree."""
    configs = random_configs(n_configs, seed)
    evaluate(configs.slice(0, 4), params)
    sweep_s, fast = _best_time(lambda: evaluate(configs, params), repeats)
    reference_s, slow = _best_time(lambda: evaluate_reference(configs, params), repeats)
    return {
        "configs": n_configs,
        "sweep_s": sweep_s,
        "reference_s": reference_s,
        "speedup": reference_s / sweep_s if sweep_s > 0 else math.inf,
        "matches_reference": bool(
            np.allclose(fast.phase_seconds, slow.phase_seconds, rtol=1e-12, equal_nan=True)
            and np.allclose(fast.blackout_s, slow.blackout_s, rtol=1e-12, equal_nan=True)
        ),
    }


def _size_label(n: float) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{int(n) >> shift} {unit}"
    return f"{int(n)} B"


def prediction_table(
    params: ModelParams,
    mem_bytes: Sequence[float] = (1 << 40, 2 << 40, 4 << 40),
    folio_bytes: Sequence[float] = (BASE_PAGE, HUGE_PAGE, 1 << 30),
    strategies: Sequence[str] | None = None,
    threads: int = 1,
    preserved_fraction: float = 1.0,
) -> pd.DataFrame:
    """Predicted phases and blackout for every memory size × folio size × strategy (default: the strategies
    that could be fitted). ``blackout_lower_bound_s`` sums only the blackout phases that could be predicted."""
    strategies = list(strategies or params.fitted_strategies())
    configs = Configs.grid(mem_bytes, folio_bytes, strategies, (threads,), (preserved_fraction,))
    frame = evaluate(configs, params).to_frame(configs)
    mask = blackout_mask()
    counted = mask[configs.strategy].astype(bool)
    phases = frame[[f"{p}_s" for p in PHASES]].to_numpy()
    frame["blackout_lower_bound_s"] = np.where(counted & np.isfinite(phases), phases, 0.0).sum(axis=1)
    frame.insert(1, "mem", [_size_label(m) for m in frame["mem_bytes"]])
    frame.insert(4, "folio", [_size_label(f) for f in frame["folio_bytes"]])
    return frame


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
    """The model's value of every point's measurement (see the module docstring for what each phase means)."""
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
    model_rows = np.isin(phase, ("convert", "preserve", "load", "kexec", "restore"))
    if model_rows.any():
        rows = pts[model_rows]
        mem = np.where(rows["phase"] == "kexec", rows["mem_bytes"], rows["size_bytes"]).astype(np.float64)
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
                values[i] = phases[i, column[name]]
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

    fixed, per_byte = _nan_per_strategy(), _nan_per_strategy()
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
    selected, speedup, folio_columns = rows("restore")
    run(
        "restore",
        selected,
        [folio_columns[:, 0] / speedup, np.ones(len(selected)) / speedup],
        [_Term("restore_per_folio_s", "nan", "the preserved size"), _Term("restore_fixed_s", "zero")],
    )
    return ModelParams(**values, convert_fixed_s=fixed, convert_per_byte_s=per_byte, provenance=notes)


# --- hold-out error -----------------------------------------------------------------------------------------------


class HoldoutReport(NamedTuple):
    """Held-out points with their predictions (``points``), and the relative error per phase (``per_phase``)."""

    points: pd.DataFrame
    per_phase: pd.DataFrame


def holdout_error(points: pd.DataFrame, holdout_sizes: Sequence[float] | None = None) -> HoldoutReport:
    """Fits on some sizes and predicts the others: by default, for each phase (and conversion strategy) with
    at least two sizes measured, the largest size is held out, so the error is that of extrapolating to a
    larger size; ``holdout_sizes`` holds out exactly those ``size_bytes`` instead. The relative error is
    ``(predicted - measured) / measured``."""
    pts = validate_points(points)
    if holdout_sizes is not None:
        held = pts["size_bytes"].isin([float(s) for s in holdout_sizes])
    else:
        largest = pts.groupby(["phase", "strategy"])["size_bytes"].transform("max")
        distinct = pts.groupby(["phase", "strategy"])["size_bytes"].transform("nunique")
        held = (pts["size_bytes"] == largest) & (distinct >= 2)
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
            median_abs_rel_error=("abs_error", "median"),
            max_abs_rel_error=("abs_error", "max"),
            mean_rel_error=("relative_error", "mean"),
        )
        .reset_index()
    )
    return HoldoutReport(tested.reset_index(drop=True), summary)


def synthetic_points(
    params: ModelParams,
    sizes: Sequence[float] = (64 << 20, 256 << 20, 1 << 30),
    threads: Sequence[int] = (1, 2, 4),
    strategies: Sequence[str] = ("copy-fresh", "pwrite", "vmsplice-splice"),
    mem_sizes: Sequence[float] = (4 << 30, 64 << 30),
    noise: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Points the model itself would measure, with relative Gaussian noise of ``noise``: for checking that
    :func:`fit` recovers the parameters it was given."""
    rows: list[dict[str, Any]] = []

    def add(phase: str, size: float, folio: float = BASE_PAGE, n: int = 1, strategy: str = "", mem=math.nan):
        rows.append(dict(phase=phase, strategy=strategy, size_bytes=size, mem_bytes=mem, folio_size=folio, threads=n))

    for size, n in itertools.product(sizes, threads):
        add("fault", size, BASE_PAGE, n)
        add("fault", size, HUGE_PAGE, n)
        add("memcpy", size, BASE_PAGE, n)
        for strategy in strategies:
            add("convert", size, BASE_PAGE, n, strategy)
    for size in sizes:
        add("preserve", size)
        add("load", size)
        add("restore", size)
        for mem in mem_sizes:
            add("kexec", size, BASE_PAGE, 2, mem=max(mem, size))
    frame = pd.DataFrame(rows, columns=[c for c in POINT_COLUMNS if c != "seconds"])
    exact = predict_points(frame.assign(seconds=1.0), params)
    rng = np.random.default_rng(seed)
    frame["seconds"] = exact * (1.0 + noise * rng.standard_normal(len(frame)))
    return frame


# --- adapters from the project's measurements -----------------------------------------------------------------


def conversion_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Fit points from a :func:`workbench.kernels.conversion.run_conversion` frame: the available, verified
    rows, with the fastest copier and pipe size of each strategy, size and thread count. The folio size is
    2 MiB where the whole size came in huge pages (``huge_bytes``), 4 KiB otherwise; a row that got only some
    huge pages is dropped (its folio size is mixed). memfd-from-birth rows are dropped: it converts nothing."""
    rows = frame[frame["available"].astype(bool) & frame["verified"].astype(bool)].copy()
    huge = rows["huge_bytes"] if "huge_bytes" in rows.columns else pd.Series(math.nan, index=rows.index)
    huge = huge.astype(np.float64)
    all_huge = huge >= rows["size"]
    mixed = (huge > 0) & ~all_huge
    keep = ~mixed & (rows["strategy"] != FROM_BIRTH)
    rows = rows[keep].assign(folio_size=np.where(all_huge[keep], HUGE_PAGE, BASE_PAGE))
    best = rows.groupby(["strategy", "size", "threads", "folio_size"], as_index=False)["seconds"].min()
    return pd.DataFrame(
        {
            "phase": "convert",
            "strategy": best["strategy"],
            "size_bytes": best["size"].astype(np.float64),
            "mem_bytes": math.nan,
            "folio_size": best["folio_size"].astype(np.float64),
            "threads": best["threads"].astype(np.int64),
            "seconds": best["seconds"].astype(np.float64),
        },
        columns=list(POINT_COLUMNS),
    )


_LAB_PHASES = ("preserve", "load", "kexec", "restore")
_LAB_SIZE_COLUMNS = ("size_bytes", "memfd_bytes", "preserved_bytes")
_LAB_MEM_COLUMNS = ("mem_bytes", "guest_ram_bytes", "ram_bytes", "memory_bytes")


def lab_points(frame: pd.DataFrame, folio_size: int = BASE_PAGE, threads: int = 1) -> pd.DataFrame:
    """Fit points from lab cycle phases: a frame with ``phase`` and ``seconds``, the preserved bytes (a column
    named one of ``size_bytes``, ``memfd_bytes``, ``preserved_bytes``, or ``memfds`` and ``memfd_size``) and the
    booted machine's RAM (one of ``mem_bytes``, ``guest_ram_bytes``, ``ram_bytes``, ``memory_bytes``; needed by
    ``kexec`` rows). ``folio_size`` and ``threads`` apply where the frame has no such column.

    Only ``preserve``, ``load``, ``kexec`` and ``restore`` are kept: ``prepare`` and ``verify`` fill and hash the
    memfds (not part of a live update), ``finish`` runs after the workload is back, and a ``blackout`` row is the
    lab's own sum of phases already present."""
    if not {"phase", "seconds"} <= set(frame.columns):
        raise ValueError(f"lab points need the columns phase and seconds, not {list(frame.columns)}")
    size_column = next((c for c in _LAB_SIZE_COLUMNS if c in frame.columns), None)
    if size_column is not None:
        size = frame[size_column].astype(np.float64)
    elif {"memfds", "memfd_size"} <= set(frame.columns):
        size = frame["memfds"].astype(np.float64) * frame["memfd_size"].astype(np.float64)
    else:
        raise ValueError(
            f"lab points need the preserved bytes: a column {' or '.join(_LAB_SIZE_COLUMNS)}, or memfds and memfd_size"
        )
    mem_column = next((c for c in _LAB_MEM_COLUMNS if c in frame.columns), None)
    points = pd.DataFrame(
        {
            "phase": frame["phase"].astype(str),
            "strategy": "",
            "size_bytes": size,
            "mem_bytes": frame[mem_column].astype(np.float64) if mem_column else math.nan,
            "folio_size": frame["folio_size"] if "folio_size" in frame.columns else float(folio_size),
            "threads": frame["threads"] if "threads" in frame.columns else threads,
            "seconds": frame["seconds"].astype(np.float64),
        },
        columns=list(POINT_COLUMNS),
    )
    return points[points["phase"].isin(_LAB_PHASES)].reset_index(drop=True)


def cycle_points(result: Mapping[str, Any], params: Mapping[str, Any]) -> pd.DataFrame:
    """Fit points from one lab cycle (a ``lab.cycle`` record's result and parameters): its ``phases``, the
    preserved bytes ``memfds × memfd_size``, the guest's ``memory_mb`` and, for ``kexec``, its ``cpus``."""
    phases = dict(result.get("phases") or {})
    memory_mb = result.get("memory_mb") or params.get("memory_mb")
    cpus = int(params.get("cpus") or 1)
    frame = pd.DataFrame(
        {
            "phase": list(phases),
            "seconds": list(phases.values()),
            "size_bytes": float(params["memfds"]) * float(params["memfd_size"]),
            "mem_bytes": float(memory_mb) * (1 << 20) if memory_mb else math.nan,
            "threads": [cpus if name == "kexec" else 1 for name in phases],
        }
    )
    return lab_points(frame)


def points_from_records(store: Any) -> pd.DataFrame:
    """Fit points from a record store (:class:`workbench.records.RecordStore`): the points measured by earlier
    ``bench.model`` runs, the conversions of ``bench.conversion`` runs and the phases of verified ``lab.cycle``
    runs, each with a ``source`` column (``kind:record id``). Unreadable runs are skipped."""
    from workbench.records import RecordStoreError

    frames = []
    for run in store.runs(status="ok"):
        try:
            if run.kind == "bench.model" and "points" in run.table_names:
                table = store.table(run.id, "points")
                points = table[table.get("source", pd.Series("measured", index=table.index)) == "measured"]
            elif run.kind == "bench.conversion" and "conversion" in run.table_names:
                points = conversion_points(store.table(run.id, "conversion"))
            elif run.kind == "lab.cycle" and run.result.get("verified"):
                points = cycle_points(run.result, run.params)
            else:
                continue
        except (RecordStoreError, KeyError, ValueError):
            continue
        frames.append(points[list(POINT_COLUMNS)].assign(source=f"{run.kind}:{run.id}"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*POINT_COLUMNS, "source"])


# --- measurements on this machine -------------------------------------------------------------------------------


@numba.njit(parallel=True, cache=True, nogil=True)
def _touch_every_page(data, page_size):
    for p in numba.prange(data.shape[0] // page_size):
        data[p * page_size] = 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _copy_blocks(dst, src, block):
    for b in numba.prange((src.shape[0] + block - 1) // block):
        start = b * block
        end = min(start + block, src.shape[0])
        dst[start:end] = src[start:end]


_COPY_BLOCK_WORDS = 1 << 13


def _private_mapping(size: int, huge: bool) -> tuple[mmap.mmap, np.ndarray]:
    """Fresh anonymous private memory (``mmap(-1, n)`` alone would be shared, i.e. shmem) of ``size`` bytes,
    2 MiB aligned, advised for or against transparent huge pages; nothing touched yet."""
    mem = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mem.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    data = np.frombuffer(mem, dtype=np.uint8)
    start = (-data.ctypes.data) % HUGE_PAGE
    return mem, data[start : start + size]


def _anon_huge_bytes() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    return 0


def _time_fault(size: int, threads: int, huge: bool) -> tuple[float, bool]:
    """Seconds to first-touch ``size`` bytes with ``threads`` threads, and whether every folio was huge."""
    mem, data = _private_mapping(size, huge)
    try:
        before = _anon_huge_bytes()
        with numba_threads(threads):
            start = time.perf_counter()
            _touch_every_page(data, BASE_PAGE)
            seconds = time.perf_counter() - start
        all_huge = _anon_huge_bytes() - before >= size
        del data
        return seconds, all_huge
    finally:
        mem.close()


def _time_memcpy(size: int, threads: int) -> float:
    src_mem, src = _private_mapping(size, False)
    dst_mem, dst = _private_mapping(size, False)
    try:
        src[:] = 7
        dst[:] = 0
        with numba_threads(threads):
            start = time.perf_counter()
            _copy_blocks(dst.view(np.uint64), src.view(np.uint64), _COPY_BLOCK_WORDS)
            seconds = time.perf_counter() - start
        if not np.array_equal(dst[::BASE_PAGE], src[::BASE_PAGE]):
            raise RuntimeError("memcpy measurement copied wrong bytes")
        del src, dst
        return seconds
    finally:
        src_mem.close()
        dst_mem.close()


def _time_own_conversion(strategy: str, source: np.ndarray, threads: int) -> float:
    """Seconds from ``memfd_create`` to the last byte in place, for the strategies measured here when
    :mod:`workbench.kernels.conversion` is not available; verified before returning."""
    size = source.size
    start = time.perf_counter()
    fd = os.memfd_create("workbench-model", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        if strategy == "pwrite":
            view = memoryview(source)
            bounds = np.linspace(0, size // BASE_PAGE, threads + 1).astype(int) * BASE_PAGE

            def write_range(lo: int, hi: int) -> None:
                while lo < hi:
                    lo += os.pwrite(fd, view[lo:hi], lo)

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(write_range, bounds[:-1], bounds[1:]))
            seconds = time.perf_counter() - start
            mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        else:
            if strategy == "copy-fallocate":
                os.posix_fallocate(fd, 0, size)
            mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            target = np.frombuffer(mem, dtype=np.uint64)
            with numba_threads(threads):
                _copy_blocks(target, source.view(np.uint64), _COPY_BLOCK_WORDS)
            seconds = time.perf_counter() - start
            del target
        try:
            if not np.array_equal(np.frombuffer(mem, dtype=np.uint8), source):
                raise RuntimeError(f"{strategy} conversion produced a memfd that differs from its source")
        finally:
            mem.close()
        return seconds
    finally:
        os.close(fd)


_OWN_STRATEGIES = ("copy-fresh", "copy-fallocate", "pwrite")


def measure_points(
    sizes: Sequence[int] = (32 << 20, 64 << 20, 128 << 20),
    threads: Sequence[int] = (1, 2),
    repeats: int = 3,
    strategies: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Measures fit points on this machine, best of ``repeats`` each: first touch of fresh anonymous memory in
    4 KiB folios and in 2 MiB transparent huge pages (when the kernel gives them; otherwise that point is left
    out), memcpy between prefaulted buffers, and conversions into memfds. Conversions come from
    :func:`workbench.kernels.conversion.run_conversion` when that module exists (``strategies``: default all),
    otherwise from this module's own copy-fresh, copy-fallocate and pwrite. Sizes must be multiples of 2 MiB."""
    if not sizes or any(s <= 0 or s % HUGE_PAGE for s in sizes):
        raise ValueError(f"sizes {list(sizes)} must be positive multiples of 2 MiB")
    limit = numba.config.NUMBA_NUM_THREADS
    if not threads or any(not 1 <= n <= limit for n in threads):
        raise ValueError(f"thread counts {list(threads)} must be between 1 and {limit} (NUMBA_NUM_THREADS)")
    small = np.zeros(4 * BASE_PAGE, dtype=np.uint8)
    _touch_every_page(small, BASE_PAGE)
    _copy_blocks(small.view(np.uint64), small.view(np.uint64).copy(), _COPY_BLOCK_WORDS)
    # Touch the largest size once first: on a virtual machine, memory the guest never used costs the host a fault.
    _time_fault(max(sizes), max(threads), False)

    rows: list[dict[str, Any]] = []

    def add(phase: str, size: int, folio: int, n: int, seconds: float, strategy: str = "") -> None:
        rows.append(dict(phase=phase, strategy=strategy, size_bytes=size, mem_bytes=math.nan, folio_size=folio,
                         threads=n, seconds=seconds))  # fmt: skip

    for size, n in itertools.product(sizes, threads):
        add("fault", size, BASE_PAGE, n, min(_time_fault(size, n, False)[0] for _ in range(repeats)))
        huge_runs = [_time_fault(size, n, True) for _ in range(repeats)]
        if all(all_huge for _, all_huge in huge_runs):
            add("fault", size, HUGE_PAGE, n, min(seconds for seconds, _ in huge_runs))
        add("memcpy", size, BASE_PAGE, n, min(_time_memcpy(size, n) for _ in range(repeats)))
    frame = pd.DataFrame(rows, columns=list(POINT_COLUMNS))
    try:
        from workbench.kernels.conversion import run_conversion
    except ModuleNotFoundError as exc:
        if exc.name != "workbench.kernels.conversion":
            raise
        return pd.concat([frame, _measure_own_conversions(sizes, threads, repeats, strategies)], ignore_index=True)
    converted, _limits = run_conversion(list(sizes), list(threads), strategies, repeats)
    return pd.concat([frame, conversion_points(converted)], ignore_index=True)


def _measure_own_conversions(
    sizes: Sequence[int], threads: Sequence[int], repeats: int, strategies: Sequence[str] | None
) -> pd.DataFrame:
    names = [s for s in (strategies or _OWN_STRATEGIES) if s in _OWN_STRATEGIES]
    rows = []
    for size in sizes:
        source_mem, source = _private_mapping(size, False)
        try:
            source.view(np.uint64)[:] = np.arange(size // 8, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            for name, n in itertools.product(names, threads):
                seconds = min(_time_own_conversion(name, source, n) for _ in range(repeats))
                rows.append(dict(phase="convert", strategy=name, size_bytes=size, mem_bytes=math.nan,
                                 folio_size=BASE_PAGE, threads=n, seconds=seconds))  # fmt: skip
            del source
        finally:
            source_mem.close()
    return pd.DataFrame(rows, columns=list(POINT_COLUMNS))
