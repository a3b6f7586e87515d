"""The headline findings of the cycle and CRIU notebooks, from cycle results shaped as run_cycle returns them."""

import pandas as pd
import pytest

from workbench.lab.findings import blackout_finding, criu_finding, cycle_finding
from workbench.lab.results import cycles_table
from workbench.report.headline import Headline


def _numbers(finding):
    Headline("check", "check", finding.text, tuple(finding.numbers))
    return {n.name: n for n in finding.numbers}


def _cycle(verified=True):
    return {
        "verified": verified,
        "pages_checked": 4096,
        "session": "meeting-demo",
        "phases": {"prepare": 0.5, "preserve": 0.25, "kexec": 3.5, "restore": 0.75},
        "blackout_s": 3.5,
        "kernel_release_before": "7.2.0-lab",
        "kernel_release_after": "7.2.0-lab",
        "memfds": [{"memfd": 0, "expected_size": 8 << 20, "differing_count": 0}] * 2,
        "accelerator": "tcg",
        "record_id": "20260101-000000-abcdef",
    }


def test_cycle_finding():
    finding = cycle_finding(_cycle())
    numbers = _numbers(finding)
    assert numbers["verified"].value is True and numbers["verified"].exact
    assert numbers["pages_checked"].value == 4096 and numbers["pages_checked"].exact
    assert numbers["blackout_s"].value == 3.5 and numbers["blackout_s"].better == "lower"
    assert [n for n in numbers if n.startswith("phase_")] == [
        "phase_prepare_s",
        "phase_preserve_s",
        "phase_kexec_s",
        "phase_restore_s",
    ]
    assert "2 memfd(s), 16 MiB in all" in finding.text and "all 4,096 pages verified" in finding.text
    assert "blackout was 3.5 s (tcg)" in finding.text and "longest phase was kexec" in finding.text
    assert "NOT verified" in cycle_finding(_cycle(verified=False)).text


def _criu(kind, size, downtime, blackout, counter=(10, 11, 20), verified=True):
    return {
        "verified": verified,
        "pages_checked": size // 4096,
        "blackout_s": blackout,
        "downtime_s": downtime,
        "downtime_breakdown": {"dump": 0.1, "blackout": blackout, "restore": downtime - blackout - 0.1},
        "criu": {
            "version": "3.17.1",
            "anon_size": 0 if kind == "memfd from birth" else size,
            "memfd_region": size if kind == "memfd from birth" else 0,
            "counter": dict(zip(("before_dump", "after_restore", "later"), counter, strict=True)),
        },
        "record_id": f"20260101-00000{len(kind)}-abcdef",
    }


def _cycles(results):
    front = pd.DataFrame([(r[0], r[1], r[2]) for r in results], columns=["size", "bytes", "memory"])
    return pd.concat([front, cycles_table([r[3] for r in results])], axis=1)


def test_criu_finding_at_the_largest_size():
    cycles = _cycles(
        [
            ("16M", 16 << 20, "anonymous", _criu("anonymous", 16 << 20, 5.0, 3.0)),
            ("64M", 64 << 20, "anonymous", _criu("anonymous", 64 << 20, 6.0, 3.0)),
            ("64M", 64 << 20, "memfd from birth", _criu("memfd from birth", 64 << 20, 4.0, 3.5)),
        ]
    )
    finding = criu_finding(cycles, [{"size": "64M", "memory": "anonymous, lazy restore", "error": "x"}])
    numbers = _numbers(finding)
    assert numbers["downtime_anonymous_s"].value == 6.0 and numbers["outside_blackout_anonymous_s"].value == 3.0
    assert numbers["downtime_memfd_from_birth_s"].value == 4.0
    assert numbers["verified"].value is True and numbers["kept_counting"].value is True
    assert numbers["cycles_failed"].value == 1 and numbers["cycles_failed"].exact
    assert finding.text.startswith("A process holding 64M of memory") and "1 cycle(s) failed" in finding.text
    assert (
        "downtime with anonymous, 6 s (3 s of it outside the kexec blackout); with memfd from birth, 4 s"
        in finding.text
    )


def test_criu_finding_when_the_process_stopped_counting_or_nothing_ran():
    stuck = _cycles([("16M", 16 << 20, "anonymous", _criu("anonymous", 16 << 20, 5.0, 3.0, counter=(10, 11, 11)))])
    numbers = _numbers(criu_finding(stuck))
    assert numbers["kept_counting"].value is False
    empty = criu_finding(_cycles([]).iloc[0:0], [{"error": "boom"}])
    assert empty.text == "No CRIU cycle completed." and _numbers(empty)["cycles_failed"].value == 1


def test_blackout_finding_leads_with_the_baseline_ratio_the_slopes_and_the_other_kernel():
    from tests.lab.test_blackout_plots import anatomy_points
    from workbench.lab.blackout_bench import summarize_points

    points = anatomy_points()
    deferred = points["kernel"] == "7.2+deferred-init"
    points.loc[deferred, "blackout_s"] *= 0.9
    finding = blackout_finding(summarize_points(points))
    Headline("blackout", "blackout", finding.text, tuple(finding.numbers))
    numbers = {n.name: n for n in finding.numbers}
    assert numbers["cycles"].value == 16 and numbers["cycles"].exact
    base = points[(points["kernel"] == "7.2") & (points["memory_mb"] == 2048)].groupby("share")["blackout_s"].mean()
    assert numbers["blackout_ratio_max"].value == pytest.approx(base[0.5] / base[0.0])
    assert numbers["kho_restore_per_gib_preserved_s"].value == pytest.approx(2.5)
    assert numbers["7_2_deferred_init_vs_7_2"].value == pytest.approx(0.9)
    assert "tcg" in finding.text and "0.90×" in finding.text and "agent" in finding.text
    assert blackout_finding({"ratios": []}).numbers == []
