"""Fitting the blackout model: parameters recovered from exact and noisy points, what cannot be fitted left NaN,
bad points refused, the hold-out error."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from tests.kernels.blackout.helpers import FITTED_STRATEGIES, SCALARS, TRUE, GiB, TiB, rich_points
from workbench.kernels.blackout.fitting import fit, holdout_error
from workbench.kernels.blackout.model import prediction_table

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


# --- the boot from a blackout's anatomy -----------------------------------------------------------------------

QUADRATIC = dataclasses.replace(TRUE, kho_decode_per_folio2_s=3e-13)


def test_the_anatomy_fits_each_boot_parameter_from_its_own_phase_with_a_quadratic_kho_restore():
    points = rich_points(QUADRATIC, noise=0.0, anatomy=True)
    assert {"memmap", "kho_decode", "kexec_rest"} <= set(points["phase"]) and "kexec" not in set(points["phase"])
    fitted = fit(points)
    for name in ("kexec_s", "memmap_per_page_s", "kho_decode_per_folio_s", "kho_decode_per_folio2_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(QUADRATIC, name), rel=1e-6), name
    assert fitted.provenance["memmap_per_page_s"].endswith("memmap points")


def test_a_linear_kho_restore_gets_no_quadratic_term_and_lumped_points_are_set_aside():
    anatomy = rich_points(TRUE, noise=0.0, anatomy=True)
    lumped = rich_points(QUADRATIC, noise=0.0)
    fitted = fit(pd.concat([anatomy, lumped[lumped["phase"] == "kexec"].assign(seconds=99.0)], ignore_index=True))
    assert fitted.kho_decode_per_folio2_s == pytest.approx(0.0, abs=1e-20)
    assert fitted.kexec_s == pytest.approx(TRUE.kexec_s, rel=1e-6)
    assert "lumped kexec points not used" in fitted.provenance["kexec_s"]
    assert "cannot tell" in fit(lumped).provenance["kho_decode_per_folio2_s"]


def test_holdout_of_anatomy_points_holds_out_the_largest_machine_for_what_grows_with_ram():
    report = holdout_error(rich_points(QUADRATIC, noise=0.0, anatomy=True))
    held = report.points.groupby("phase")
    assert (held.get_group("memmap")["mem_bytes"] == 64 * GiB).all()
    assert (held.get_group("kexec_rest")["mem_bytes"] == 64 * GiB).all()
    assert (held.get_group("kho_decode")["size_bytes"] == 4 * GiB).all()
    assert report.per_phase["max_abs_rel_error"].max() < 1e-6
