"""The JSON summaries of the conversion benchmark (the VM's: refused strategies, page identity)."""

import pandas as pd
import pytest

from workbench.kernels.conversion.summary import refused_rows, summarize_vm, vm_rows_verified


def _row(strategy, verified, refused="", converted_verified=None):
    return {
        "strategy": strategy,
        "copier": "numba",
        "size": 4 << 20,
        "threads": 1,
        "convert_s": 0.1,
        "bytes_per_s": 4e7,
        "ratio_to_memcpy": 0.1,
        "preserve_s": None if refused else 0.2,
        "blackout_s": 3.0,
        "retrieve_s": None,
        "verify_s": None,
        "end_to_end_s": None,
        "verified": verified,
        "moved_pages": 0,
        "copied_pages": 1024,
        "pages_converted": 1024,
        "huge_pages": 0,
        "page_identity_explanation": "copied",
        "preserve_refused": refused,
        "converted_verified": converted_verified,
    }


def test_a_refused_strategy_is_listed_with_its_reason_and_does_not_fail_the_others():
    cycle = {"verified": True, "anon_to_survived_s": 9.0, "record_id": "c", "target_limits": {}}
    frame = pd.DataFrame([_row("copy-fresh", True), _row("hugetlb", False, "LUO refused: ENOENT", True)])
    out = summarize_vm(frame, [cycle], {"sizes": [4 << 20]})
    assert out["all_verified"] is True and out["refused"] == {"hugetlb": "LUO refused: ENOENT"}
    assert out["strategies"]["hugetlb"]["verified"] is False
    assert out["strategies"]["copy-fresh"]["copied_pages"] == 1024
    assert out["strategies"]["hugetlb"]["preserve_refused"] == "LUO refused: ENOENT"
    broken = pd.DataFrame([_row("copy-fresh", False), _row("hugetlb", False, "LUO refused: ENOENT", True)])
    assert summarize_vm(broken, [cycle], {})["all_verified"] is False


@pytest.mark.parametrize("converted_verified", [False, None, float("nan")])
def test_a_refused_memfd_whose_conversion_did_not_verify_fails_all_verified(converted_verified):
    cycle = {"verified": True, "anon_to_survived_s": 9.0, "record_id": "c", "target_limits": {}}
    frame = pd.DataFrame([_row("copy-fresh", True), _row("hugetlb", False, "LUO refused: ENOENT", converted_verified)])
    assert refused_rows(frame)["strategy"].tolist() == ["hugetlb"]
    assert vm_rows_verified(frame) is False
    out = summarize_vm(frame, [cycle], {})
    assert out["all_verified"] is False and out["refused"] == {"hugetlb": "LUO refused: ENOENT"}


def test_refused_rows_without_their_conversion_check_are_not_verified():
    frame = pd.DataFrame([_row("copy-fresh", True), _row("hugetlb", False, "LUO refused: ENOENT")])
    assert vm_rows_verified(frame.drop(columns=["converted_verified"])) is False
    assert vm_rows_verified(frame.iloc[:1]) is True
    assert vm_rows_verified(frame.iloc[1:].assign(converted_verified=True)) is False  # nothing was preserved
