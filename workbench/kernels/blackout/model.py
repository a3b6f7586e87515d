"""The blackout of a live update, modelled phase by phase: parameters, the numba evaluation and what counts as
blackout.

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
    kho_decode = d1·n_f + d2·n_f²                              KHO restoring the preserved memory in early boot,
                                                                one thread: the radix tree walked and each folio
                                                                reserved in memblock (memblock_reserve() and
                                                                memblock_reserved_mark_noinit() per folio, each
                                                                scanning memblock's regions below it: quadratic
                                                                where the folios do not merge into few regions)
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

The parameters (:class:`ModelParams`) are fitted by :mod:`workbench.kernels.blackout.fitting` on points from
:mod:`workbench.kernels.blackout.points`. A parameter without points to fit it stays NaN (listed by
:meth:`ModelParams.unfitted`), and so does every prediction that needs it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numba
import numpy as np
import pandas as pd

from workbench.kernels import conversion

__all__ = [
    "BASE_PAGE",
    "HUGE_PAGE",
    "STRATEGIES",
    "FROM_BIRTH",
    "PHASES",
    "Configs",
    "ModelParams",
    "Evaluation",
    "blackout_mask",
    "blackout_phases",
    "evaluate",
    "evaluate_packed",
    "evaluate_reference",
    "random_configs",
    "compare_speed",
    "prediction_table",
]

BASE_PAGE = 4096
HUGE_PAGE = 2 << 20

STRATEGIES: tuple[str, ...] = tuple(conversion.STRATEGIES)
"""The conversion strategies of :data:`workbench.kernels.conversion.STRATEGIES`, in the order of their codes in
:class:`Configs`."""

FROM_BIRTH = "memfd-from-birth"
_FROM_BIRTH_CODE = STRATEGIES.index(FROM_BIRTH)

PHASES: tuple[str, ...] = ("convert", "preserve", "load", "kexec", "memmap", "kho_decode", "restore")
"""The model's phases, in the order of the columns of :attr:`Evaluation.phase_seconds`."""

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
    "kho_decode_per_folio2_s",
)
# Positions in the packed scalar vector, read by the numba kernel as compile-time constants.
_EFFICIENCY, _FAULT_FOLIO, _MEMCPY_BYTE, _PRESERVE_FIXED, _PRESERVE_FOLIO = 0, 2, 3, 4, 5
_LOAD, _KEXEC, _MEMMAP_PAGE, _DECODE_FOLIO, _RESTORE_FIXED, _RESTORE_FOLIO = 6, 7, 8, 9, 10, 11
_DECODE_FOLIO2 = 12


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
    kho_decode_per_folio2_s: float = 0.0
    """``d2``: 0 where the points show no growth with the square of the preserved folios (or cannot show it)."""
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
        if "kho_decode_per_folio2_s" not in values:  # written before the model had the term: a linear fit
            kwargs["kho_decode_per_folio2_s"] = 0.0
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
        out[i, 5] = scalars[_DECODE_FOLIO] * folios + scalars[_DECODE_FOLIO2] * folios * folios
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
            params.kho_decode_per_folio_s * folios + params.kho_decode_per_folio2_s * folios * folios,
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
    that could be fitted). ``blackout_lower_bound_s`` sums only the blackout phases that could be predicted;
    ``dominant_phase`` is the blackout phase with the most seconds and ``dominant_share`` its share of
    ``blackout_lower_bound_s``."""
    strategies = list(strategies or params.fitted_strategies())
    configs = Configs.grid(mem_bytes, folio_bytes, strategies, (threads,), (preserved_fraction,))
    frame = evaluate(configs, params).to_frame(configs)
    mask = blackout_mask()
    counted = mask[configs.strategy].astype(bool)
    phases = frame[[f"{p}_s" for p in PHASES]].to_numpy()
    counted_seconds = np.where(counted & np.isfinite(phases), phases, 0.0)
    frame["blackout_lower_bound_s"] = counted_seconds.sum(axis=1)
    dominant = counted_seconds.argmax(axis=1)
    frame["dominant_phase"] = np.where(counted_seconds.max(axis=1) > 0, np.asarray(PHASES, dtype=object)[dominant], "")
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["dominant_share"] = counted_seconds.max(axis=1) / frame["blackout_lower_bound_s"].to_numpy()
    frame.insert(1, "mem", [_size_label(m) for m in frame["mem_bytes"]])
    frame.insert(4, "folio", [_size_label(f) for f in frame["folio_bytes"]])
    return frame
