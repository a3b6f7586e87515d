"""``workbench bench blackout``: the blackout with memory preserved against a plain kexec in the same run, over
guest RAM, preserved share and kernel (e.g. with and without deferred struct page init).

Every point is one recorded, verified ``lab.cycle`` in the lab VM: the baseline (preserve ``0``) is the
``baseline`` workload (nothing preserved, same guest, same kernel, KHO on); the others preserve that share of
guest RAM in memfds of at most :data:`MEMFD_CHUNK`. The cycles run one after another (a cycle beside another would
time the host's contention). From them: ``blackout_ratio`` = blackout(preserved) / blackout(baseline) per kernel,
guest RAM and share, and per kernel the least-squares slopes of the blackout (and of each named phase, when the
cycles report them) in seconds per GiB of guest RAM and per GiB preserved, with their standard errors."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.experiments.recording import record_summary
from workbench.lab.cycle import run_cycle
from workbench.lab.errors import InvalidCycle
from workbench.lab.kernel_name import parse_kernel_name
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workload import Workload, make_workload
from workbench.records import RecordStore

__all__ = [
    "BlackoutSweep",
    "SweepPoint",
    "MEMFD_CHUNK",
    "plan_points",
    "point_workload",
    "run_blackout_sweep",
    "record_blackout_sweep",
    "summarize_points",
]

PAGE = 4096
#: the largest memfd a point preserves its share in
MEMFD_CHUNK = 64 << 20
#: phase columns taken from each cycle's result when it reports them
ANATOMY_FIELDS = ("kernel_blackout_s", "agent_start_s", "unexplained_s")


@dataclass(frozen=True)
class SweepPoint:
    """One cycle of the sweep: ``kernel``, guest RAM ``memory_mb``, ``share`` of it preserved (0: the baseline)
    and the ``repeat`` index."""

    kernel: str
    memory_mb: int
    share: float
    repeat: int

    @property
    def preserved_bytes(self) -> int:
        return (int(self.memory_mb * (1 << 20) * self.share) // PAGE) * PAGE


@dataclass
class BlackoutSweep:
    """``memory_mb``: guest RAM sizes; ``shares``: fractions of guest RAM to preserve (0 is the baseline, always
    run); ``kernels``: kernel names; ``cpus``, ``tcg_threads``: the VM; ``repeat``: cycles per point."""

    memory_mb: list[int]
    shares: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    kernels: list[str] = field(default_factory=lambda: ["7.2"])
    cpus: int = 2
    tcg_threads: str = "single"
    repeat: int = 1

    def validate(self) -> None:
        """Raises :class:`InvalidCycle` naming the first parameter that is wrong."""
        if not self.memory_mb or any(m < 512 for m in self.memory_mb):
            raise InvalidCycle(f"--memory needs sizes of at least 512M, not {self.memory_mb}")
        if any(not 0 <= s <= 0.6 for s in self.shares):
            raise InvalidCycle(f"--preserve takes shares of guest RAM from 0 to 60%, not {self.shares}")
        if self.repeat < 1:
            raise InvalidCycle("--repeat must be at least 1")
        if not self.kernels:
            raise InvalidCycle("--kernel needs at least one kernel")
        for name in self.kernels:
            parse_kernel_name(name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_points(sweep: BlackoutSweep) -> list[SweepPoint]:
    """Every cycle of ``sweep``, the baseline first at each size, repeats interleaved (so that a slow spell of the
    host spreads over the points instead of landing on one)."""
    shares = [0.0] + sorted({s for s in sweep.shares if s > 0})
    return [
        SweepPoint(kernel, memory, share, r)
        for r in range(sweep.repeat)
        for kernel in sweep.kernels
        for memory in sweep.memory_mb
        for share in shares
    ]


def point_workload(point: SweepPoint) -> Workload:
    """The workload of ``point``: ``baseline``, or its share in memfds of at most :data:`MEMFD_CHUNK`."""
    total = point.preserved_bytes
    if total == 0:
        return make_workload("baseline")
    count = math.ceil(total / MEMFD_CHUNK)
    size = (total // count // PAGE) * PAGE
    return make_workload("memfd", memfds=count, memfd_size=size)


def _row(point: SweepPoint, preserved: int, result: dict[str, Any], environment: dict[str, Any]) -> dict[str, Any]:
    row = {
        "kernel": point.kernel,
        "memory_mb": point.memory_mb,
        "share": point.share,
        "preserved_bytes": preserved,
        "repeat": point.repeat,
        "verified": bool(result.get("verified")),
        "blackout_s": result.get("blackout_s"),
        "record_id": result.get("record_id"),
        "kernel_release": result.get("kernel_release_after"),
        "accelerator": environment.get("accelerator"),
        "tcg_threads": environment.get("tcg_threads"),
    }
    for name in ANATOMY_FIELDS:
        row[name] = result.get(name)
    for name, seconds in (result.get("blackout_phases") or {}).items():
        row[f"phase_{name}_s"] = seconds
    return row


def run_blackout_sweep(
    sweep: BlackoutSweep,
    store: RecordStore,
    run: Any = None,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs every point of ``sweep`` (each a recorded ``lab.cycle`` in ``store``) and returns the summary (see
    :func:`summarize_points`) with ``points`` (one row per cycle). ``run``: the ``bench.blackout`` record being
    written (its ``points`` table is rewritten after each cycle, so an interrupted sweep keeps what it measured);
    ``on_point(row)`` is called after each cycle. A cycle that fails ends the sweep with its error."""
    sweep.validate()
    rows: list[dict[str, Any]] = []
    for point in plan_points(sweep):
        workload = point_workload(point)
        target = QemuTarget(point.kernel, memory_mb=point.memory_mb, cpus=sweep.cpus, tcg_threads=sweep.tcg_threads)
        result = run_cycle(workload, CycleParams(), target=target, store=store)
        if not result.get("verified"):
            raise InvalidCycle(f"the cycle {result.get('record_id')} of {point} did not verify: a sweep needs all")
        # the bytes the workload preserved: the share rounded to whole pages per memfd
        row = _row(point, workload.data_bytes(), result, store.get(result["record_id"]).environment)
        rows.append(row)
        if run is not None:
            run.add_table("points", pd.DataFrame(rows))
        if on_point:
            on_point(row)
    return {**summarize_points(pd.DataFrame(rows)), "points": rows}


