"""``bench blackout``: the points of a sweep, the workloads, the ratios to the baseline and the slopes; one real
sweep in the lab VM."""

import numpy as np
import pandas as pd
import pytest

from workbench.lab.blackout_bench import (
    MEMFD_CHUNK,
    BlackoutSweep,
    SweepPoint,
    plan_points,
    point_workload,
    record_blackout_sweep,
    summarize_points,
)
from workbench.lab.errors import InvalidCycle


def test_the_baseline_comes_first_at_every_size_and_repeats_interleave():
    sweep = BlackoutSweep(memory_mb=[1024, 2048], shares=[0.5, 0.25], kernels=["7.2", "7.2+deferred-init"], repeat=2)
    points = plan_points(sweep)
    assert len(points) == 2 * 2 * 2 * 3
    assert [p.share for p in points[:3]] == [0.0, 0.25, 0.5]
    assert points[0].repeat == 0 and points[-1].repeat == 1 and points[12].repeat == 1


def test_a_point_preserves_its_share_in_memfds_of_at_most_64_mib():
    assert point_workload(SweepPoint("7.2", 1024, 0.0, 0)).name == "baseline"
    workload = point_workload(SweepPoint("7.2", 1024, 0.25, 0))
    assert workload.name == "memfd" and workload.memfd_size <= MEMFD_CHUNK
    assert workload.memfds * workload.memfd_size == 256 << 20
    odd = point_workload(SweepPoint("7.2", 1000, 0.3, 0))
    assert odd.memfd_size % 4096 == 0 and abs(odd.data_bytes() - 0.3 * 1000 * (1 << 20)) < odd.memfds * 4096


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"memory_mb": [256]}, "at least 512M"),
        ({"shares": [0.9]}, "60%"),
        ({"repeat": 0}, "repeat"),
        ({"kernels": ["7.2+no such variant!"]}, "no kernel variant"),
    ],
)
def test_a_sweep_that_cannot_run_is_refused(change, words):
    with pytest.raises(InvalidCycle, match=words):
        BlackoutSweep(**{"memory_mb": [1024], **change}).validate()


def synthetic(intercept=5.0, per_ram=0.8, per_preserved=2.5, noise=0.0, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for kernel, factor in (("7.2", 1.0), ("7.2+deferred-init", 0.5)):
        for memory in (1024, 2048, 4096):
            for share in (0.0, 0.25, 0.5):
                preserved = int(memory * share) << 20
                blackout = intercept + factor * per_ram * memory / 1024 + per_preserved * preserved / (1 << 30)
                rows.append(
                    {"kernel": kernel, "memory_mb": memory, "share": share, "preserved_bytes": preserved, "repeat": 0}
                    | {"blackout_s": blackout + rng.normal(0, noise), "accelerator": "tcg", "tcg_threads": "single"}
                )
    return pd.DataFrame(rows)


def test_the_slopes_come_back_from_points_made_with_them():
    summary = summarize_points(synthetic())
    fit = summary["slopes"]["7.2"]["blackout_s"]
    assert fit["per_gib_ram_s"] == pytest.approx(0.8) and fit["per_gib_preserved_s"] == pytest.approx(2.5)
    assert fit["intercept_s"] == pytest.approx(5.0) and fit["points"] == 9
    assert summary["slopes"]["7.2+deferred-init"]["blackout_s"]["per_gib_ram_s"] == pytest.approx(0.4)
    noisy = summarize_points(synthetic(noise=0.2))["slopes"]["7.2"]["blackout_s"]
    assert 0 < noisy["per_gib_ram_stderr"] < 0.5 and abs(noisy["per_gib_ram_s"] - 0.8) < 4 * noisy["per_gib_ram_stderr"]


def test_ratios_to_the_baseline_and_to_the_first_kernel():
    ratios = {(r["kernel"], r["memory_mb"], r["share"]): r for r in summarize_points(synthetic())["ratios"]}
    base = ratios[("7.2", 2048, 0.0)]
    assert base["blackout_ratio"] == pytest.approx(1.0)
    half = ratios[("7.2", 2048, 0.5)]
    assert half["blackout_ratio"] == pytest.approx((5 + 1.6 + 2.5) / (5 + 1.6))
    deferred = ratios[("7.2+deferred-init", 4096, 0.0)]
    assert deferred["vs_reference_kernel"] == pytest.approx((5 + 1.6) / (5 + 3.2))
    assert deferred["reference_kernel"] == "7.2"


@pytest.mark.lab
def test_a_real_sweep_against_its_baseline(lab_kernel, store):
    sweep = BlackoutSweep(memory_mb=[512, 1024], shares=[0.25], kernels=["7.2"])
    summary, path = record_blackout_sweep(sweep, store)
    assert path.is_file()
    record = store.get(summary["record_id"])
    assert record.kind == "bench.blackout" and record.status == "ok" and len(store.table(record.id, "points")) == 4
    assert len(summary["points"]) == 4 and all(p["verified"] for p in summary["points"])
    assert summary["accelerators"] and all(r["baseline_s"] > 0 for r in summary["ratios"])
    preserved = [r for r in summary["ratios"] if r["share"] > 0]
    assert [r["preserved_bytes"] for r in preserved] == [128 << 20, 256 << 20]
    assert all(r["blackout_ratio"] > 0 for r in preserved)
    assert "blackout_s" in summary["slopes"]["7.2"]
    kinds = {store.get(p["record_id"]).params["workload"] for p in summary["points"]}
    assert kinds == {"baseline", "memfd"}
