"""The headline findings of the tour, the conversion and the blackout model notebooks, from real and hand-made
runs."""

import pandas as pd
import pytest

from workbench.kernels import blackout as bm
from workbench.kernels.conversion import run_conversion
from workbench.kernels.findings import conversion_finding, hash_finding, model_finding
from workbench.kernels.pagehash import benchmark
from workbench.report.headline import Headline

from .blackout.helpers import TRUE, rich_points


def _numbers(finding):
    Headline("check", "check", finding.text, tuple(finding.numbers))  # a valid headline
    return {n.name: n for n in finding.numbers}


def test_hash_finding_from_a_real_benchmark():
    result = benchmark(4 << 20, repeats=2)
    finding = hash_finding(result)
    numbers = _numbers(finding)
    assert numbers["hash_bytes_per_s"].value == result["bytes_per_s"] and numbers["hash_bytes_per_s"].better == "higher"
    assert numbers["ratio_to_read"].unit == "ratio" and not any(n.exact for n in finding.numbers)
    assert "4 MiB" in finding.text and f"{result['ratio_to_read']:.0%}" in finding.text


def test_conversion_finding_from_a_real_run():
    frame, limits = run_conversion([8 << 20], [1], strategies=["pwrite", "memfd-from-birth"], repeats=1)
    finding = conversion_finding(frame, limits)
    numbers = _numbers(finding)
    assert numbers["all_verified"].value is True and numbers["all_verified"].exact
    assert numbers["fastest_bytes_per_s"].label == "fastest: pwrite"
    assert numbers["fastest_ratio_to_memcpy"].value == pytest.approx(
        numbers["fastest_bytes_per_s"].value / limits["memcpy_bytes_per_s"]
    )
    assert "pwrite" in finding.text and "the machine's limit" in finding.text and "lab VM" not in finding.text


def _row(strategy, bytes_per_s, verified=True, available=True):
    return dict(
        strategy=strategy,
        copier="kernel",
        size=64 << 20,
        threads=1,
        pipe_size_obtained=0,
        bytes_per_s=bytes_per_s,
        ratio_to_memcpy=bytes_per_s / 4e9,
        verified=verified,
        available=available,
        reason=None,
    )


def test_conversion_finding_with_the_lab_vm_and_a_failure():
    frame = pd.DataFrame(
        [_row("pwrite", 2e9), _row("copy-fresh", 3e9, verified=False), _row("hugetlb", 0, False, False)]
    )
    vm_rows = pd.DataFrame({"strategy": ["pwrite", "copy-fresh"], "verified": [True, False]})
    finding = conversion_finding(
        frame, {"memcpy_bytes_per_s": 4e9}, vm_rows, {"anon_to_survived_s": 2.5, "accelerator": "tcg"}
    )
    numbers = _numbers(finding)
    assert numbers["all_verified"].value is False  # copy-fresh did not verify
    assert numbers["fastest_bytes_per_s"].value == 2e9 and numbers["fastest_ratio_to_memcpy"].value == 0.5
    assert numbers["vm_verified"].value is False and numbers["vm_memfds"].value == 2
    assert numbers["vm_anon_to_survived_s"].value == 2.5
    assert (
        "50% of what memcpy reaches" in finding.text and "NOT all verified" in finding.text and "(tcg)" in finding.text
    )
    nothing = conversion_finding(pd.DataFrame([_row("pwrite", 2e9, verified=False)]), {"memcpy_bytes_per_s": 4e9})
    assert "nothing to conclude" in nothing.text and "fastest_bytes_per_s" not in _numbers(nothing)


def test_model_finding_from_a_fit():
    points = rich_points(TRUE, noise=0.02)
    table = bm.prediction_table(bm.fit(points))
    finding = model_finding(table, bm.holdout_error(points))
    numbers = _numbers(finding)
    assert {"blackout_1TiB_s", "blackout_2TiB_s", "blackout_4TiB_s", "blackout_from_birth_1TiB_s"} <= set(numbers)
    one, four = numbers["blackout_1TiB_s"].value, numbers["blackout_4TiB_s"].value
    assert 0 < one < four and 0 < numbers["blackout_from_birth_1TiB_s"].value < one
    assert 0 <= numbers["holdout_median_error"].value <= numbers["holdout_max_error"].value
    assert "1 TiB" in finding.text and "Not counted" not in finding.text  # every blackout phase was fitted
    assert "memory that is a memfd from birth: " in finding.text
    assert "The largest phase at 4 TiB: " in finding.text
    assert numbers["dominant_share_4KiB"].value == pytest.approx(
        table.loc[table["mem"] == "4 TiB"]
        .sort_values("blackout_lower_bound_s")
        .query("folio_bytes == 4096")["dominant_share"]
        .iloc[0]
    )


def test_model_finding_says_what_it_could_not_fit():
    points = rich_points(TRUE, noise=0.0)
    conversions_only = points[points["phase"].isin(["fault", "memcpy", "convert"])]
    finding = model_finding(bm.prediction_table(bm.fit(conversions_only)), bm.holdout_error(conversions_only))
    assert "Not counted, for want of lab cycles to fit them: preserve, kexec" in finding.text
    assert "memfd from birth needs no conversion" in finding.text


def _vm_finding(vm_rows):
    frame = pd.DataFrame([_row("pwrite", 2e9)])
    return conversion_finding(frame, {"memcpy_bytes_per_s": 4e9}, vm_rows, {"anon_to_survived_s": 2.5})


def test_unknown_page_identity_is_left_out_and_never_published_as_zero():
    unknown = pd.DataFrame(
        {"strategy": ["pwrite", "vmsplice-gift"], "verified": [True, True], "moved_pages": [None, float("nan")]}
        | {"copied_pages": [None, float("nan")]}
    )
    finding = _vm_finding(unknown)
    assert "vm_moved_pages" not in _numbers(finding)
    assert "unknown: no page identity was measured" in finding.text and "kept their frame" not in finding.text
    partly = unknown.assign(moved_pages=[None, 512], copied_pages=[None, 1536])
    finding = _vm_finding(partly)
    assert _numbers(finding)["vm_moved_pages"].value == 512
    assert "512 kept their frame and 1,536 were copied; page identity unknown for pwrite." in finding.text


def test_a_refused_memfd_whose_conversion_broke_fails_vm_verified():
    vm_rows = pd.DataFrame(
        {
            "strategy": ["pwrite", "hugetlb"],
            "verified": [True, False],
            "preserve_refused": ["", "ENOENT: memfd_luo_can_preserve"],
            "converted_verified": [None, False],
        }
    )
    finding = _vm_finding(vm_rows)
    numbers = _numbers(finding)
    assert numbers["vm_verified"].value is False and numbers["vm_memfds"].value == 1
    assert "LUO refused to preserve hugetlb" in finding.text and "conversion, NOT verified" in finding.text
    fine = _numbers(_vm_finding(vm_rows.assign(converted_verified=[None, True])))
    assert fine["vm_verified"].value is True
