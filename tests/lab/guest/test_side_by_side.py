"""The agent's cycle next to systemd's: the table's rows from both results, the ratio only for seconds, the
headline from the table."""

import json
from pathlib import Path

import pytest

from workbench.lab.guest.side_by_side import side_by_side_finding, side_by_side_table

HERE = Path(__file__).parent


def _agent() -> dict:
    return {
        "verified": True,
        "pages_checked": 4096,
        "boot_s": 20.0,
        "blackout_s": 10.0,
        "blackout_breakdown": {"kexec_to_init_s": 4.0, "init_to_agent_s": 6.0},
        "phases": {"prepare": 1.0, "preserve": 0.5, "load": 1.0, "kexec": 10.0, "restore": 0.2, "verify": 2.0},
        "accelerator": "tcg",
    }


def _systemd() -> dict:
    return {
        "verified": True,
        "pages_checked": 4097,
        "boot_s": 60.0,
        "blackout_s": 50.0,
        "service_blackout_s": 48.0,
        "blackout_breakdown": {"kexec_to_init_s": 8.0, "init_to_service_s": 42.0},
        "systemd_timing": {"kernel_to_service_ready_s": 45.0},
        "phases": {"prepare": 5.0, "store": 0.02, "load": 1.5, "kexec": 50.0, "restore": 0.01, "verify": 6.0},
        "accelerator": "tcg",
        "fdstore": {"returned": ["wb-0", "wb-1"]},
        "systemd_version": "262.1-1",
    }


def test_each_row_takes_each_cycles_own_figure():
    table = side_by_side_table(_agent(), _systemd()).set_index("what")
    assert table.loc["blackout: kexec to the workload back (s)", "ratio"] == pytest.approx(5.0)
    assert table.loc["/init to the workload (s)"].tolist()[:2] == [6.0, 42.0]
    assert table.loc["hand the memfds over (s)"].tolist()[:2] == [0.5, 0.02]
    assert table.loc["the workload's own blackout (s)"].tolist()[:2] == [10.0, 48.0]
    row = table.loc["systemd: next kernel's start to the service ready (s)"]
    assert row["agent"] is None and row["systemd"] == 45.0 and row["ratio"] is None
    assert table.loc["verified", "ratio"] is None and table.loc["accelerator", "systemd"] == "tcg"


def test_a_missing_figure_is_none_not_an_error():
    systemd = _systemd()
    del systemd["service_blackout_s"], systemd["systemd_timing"]
    table = side_by_side_table(_agent(), systemd).set_index("what")
    assert table.loc["the workload's own blackout (s)", "systemd"] is None
    assert table.loc["the workload's own blackout (s)", "ratio"] is None


def test_the_headline_names_systemd_its_blackouts_and_the_ratio():
    systemd = _systemd()
    finding = side_by_side_finding(side_by_side_table(_agent(), systemd), systemd)
    assert "systemd 262.1-1 kept 2 memfd(s)" in finding.text and "every page verified" in finding.text
    numbers = {n.name: n.value for n in finding.numbers}
    assert numbers["blackout_ratio"] == pytest.approx(5.0) and numbers["service_blackout_s"] == 48.0
    systemd["verified"] = False
    finding = side_by_side_finding(side_by_side_table(_agent(), systemd), systemd)
    assert "NOT verified" in finding.text
    json.dumps([n.value for n in finding.numbers])


def test_the_time_the_guest_stood_stopped_for_dumps_is_left_out_and_said():
    systemd = {
        **_systemd(),
        "blackout_without_dumps_s": 44.0,
        "service_blackout_without_dumps_s": 42.0,
        "dumps_held_s": {"serialized": 5.5, "finished": 0.5},
    }
    table = side_by_side_table(_agent(), systemd).set_index("what")
    assert table.loc["blackout: kexec to the workload back (s)", "systemd"] == 44.0
    assert table.loc["the workload's own blackout (s)", "systemd"] == 42.0
    assert table.loc["guest stopped for dumps, not counted above (s)", "systemd"] == 6.0
    finding = side_by_side_finding(side_by_side_table(_agent(), systemd), systemd)
    assert "leave out the 6" in finding.text
