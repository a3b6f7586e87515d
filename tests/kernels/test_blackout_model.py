"""The blackout model: numba kernel against the plain-Python reference and the written equations, the fit, the
hold-out error, the adapters, real measurements, the Dask sweep and the CLI."""

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from workbench.kernels.blackout_model import (
    FROM_BIRTH,
    PHASES,
    POINT_COLUMNS,
    STRATEGIES,
    Configs,
    ModelParams,
    blackout_mask,
    blackout_phases,
    compare_speed,
    conversion_points,
    cycle_points,
    evaluate,
    evaluate_reference,
    fit,
    holdout_error,
    lab_points,
    measure_points,
    points_from_records,
    predict_points,
    prediction_table,
    random_configs,
    synthetic_points,
)
from workbench.kernels.sweep import bitwise_equal, chunk_bounds, sweep

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
FITTED_STRATEGIES = ("copy-fresh", "pwrite", "vmsplice-splice")

TRUE = ModelParams(
    parallel_efficiency=0.7,
    fault_per_byte_s=4e-10,
    fault_per_folio_s=1.5e-6,
    memcpy_per_byte_s=1.5e-10,
    preserve_fixed_s=5e-3,
    preserve_per_folio_s=3e-7,
    load_s=0.6,
    kexec_s=1.2,
    memmap_per_page_s=2e-8,
    kho_decode_per_folio_s=4e-7,
    restore_fixed_s=1e-2,
    restore_per_folio_s=5e-7,
    convert_fixed_s={"copy-fresh": 2e-3, "pwrite": 1e-3, "vmsplice-splice": 4e-3},
    convert_per_byte_s={"copy-fresh": 1.8e-9, "pwrite": 8e-10, "vmsplice-splice": 9e-10},
)
SCALARS = [name for name in TRUE.to_dict() if name.endswith("_s") or name == "parallel_efficiency"]
SCALARS = [name for name in SCALARS if name not in ("convert_fixed_s", "convert_per_byte_s")]


def random_params(seed: int) -> ModelParams:
    """Every parameter finite, each strategy with its own conversion costs."""
    rng = np.random.default_rng(seed)
    scalars = {name: float(10.0 ** rng.uniform(-9, 0)) for name in SCALARS}
    scalars["parallel_efficiency"] = float(rng.uniform(0, 1))
    return ModelParams(
        **scalars,
        convert_fixed_s={s: float(rng.uniform(0, 1e-2)) for s in STRATEGIES if s != FROM_BIRTH},
        convert_per_byte_s={s: float(10.0 ** rng.uniform(-10, -8)) for s in STRATEGIES if s != FROM_BIRTH},
    )


def rich_points(params: ModelParams, noise: float, seed: int = 0) -> pd.DataFrame:
    return synthetic_points(
        params,
        sizes=(16 * MiB, 64 * MiB, 256 * MiB, GiB, 4 * GiB),
        strategies=FITTED_STRATEGIES,
        mem_sizes=(4 * GiB, 16 * GiB, 64 * GiB),
        noise=noise,
        seed=seed,
    )


# --- evaluation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_numba_matches_reference_on_random_configs(seed):
    params, configs = random_params(seed), random_configs(3000, seed)
    fast, slow = evaluate(configs, params), evaluate_reference(configs, params)
    assert fast.phase_seconds.shape == (3000, len(PHASES))
    assert np.isfinite(fast.phase_seconds).all()
    np.testing.assert_allclose(fast.phase_seconds, slow.phase_seconds, rtol=1e-12, atol=0)
    np.testing.assert_allclose(fast.blackout_s, slow.blackout_s, rtol=1e-12, atol=0)