def record_blackout_sweep(
    sweep: BlackoutSweep,
    store: RecordStore,
    on_point: Callable[[dict[str, Any]], None] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], Path]:
    """:func:`run_blackout_sweep` inside a ``bench.blackout`` record of ``store`` (what ``workbench bench
    blackout`` runs): returns the summary with its ``record_id``, and its JSON file (``output``, default in the
    record's folder)."""
    sweep.validate()
    return record_summary(
        store,
        "bench.blackout",
        sweep.as_dict(),
        lambda run: run_blackout_sweep(sweep, store, run, on_point),
        output=output,
    )


def _fit(frame: pd.DataFrame, column: str) -> dict[str, Any] | None:
    """Least squares of ``column`` on guest GiB and preserved GiB: intercept and both slopes with standard
    errors; None when the points cannot separate them."""
    data = frame.dropna(subset=[column])
    if len(data) < 4 or data["memory_mb"].nunique() < 2 or data["preserved_bytes"].nunique() < 2:
        return None
    x = np.column_stack(
        [np.ones(len(data)), data["memory_mb"] / 1024.0, data["preserved_bytes"] / float(1 << 30)]
    ).astype(float)
    y = data[column].to_numpy(dtype=float)
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    if rank < 3:
        return None
    dof = len(y) - 3
    residual = y - x @ coef
    sigma2 = float(residual @ residual) / dof if dof > 0 else math.nan
    errors = np.sqrt(np.diag(sigma2 * np.linalg.inv(x.T @ x))) if dof > 0 else [math.nan] * 3
    return {
        "intercept_s": float(coef[0]),
        "per_gib_ram_s": float(coef[1]),
        "per_gib_ram_stderr": float(errors[1]),
        "per_gib_preserved_s": float(coef[2]),
        "per_gib_preserved_stderr": float(errors[2]),
        "points": int(len(y)),
    }


def summarize_points(points: pd.DataFrame) -> dict[str, Any]:
    """``ratios``: per kernel, guest RAM and share, the mean blackout against the baseline's (same kernel and RAM)
    as ``blackout_ratio``, and against the first kernel's at the same point as ``vs_reference_kernel`` (e.g.
    7.2+deferred-init against 7.2); ``slopes``: per kernel and per measured column (``blackout_s`` and each
    phase), the fit of :func:`_fit`; ``accelerators`` and ``tcg_threads`` seen."""
    if points.empty:
        return {"ratios": [], "slopes": {}, "accelerators": [], "tcg_threads": []}
    means = points.groupby(["kernel", "memory_mb", "share"], as_index=False).agg(
        blackout_s=("blackout_s", "mean"),
        blackout_sd=("blackout_s", "std"),
        preserved_bytes=("preserved_bytes", "first"),
        cycles=("blackout_s", "size"),
    )
    baseline = means[means["share"] == 0].set_index(["kernel", "memory_mb"])["blackout_s"]
    first = points["kernel"].iloc[0]
    reference = means[means["kernel"] == first].set_index(["memory_mb", "share"])["blackout_s"]
    ratios = []
    for row in means.itertuples(index=False):
        base = baseline.get((row.kernel, row.memory_mb))
        same_point = reference.get((row.memory_mb, row.share))
        ratios.append(
            {
                "kernel": row.kernel,
                "memory_mb": int(row.memory_mb),
                "share": float(row.share),
                "preserved_bytes": int(row.preserved_bytes),
                "blackout_s": float(row.blackout_s),
                "blackout_sd": None if pd.isna(row.blackout_sd) else float(row.blackout_sd),
                "cycles": int(row.cycles),
                "baseline_s": None if base is None else float(base),
                "blackout_ratio": None if not base else float(row.blackout_s / base),
                "reference_kernel": first,
                "vs_reference_kernel": None if not same_point else float(row.blackout_s / same_point),
            }
        )
    measured = ["blackout_s", *[c for c in points.columns if c.startswith("phase_") or c in ANATOMY_FIELDS]]
    slopes = {
        kernel: {c: fit for c in measured if (fit := _fit(group, c)) is not None}
        for kernel, group in points.groupby("kernel")
    }
    return {
        "ratios": ratios,
        "slopes": slopes,
        "accelerators": sorted({a for a in points["accelerator"].dropna()}),
        "tcg_threads": sorted({t for t in points["tcg_threads"].dropna()}),
    }
