"""The target registry and command-line target specs."""

import pytest

from workbench.lab.errors import InvalidCycle, UnknownName
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.target import parse_targets, target_class, target_names


def test_qemu_spec_gives_one_target_with_its_options():
    [target] = parse_targets("qemu", cpus=4, dump_after=["preserve"])
    assert isinstance(target, QemuTarget) and target.cpus == 4 and target.dump_after == ["preserve"]
    assert target.label == "qemu"


def test_options_a_target_does_not_have_are_refused_by_name():
    with pytest.raises(InvalidCycle, match="the qemu target has no option dry_run; its options are "):
        parse_targets("qemu", dry_run=True)
    with pytest.raises(InvalidCycle, match="takes no ':x'"):
        parse_targets("qemu:x")


def test_unknown_target_names_the_known_ones():
    assert {"qemu", "ssh"} <= set(target_names())
    with pytest.raises(UnknownName, match="unknown target .vm.: use guest or qemu or ssh"):
        target_class("vm")


def test_failure_result_names_phase_log_and_record(tmp_path):
    from workbench.lab.errors import CycleFailed

    exc = CycleFailed("boom", "kexec", tmp_path / "serial.log", record_id="r1")
    out = QemuTarget().failure_result(exc)
    assert out == {
        "verified": False,
        "error": str(exc),
        "failed_phase": "kexec",
        "diagnosis": None,
        "serial_log": str(tmp_path / "serial.log"),
        "record_id": "r1",
    }