def test_numba_matches_reference_with_another_mask_and_nan_parameters():
    params = dataclasses.replace(TRUE, kexec_s=math.nan)
    mask = blackout_mask(convert_in_blackout=False, preserve_in_blackout=False, load_in_blackout=True)
    configs = random_configs(500, 9)
    fast, slow = evaluate(configs, params, mask), evaluate_reference(configs, params, mask)
    np.testing.assert_allclose(fast.phase_seconds, slow.phase_seconds, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(fast.blackout_s, slow.blackout_s, rtol=1e-12, equal_nan=True)
    assert np.isnan(fast.phase_seconds[:, PHASES.index("kexec")]).all()


def test_phases_follow_the_written_equations():
    mem, fraction, folio, threads = 2 * TiB, 0.5, 2 * MiB, 8
    configs = Configs.make(mem, fraction, folio, threads, ["pwrite", FROM_BIRTH])
    got = evaluate(configs, TRUE).to_frame()
    preserved = mem * fraction
    folios, base_folios = preserved / folio, preserved / 4096
    speedup = 1 + (threads - 1) * TRUE.parallel_efficiency
    expected = {
        "convert_s": (1e-3 + 8e-10 * preserved + 1.5e-6 * (folios - base_folios)) / speedup,
        "preserve_s": 5e-3 + 3e-7 * folios,
        "load_s": 0.6,
        "kexec_s": 1.2,
        "memmap_s": 2e-8 * (mem / 4096) / speedup,
        "kho_decode_s": 4e-7 * folios,
        "restore_s": (1e-2 + 5e-7 * folios) / speedup,
    }
    for column, value in expected.items():
        assert got.loc[0, column] == pytest.approx(value, rel=1e-12), column
    assert got.loc[1, "convert_s"] == 0.0
    in_blackout = ["preserve_s", "kexec_s", "memmap_s", "kho_decode_s", "restore_s"]
    assert got.loc[1, "blackout_s"] == pytest.approx(sum(expected[c] for c in in_blackout), rel=1e-12)
    assert got.loc[0, "blackout_s"] == pytest.approx(got.loc[1, "blackout_s"] + expected["convert_s"], rel=1e-12)


def test_no_conversion_beats_copying_its_bytes():
    cheap_write = dataclasses.replace(TRUE, convert_per_byte_s={"pwrite": 4e-10}, convert_fixed_s={"pwrite": 0.0})
    configs = Configs.make(TiB, 1.0, [4096, 2 * MiB], 1, "pwrite")
    convert = evaluate(configs, cheap_write).to_frame()["convert_s"]
    assert convert[0] == pytest.approx(4e-10 * TiB, rel=1e-12)
    # 2 MiB folios would save 1.5e-6 s for each of 511/512 of the 4 KiB folios: more than the bytes cost
    assert convert[1] == pytest.approx(1.5e-10 * TiB, rel=1e-12)
    np.testing.assert_array_equal(convert, evaluate_reference(configs, cheap_write).to_frame()["convert_s"])


def test_blackout_phases_are_explicit():
    phases = blackout_phases()
    assert phases[FROM_BIRTH] == ["preserve", "kexec", "memmap", "kho_decode", "restore"]
    assert phases["vmsplice-splice"] == ["convert", "preserve", "kexec", "memmap", "kho_decode", "restore"]
    assert all("load" not in counted for counted in phases.values())


def test_larger_folios_shorten_the_per_folio_phases():
    configs = Configs.make(TiB, 1.0, [4096, 2 * MiB, GiB], 1, "copy-fresh")
    frame = evaluate(configs, TRUE).to_frame()
    for column in ("convert_s", "preserve_s", "kho_decode_s", "restore_s", "blackout_s"):
        assert frame[column].is_monotonic_decreasing and frame[column].iloc[0] > frame[column].iloc[2], column
    assert frame["memmap_s"].nunique() == 1


def test_bad_configurations_are_rejected_clearly():
    with pytest.raises(ValueError, match="unknown strategy 'splice'"):
        Configs.make(TiB, strategy="splice")
    with pytest.raises(ValueError, match="folio_bytes"):
        Configs.make(TiB, folio_bytes=3000)
    with pytest.raises(ValueError, match="preserved_fraction"):
        Configs.make(TiB, preserved_fraction=1.5)


def test_compare_speed_reports_both_timings_and_agreement():
    report = compare_speed(TRUE, n_configs=2000, repeats=2)
    assert report["configs"] == 2000 and report["matches_reference"] is True
    assert report["sweep_s"] > 0 and report["reference_s"] > 0
    assert report["speedup"] == pytest.approx(report["reference_s"] / report["sweep_s"])


# --- fit ---------------------------------------------------------------------------------------------------------


def test_fit_recovers_parameters_exactly_without_noise():
    fitted = fit(rich_points(TRUE, noise=0.0))
    for name in SCALARS:
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=1e-6), name
    for strategy in FITTED_STRATEGIES:
        assert fitted.convert_per_byte_s[strategy] == pytest.approx(TRUE.convert_per_byte_s[strategy], rel=1e-6)
        assert fitted.convert_fixed_s[strategy] == pytest.approx(TRUE.convert_fixed_s[strategy], rel=1e-6)


