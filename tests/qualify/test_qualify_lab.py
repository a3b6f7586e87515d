"""The qualification matrix in lab VMs: 7.2 and 7.3 in both directions with the memfd check and upstream's
multi-session selftest, and the negative control, whose cross cells are refused by the preflight or, forced, panic
in LUO. Small sizes and two checks keep it within the suite's time (CRIU and the simple selftest run in the lab
VM in tests/lab/workloads/criu and tests/lab/test_selftests.py; notebook 70 runs a matrix of its own);
``workbench qualify`` runs every check at the 256 MiB default."""

import pytest

from workbench.qualify import QualifyParams, qualify
from workbench.qualify.run import RECORD_KIND

pytestmark = pytest.mark.lab

NEGATIVE = "7.2+luo-compat-mismatch"


def test_7_2_and_7_3_qualify_in_both_directions(lab_kernel, store):
    params = QualifyParams(
        kernels=["7.2", "7.3"],
        checks=["memfd", "luo_multi_session"],
        sizes=[16 << 20, (1 << 20) + 4096, 4096],
        small_files=24,
    )
    result = qualify(params, store=store, workers=2)
    failures = [
        (r["from"], r["to"], r["check"], r["outcome"], r["message"]) for r in result["cells"] if r["outcome"] != "pass"
    ]
    assert failures == []
    assert result["qualified"] is True and result["cells_done"] == 8 and result["complete"] is True
    by_cell = {(r["from"], r["to"], r["check"]): r for r in result["cells"]}
    cross = by_cell[("7.3", "7.2", "luo_multi_session")]
    assert cross["kernel_release_from"].startswith("7.3") and cross["kernel_release_to"].startswith("7.2")
    assert by_cell[("7.2", "7.3", "memfd")]["pages_checked"] == (16 << 20) // 4096 + 257 + 1 + 24
    assert all(r["blackout_s"] > 0 and r["preflight"] == "pass" for r in result["cells"])
    for row in result["cells"]:
        assert store.get(row["record_ids"][0]).kind == "lab.cycle"
    record = store.get(result["record_id"])
    assert record.kind == RECORD_KIND and record.result["qualified"] is True
    assert record.result["wall_s"] < record.result["cells_s"]  # two VMs at once


def test_the_negative_control_is_refused_and_forced_panics_in_luo(lab_kernel, store):
    params = QualifyParams(kernels=["7.2", NEGATIVE], checks=["memfd"], sizes=[4096], small_files=2)
    refused = qualify(params, store=store, workers=2)
    outcomes = {(r["from"], r["to"]): (r["outcome"], r["stage"]) for r in refused["cells"]}
    assert outcomes[("7.2", NEGATIVE)] == ("refused", "preflight") == outcomes[(NEGATIVE, "7.2")]
    assert outcomes[("7.2", "7.2")] == ("pass", None) == outcomes[(NEGATIVE, NEGATIVE)]
    params.force = True
    params.kernels = ["7.2", NEGATIVE]
    forced = qualify(params, store=store, workers=2)
    cross = [r for r in forced["cells"] if r["from"] != r["to"]]
    assert [r["outcome"] for r in cross] == ["panic", "panic"]
    assert all("LUO refused the handover" in r["diagnosis"] for r in cross)
    assert forced["qualified"] is False and forced["outcomes"] == {"pass": 2, "panic": 2}
