"""Fit points: adapted from conversion frames, lab cycles and the record store, and measured on this machine."""

import math

import numpy as np
import pandas as pd
import pytest

from tests.kernels.blackout.helpers import TRUE, GiB, MiB, rich_points
from workbench.kernels.blackout.fitting import POINT_COLUMNS, fit, holdout_error, predict_points
from workbench.kernels.blackout.points import (
    conversion_points,
    cycle_points,
    lab_points,
    measure_points,
    points_from_records,
)

# --- adapters ----------------------------------------------------------------------------------------------------


def test_conversion_points_take_the_fastest_verified_rows():
    frame = pd.DataFrame(
        [
            dict(strategy="pwrite", copier="kernel", size=64 * MiB, threads=1, pipe_size=0, seconds=0.2,
                 huge_bytes=math.nan, available=True, verified=True, reason=""),
            dict(strategy="copy-fresh", copier="numpy", size=64 * MiB, threads=1, pipe_size=0, seconds=0.3,
                 huge_bytes=math.nan, available=True, verified=True, reason=""),
            dict(strategy="copy-fresh", copier="numba", size=64 * MiB, threads=1, pipe_size=0, seconds=0.25,
                 huge_bytes=math.nan, available=True, verified=True, reason=""),
            dict(strategy="copy-fresh", copier="numba", size=64 * MiB, threads=2, pipe_size=0, seconds=0.01,
                 huge_bytes=math.nan, available=True, verified=False, reason=""),
            dict(strategy="thp-shmem", copier="numba", size=64 * MiB, threads=1, pipe_size=0, seconds=0.1,
                 huge_bytes=float(64 * MiB), available=True, verified=True, reason=""),
            dict(strategy="thp-shmem", copier="numba", size=128 * MiB, threads=1, pipe_size=0, seconds=0.1,
                 huge_bytes=float(64 * MiB), available=True, verified=True, reason=""),
            dict(strategy="hugetlb", copier="numba", size=64 * MiB, threads=1, pipe_size=0, seconds=math.nan,
                 huge_bytes=math.nan, available=False, verified=False, reason="no free hugetlb pages"),
            dict(strategy="memfd-from-birth", copier="none", size=64 * MiB, threads=1, pipe_size=0, seconds=0.0,
                 huge_bytes=math.nan, available=True, verified=True, reason=""),
        ]
    )  # fmt: skip
    points = conversion_points(frame).set_index("strategy")
    assert list(points.columns) == [c for c in POINT_COLUMNS if c != "strategy"]
    assert sorted(points.index) == ["copy-fresh", "pwrite", "thp-shmem"]
    assert points.loc["copy-fresh", "seconds"] == 0.25 and points.loc["copy-fresh", "threads"] == 1
    assert points.loc["thp-shmem", "folio_size"] == 2 * MiB and points.loc["pwrite", "folio_size"] == 4096


def test_lab_points_keep_the_model_phases_with_their_sizes():
    frame = pd.DataFrame(
        {
            "phase": ["prepare", "preserve", "load", "kexec", "restore", "verify", "finish"],
            "seconds": [3.0, 0.01, 0.8, 4.2, 0.03, 2.0, 0.001],
            "memfds": 2,
            "memfd_size": 64 * MiB,
            "guest_ram_bytes": float(GiB),
        }
    )
    points = lab_points(frame)
    assert list(points["phase"]) == ["preserve", "load", "kexec", "restore"]
    assert (points["size_bytes"] == 128 * MiB).all() and (points["mem_bytes"] == GiB).all()
    with pytest.raises(ValueError, match="preserved bytes"):
        lab_points(frame.drop(columns=["memfds"]))


def test_cycle_points_from_a_lab_cycle_record():
    result = {"phases": {"prepare": 3.0, "preserve": 0.01, "load": 0.8, "kexec": 4.2, "restore": 0.03},
              "memory_mb": 1024, "verified": True}  # fmt: skip
    points = cycle_points(result, {"memfds": 2, "memfd_size": 64 * MiB, "cpus": 2}).set_index("phase")
    assert points.loc["kexec", "threads"] == 2 and points.loc["preserve", "threads"] == 1
    assert points.loc["kexec", "mem_bytes"] == GiB and points.loc["restore", "size_bytes"] == 128 * MiB
    predicted = predict_points(points.reset_index(), TRUE)
    assert np.isfinite(predicted).all()