def test_fit_recovers_parameters_from_noisy_points():
    fitted = fit(rich_points(TRUE, noise=0.01, seed=4))
    for name in SCALARS:
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=0.15), name
    for strategy in FITTED_STRATEGIES:
        assert fitted.convert_per_byte_s[strategy] == pytest.approx(TRUE.convert_per_byte_s[strategy], rel=0.05)
        assert fitted.convert_fixed_s[strategy] == pytest.approx(TRUE.convert_fixed_s[strategy], rel=0.5)
    truth = prediction_table(TRUE, strategies=FITTED_STRATEGIES)
    predicted = prediction_table(fitted, strategies=FITTED_STRATEGIES)
    np.testing.assert_allclose(predicted["blackout_s"], truth["blackout_s"], rtol=0.1)


def test_fit_leaves_what_was_not_measured_unfitted():
    points = rich_points(TRUE, noise=0.0)
    host_only = points[points["phase"].isin(["fault", "memcpy", "convert"]) & (points["folio_size"] == 4096)]
    fitted = fit(host_only)
    assert math.isnan(fitted.fault_per_folio_s)
    assert "folio size" in fitted.provenance["fault_per_folio_s"]
    for name in ("preserve_per_folio_s", "load_s", "kexec_s", "memmap_per_page_s", "restore_per_folio_s"):
        assert math.isnan(getattr(fitted, name)) and name in fitted.unfitted()
    table = prediction_table(fitted, mem_bytes=[TiB], folio_bytes=[4096], strategies=["copy-fresh"])
    assert math.isnan(table.loc[0, "blackout_s"])
    assert table.loc[0, "blackout_lower_bound_s"] == pytest.approx(table.loc[0, "convert_s"])


def test_fit_without_a_second_memory_size_cannot_know_struct_page_cost():
    points = rich_points(TRUE, noise=0.0)
    one_ram = points[(points["phase"] != "kexec") | (points["mem_bytes"] == 64 * GiB)]
    fitted = fit(one_ram)
    assert math.isnan(fitted.memmap_per_page_s)
    assert "mem_bytes" in fitted.provenance["memmap_per_page_s"]


def test_fit_rejects_points_it_cannot_read():
    with pytest.raises(ValueError, match="lack the columns"):
        fit(pd.DataFrame({"phase": ["fault"], "seconds": [1.0]}))
    points = rich_points(TRUE, noise=0.0).head(3).assign(phase="teleport")
    with pytest.raises(ValueError, match="unknown phases"):
        fit(points)


def test_holdout_error_is_zero_on_exact_model_points_and_reported_per_phase():
    report = holdout_error(rich_points(TRUE, noise=0.0))
    assert set(report.per_phase["phase"]) == {"fault", "memcpy", "convert", "preserve", "load", "kexec", "restore"}
    assert (report.points["size_bytes"] == 4 * GiB).all()
    assert report.per_phase["max_abs_rel_error"].max() < 1e-6


