"""The process's downtime, cut at the host timestamps of synthetic marks."""

import pytest

from workbench.lab.workloads.criu.downtime import downtime_breakdown


def test_downtime_adds_up_from_freeze_to_first_instruction():
    marks = [
        ("phase-begin", {"phase": "dump"}, 100.0),
        ("phase-end", {"phase": "dump"}, 101.0),
        ("phase-end", {"phase": "convert"}, 101.1),
        ("phase-end", {"phase": "preserve"}, 101.2),
        ("kexec", {}, 101.5),
        ("agent-start", {"phase": "restore"}, 130.0),
        ("phase-end", {"phase": "retrieve"}, 130.2),
        ("phase-end", {"phase": "images"}, 130.3),
        ("phase-end", {"phase": "criu-init"}, 133.0),
        ("workload-resumed", {"counter": 5}, 134.0),
        ("phase-end", {"phase": "restore"}, 134.1),
    ]
    out = downtime_breakdown(marks, {"criu": {"seize_offset_s": 0.1}})
    assert out["downtime_s"] == pytest.approx(33.9)
    assert sum(out["steps"].values()) == pytest.approx(out["downtime_s"])
    assert out["steps"]["blackout"] == pytest.approx(28.5)
    assert out["steps"]["restore"] == pytest.approx(1.0)
    assert out["criu_exit_after_resume_s"] == pytest.approx(0.1)
