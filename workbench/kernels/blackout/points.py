"""Fit points for the blackout model (columns :data:`~workbench.kernels.blackout.fitting.POINT_COLUMNS`): measured on
this machine, adapted from the project's records, or made by the model itself.

:func:`measure_points` measures ``fault``, ``memcpy`` and ``convert`` points here with
:mod:`workbench.kernels.conversion`, :func:`conversion_points` adapts a
:func:`~workbench.kernels.conversion.run_conversion` frame and :func:`lab_points` a frame of lab cycle phases
(:func:`points_from_records` gathers all of them from the record store). :func:`synthetic_points` are the points
the model would measure, for checking the fit.

The calibration is only as good as its sources: the host-side parameters (``fault``, ``memcpy``, ``convert``)
come from the machine the measurements ran on, the kernel-side ones (``preserve`` to ``restore``) from lab cycles,
which run in a QEMU guest (under TCG on the project's machines, far slower than bare metal). Predictions for a
large host extrapolate both linearly in bytes, folios and base pages.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numba
import numpy as np
import pandas as pd

from workbench.kernels.blackout.fitting import POINT_COLUMNS, predict_points
from workbench.kernels.blackout.model import BASE_PAGE, FROM_BIRTH, HUGE_PAGE, ModelParams
from workbench.kernels.conversion import first_touch_seconds, memcpy_seconds, run_conversion

__all__ = [
    "synthetic_points",
    "conversion_points",
    "lab_points",
    "cycle_points",
    "points_from_records",
    "measure_points",
]


# --- points the model would measure ------------------------------------------------------------------------


def synthetic_points(
    params: ModelParams,
    sizes: Sequence[float] = (64 << 20, 256 << 20, 1 << 30),
    threads: Sequence[int] = (1, 2, 4),
    strategies: Sequence[str] = ("copy-fresh", "pwrite", "vmsplice-splice"),
    mem_sizes: Sequence[float] = (4 << 30, 64 << 30),
    noise: float = 0.0,
    seed: int = 0,
    anatomy: bool = False,
) -> pd.DataFrame:
    """Points the model itself would measure, with relative Gaussian noise of ``noise``: for checking that
    :func:`~workbench.kernels.blackout.fitting.fit` recovers the parameters it was given. The boot of each
    preserved size on each machine of ``mem_sizes`` is one lumped ``kexec`` point, or with ``anatomy`` the
    three points of a blackout's anatomy (``memmap``, ``kho_decode``, ``kexec_rest``)."""
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
            for phase in ("memmap", "kho_decode", "kexec_rest") if anatomy else ("kexec",):
                add(phase, size, BASE_PAGE, 2, mem=max(mem, size))
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


_LAB_PHASES = ("preserve", "load", "kexec", "memmap", "kho_decode", "kexec_rest", "restore")
_LAB_SIZE_COLUMNS = ("size_bytes", "memfd_bytes", "preserved_bytes")
_LAB_MEM_COLUMNS = ("mem_bytes", "guest_ram_bytes", "ram_bytes", "memory_bytes")