def test_holdout_error_sees_a_model_that_does_not_fit():
    points = rich_points(TRUE, noise=0.0)
    bent = points.copy()
    largest = (bent["phase"] == "memcpy") & (bent["size_bytes"] == 4 * GiB)
    bent.loc[largest, "seconds"] *= 3
    report = holdout_error(bent)
    memcpy = report.per_phase.set_index("phase").loc["memcpy"]
    assert memcpy["median_abs_rel_error"] == pytest.approx(2 / 3, rel=1e-6)


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


# --- Dask -----------------------------------------------------------------------------------------------------------


def test_chunk_bounds_cover_every_configuration_once():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(0, 4) == []


def test_bitwise_equal_sees_one_ulp():
    single = evaluate(random_configs(100, 5), TRUE)
    nudged = single.phase_seconds.copy()
    nudged[50, 3] = np.nextafter(nudged[50, 3], np.inf)
    assert bitwise_equal(single, single._replace(phase_seconds=single.phase_seconds.copy()))
    assert not bitwise_equal(single, single._replace(phase_seconds=nudged))


def test_dask_local_cluster_matches_single_process():
    from distributed import Client, LocalCluster

    configs = random_configs(10_000, 11)
    params = random_params(11)
    single = evaluate(configs, params)
    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        assert len(client.scheduler_info()["workers"]) == 2
        by_address = sweep(configs, params, cluster.scheduler_address, chunk_size=1234)
        by_client = sweep(configs, params, client)
    assert bitwise_equal(by_address, single)
    assert bitwise_equal(by_client, single)


def test_dask_default_starts_and_closes_a_local_cluster():
    configs = random_configs(2000, 12)
    result = sweep(configs, TRUE, n_workers=2)
    assert bitwise_equal(result, evaluate(configs, TRUE))


# --- CLI -------------------------------------------------------------------------------------------------------------


def test_cli_json_has_the_fields_and_refits_from_records(tmp_path):
    from workbench.cli.bench import bench

    data = tmp_path / "data"
    args = ["model", "--json", "--data", str(data), "--configs", "1000", "--repeats", "1", "--threads", "1"]
    sizes = ["--size", "4M", "--size", "8M", "--size", "16M"]
    result = CliRunner().invoke(bench, args + sizes, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    for key in ("sweep_s", "reference_s", "speedup", "holdout", "predictions", "params", "unfitted", "record_id"):
        assert key in summary, key
    assert summary["configs"] == 1000 and summary["matches_reference"] is True
    assert summary["sources"] == ["measured"]
    assert {row["phase"] for row in summary["holdout"]} >= {"fault", "memcpy", "convert"}
    grid = {(row["mem"], row["folio"]) for row in summary["predictions"]}
    assert grid == {(m, f) for m in ("1 TiB", "2 TiB", "4 TiB") for f in ("4 KiB", "2 MiB", "1 GiB")}
    assert summary["blackout_phases"][FROM_BIRTH][0] == "preserve"
    assert (data / "runs" / summary["record_id"] / "bench.model.json").exists()

    again = CliRunner().invoke(bench, args + ["--from-records"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    refit = json.loads(again.output)
    assert refit["points"] == summary["points"]
    assert refit["sources"] == [f"bench.model:{summary['record_id']}"]
    assert refit["params"]["fault_per_byte_s"] == pytest.approx(summary["params"]["fault_per_byte_s"])


def test_cli_from_empty_records_says_what_to_run(tmp_path):
    from workbench.cli.bench import bench

    result = CliRunner().invoke(bench, ["model", "--json", "--from-records", "--data", str(tmp_path / "data")])
    assert result.exit_code != 0
    assert "no stored points" in result.output
