"""The blackout model: the numba kernel against the plain-Python reference and the written equations, the
blackout mask, configurations, the speed comparison."""

import dataclasses
import math

import numpy as np
import pytest

from tests.kernels.blackout.helpers import TRUE, GiB, MiB, TiB, random_params
from workbench.kernels.blackout.model import (
    FROM_BIRTH,
    PHASES,
    Configs,
    blackout_mask,
    blackout_phases,
    compare_speed,
    evaluate,
    evaluate_reference,
    prediction_table,
    random_configs,
)


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


def test_prediction_table_names_the_dominant_phase_and_its_share():
    quadratic = dataclasses.replace(TRUE, kho_decode_per_folio2_s=1e-12)
    table = prediction_table(quadratic, mem_bytes=[TiB], folio_bytes=[4096, 1 << 30], strategies=[FROM_BIRTH])
    phase_columns = [f"{p}_s" for p in PHASES]
    for row in table.itertuples():
        counted = {p: getattr(row, f"{p}_s") for p in blackout_phases()[FROM_BIRTH]}
        assert row.dominant_phase == max(counted, key=counted.get)
        assert row.dominant_share == pytest.approx(counted[row.dominant_phase] / row.blackout_lower_bound_s)
    small, huge = table.iloc[0], table.iloc[1]
    assert small["dominant_phase"] == "kho_decode"  # 2^28 folios squared
    assert huge["dominant_phase"] == "memmap" and huge[phase_columns].notna().all()