def lab_points(frame: pd.DataFrame, folio_size: int = BASE_PAGE, threads: int = 1) -> pd.DataFrame:
    """Fit points from lab cycle phases: a frame with ``phase`` and ``seconds``, the preserved bytes (a column
    named one of ``size_bytes``, ``memfd_bytes``, ``preserved_bytes``, or ``memfds`` and ``memfd_size``) and the
    booted machine's RAM (one of ``mem_bytes``, ``guest_ram_bytes``, ``ram_bytes``, ``memory_bytes``; needed by
    ``kexec`` rows). ``folio_size`` and ``threads`` apply where the frame has no such column.

    Only ``preserve``, ``load``, ``kexec``, ``restore`` and the anatomy's ``memmap``, ``kho_decode`` and
    ``kexec_rest`` are kept: ``prepare`` and ``verify`` fill and hash the memfds (not part of a live update),
    ``finish`` runs after the workload is back, and a ``blackout`` row is the lab's own sum of phases already
    present."""
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
    preserved bytes (the sizes of the memfds it verified, else ``memfds × memfd_size``), the guest's
    ``memory_mb`` and, for the boot, its CPUs (one under single-threaded TCG, which runs every vCPU on one host
    thread).

    A cycle that reports its blackout's anatomy (``blackout_phases`` and ``kernel_blackout_s``) gives the boot as
    ``memmap`` (``memmap_init``), ``kho_decode`` (``kho_restore``, when something was preserved) and ``kexec_rest``
    (the rest of kexec → /init), and ``restore`` as its ``retrieve`` (the host's clock, from the agent's start in
    the next kernel); the lab's own start of the agent (``agent_start``) is not a phase of the model. Other cycles
    give the lumped ``kexec``."""
    phases = dict(result.get("phases") or {})
    anatomy = dict(result.get("blackout_phases") or {})
    memory_mb = result.get("memory_mb") or params.get("memory_mb")
    preserved = _preserved_bytes(result, params)
    seconds = {name: phases[name] for name in ("preserve", "load", "restore", "kexec") if name in phases}
    kernel_blackout = result.get("kernel_blackout_s")
    if kernel_blackout is not None and {"memmap_init", "kho_restore"} <= set(anatomy):
        kho = anatomy["kho_restore"] if preserved > 0 else 0.0
        seconds.pop("kexec", None)
        seconds.update(memmap=anatomy["memmap_init"], kexec_rest=kernel_blackout - anatomy["memmap_init"] - kho)
        if kho:
            seconds["kho_decode"] = kho
        if "retrieve" in anatomy:
            seconds["restore"] = anatomy["retrieve"]
    threads = _guest_threads(result, params)
    frame = pd.DataFrame(
        {
            "phase": list(seconds),
            "seconds": list(seconds.values()),
            "size_bytes": preserved,
            "mem_bytes": float(memory_mb) * (1 << 20) if memory_mb else math.nan,
            "threads": [threads if name in ("kexec", "memmap") else 1 for name in seconds],
        }
    )
    return lab_points(frame)


def _preserved_bytes(result: Mapping[str, Any], params: Mapping[str, Any]) -> float:
    memfds = result.get("memfds")
    if isinstance(memfds, list) and all(isinstance(m, Mapping) and "size" in m for m in memfds):
        return float(sum(m["size"] for m in memfds))
    return float(params["memfds"]) * float(params["memfd_size"])


def _guest_threads(result: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    cpus = int(params.get("cpus") or 1)
    single_tcg = result.get("accelerator") == "tcg" and params.get("tcg_threads", "single") == "single"
    return 1 if single_tcg else cpus


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


def measure_points(
    sizes: Sequence[int] = (32 << 20, 64 << 20, 128 << 20),
    threads: Sequence[int] = (1, 2),
    repeats: int = 3,
    strategies: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Measures fit points on this machine, best of ``repeats`` each, with :mod:`workbench.kernels.conversion`:
    first touch of fresh anonymous memory in 4 KiB folios and in 2 MiB transparent huge pages (when the kernel
    gives them; otherwise that point is left out), memcpy between prefaulted buffers, and the conversions of
    :func:`~workbench.kernels.conversion.run_conversion` (``strategies``: default all), at every size in
    ``sizes`` (bytes, multiples of 2 MiB) and thread count in ``threads``."""
    if not sizes or any(s <= 0 or s % HUGE_PAGE for s in sizes):
        raise ValueError(f"sizes {list(sizes)} must be positive multiples of 2 MiB")
    limit = numba.config.NUMBA_NUM_THREADS
    if not threads or any(not 1 <= n <= limit for n in threads):
        raise ValueError(f"thread counts {list(threads)} must be between 1 and {limit} (NUMBA_NUM_THREADS)")
    # Touch the largest size once first: on a virtual machine, memory the guest never used costs the host a fault.
    first_touch_seconds(max(sizes), max(threads))

    rows: list[dict[str, Any]] = []

    def add(phase: str, size: int, folio: int, n: int, seconds: float) -> None:
        rows.append(dict(phase=phase, strategy="", size_bytes=size, mem_bytes=math.nan, folio_size=folio,
                         threads=n, seconds=seconds))  # fmt: skip

    for size, n in itertools.product(sizes, threads):
        add("fault", size, BASE_PAGE, n, min(first_touch_seconds(size, n)[0] for _ in range(repeats)))
        huge_runs = [first_touch_seconds(size, n, huge=True) for _ in range(repeats)]
        if all(all_huge for _, all_huge in huge_runs):
            add("fault", size, HUGE_PAGE, n, min(seconds for seconds, _ in huge_runs))
        add("memcpy", size, BASE_PAGE, n, min(memcpy_seconds(size, n) for _ in range(repeats)))
    frame = pd.DataFrame(rows, columns=list(POINT_COLUMNS))
    converted, _limits = run_conversion(list(sizes), list(threads), strategies, repeats)
    return pd.concat([frame, conversion_points(converted)], ignore_index=True)