def test_points_from_records_reads_cycles_conversions_and_earlier_fits(tmp_path):
    from workbench.records import RecordStore

    store = RecordStore(tmp_path / "data")
    result = {"phases": {"preserve": 0.01, "load": 0.8, "kexec": 4.2, "restore": 0.03}, "memory_mb": 1024,
              "verified": True}  # fmt: skip
    with store.run("lab.cycle", {"memfds": 2, "memfd_size": 64 * MiB, "cpus": 2}) as run:
        run.update_result(**result)
    with store.run("lab.cycle", {"memfds": 1, "memfd_size": 64 * MiB, "cpus": 2}) as run:
        run.update_result(**{**result, "verified": False})
    with store.run("bench.model", {}) as run:
        earlier = rich_points(TRUE, 0.0).head(5)
        run.add_table("points", pd.concat([earlier.assign(source="measured"), earlier.assign(source="lab.cycle:x")]))
    points = points_from_records(store)
    assert sorted(points["source"].str.split(":").str[0].value_counts().items()) == [
        ("bench.model", 5),
        ("lab.cycle", 4),
    ]
    lab = points[points["source"].str.startswith("lab.cycle")].set_index("phase")
    assert lab.loc["kexec", "mem_bytes"] == GiB and lab.loc["kexec", "size_bytes"] == 128 * MiB


# --- real measurements ---------------------------------------------------------------------------------------------


def test_measure_points_times_this_machine_and_can_be_fitted():
    points = measure_points((4 * MiB, 8 * MiB, 16 * MiB), threads=(1,), repeats=1, strategies=["copy-fresh", "pwrite"])
    assert list(points.columns) == list(POINT_COLUMNS)
    assert (points["seconds"] > 0).all()
    assert {"fault", "memcpy", "convert"} <= set(points["phase"])
    assert {"copy-fresh", "pwrite"} <= set(points.loc[points["phase"] == "convert", "strategy"])
    fitted = fit(points)
    assert fitted.fault_per_byte_s > 0 and fitted.memcpy_per_byte_s > 0
    assert fitted.convert_per_byte_s["copy-fresh"] > 0 and fitted.convert_per_byte_s["pwrite"] > 0
    report = holdout_error(points)
    assert (report.points["size_bytes"] == 16 * MiB).all()
    assert np.isfinite(report.per_phase["median_abs_rel_error"]).all()


def _anatomy_cycle(memfd_sizes, kho_restore):
    result = {
        "phases": {"prepare": 3.0, "preserve": 0.02, "load": 1.1, "kexec": 7.6, "restore": 0.3, "verify": 0.6},
        "blackout_phases": {"kexec_to_console": 0.65, "early_boot": 0.08, "memmap_init": 0.02,
                            "kho_restore": kho_restore, "initcalls": 1.1, "kernel_to_init": 0.01,
                            "agent_start": 5.1, "retrieve": 0.41},
        "kernel_blackout_s": 1.86 + kho_restore,
        "memfds": [{"size": size, "pages": size // 4096} for size in memfd_sizes],
        "memory_mb": 2048, "accelerator": "tcg", "verified": True,
    }  # fmt: skip
    return result, {"cpus": 2, "tcg_threads": "single", "workload": "memfd"}


def test_cycle_points_from_a_cycle_with_its_blackout_anatomy():
    points = cycle_points(*_anatomy_cycle([64 * MiB, 64 * MiB], kho_restore=0.25)).set_index("phase")
    assert sorted(points.index) == ["kexec_rest", "kho_decode", "load", "memmap", "preserve", "restore"]
    assert points.loc["memmap", "seconds"] == 0.02 and points.loc["kho_decode", "seconds"] == 0.25
    assert points.loc["kexec_rest", "seconds"] == pytest.approx(1.86 - 0.02)
    assert points.loc["restore", "seconds"] == 0.41  # the anatomy's retrieve, on the host's clock
    assert (points["size_bytes"] == 128 * MiB).all() and (points["mem_bytes"] == 2 * GiB).all()
    assert points.loc["memmap", "threads"] == 1  # single-threaded TCG runs both vCPUs on one host thread
    predicted = predict_points(points.reset_index(), TRUE)
    assert np.isfinite(predicted).all()


def test_a_baseline_cycle_has_no_kho_point_and_keeps_its_kho_span_in_the_rest():
    result, params = _anatomy_cycle([], kho_restore=0.015)
    params = {**params, "workload": "baseline", "tcg_threads": "multi"}
    points = cycle_points(result, params).set_index("phase")
    assert "kho_decode" not in points.index and (points["size_bytes"] == 0).all()
    assert points.loc["kexec_rest", "seconds"] == pytest.approx(1.86 + 0.015 - 0.02)
    assert points.loc["memmap", "threads"] == 2
