"""The ``guest`` target: its spec and options, its record, and the refusal of every workload but ``systemd`` and
those whose targets include ``guest`` (no VM)."""

from __future__ import annotations

import pytest

import workbench.lab.guest.target  # noqa: F401 (registers the target)
from workbench.lab.errors import InvalidCycle
from workbench.lab.guest.target import DEFAULT_GUEST, GuestTarget
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.target import parse_targets, target_class
from workbench.lab.workloads.memfd import MemfdWorkload


def test_registered_by_name_beside_qemu_whose_default_is_unchanged():
    assert target_class("guest") is GuestTarget
    assert target_class("qemu") is QemuTarget
    assert "guest" not in QemuTarget.option_names()


def test_spec_names_the_guest_and_takes_the_qemu_options():
    (default,) = parse_targets("guest")
    assert default.guest == DEFAULT_GUEST == "debian-sid"
    (named,) = parse_targets("guest:debian-trixie", kernel="7.3", cpus=1)
    assert (named.guest, named.kernel, named.cpus) == ("debian-trixie", "7.3", 1)
    with pytest.raises(InvalidCycle, match="has no option sessions"):
        parse_targets("guest", sessions=2)


def test_record_params_add_the_guest_to_qemus():
    params = GuestTarget(kernel="7.2", guest="debian-sid").record_params()
    assert params["guest"] == "debian-sid" and params["kernel"] == "7.2" and "cpus" in params


def test_only_the_systemd_and_the_agents_guest_workloads_run_in_the_guest():
    target = GuestTarget()
    with pytest.raises(InvalidCycle, match="runs on the qemu and ssh targets only, not guest"):
        target.validate(MemfdWorkload(), CycleParams())
    with pytest.raises(InvalidCycle, match="only the systemd workload and the agent's workloads .* guest, not memfd"):
        target.runner(MemfdWorkload(), CycleParams(), None, None, None, None)


def test_a_systemd_cycle_cannot_pause_but_dumps_at_moments():
    from workbench.lab.workloads.systemd import SystemdWorkload

    GuestTarget().validate(SystemdWorkload(), CycleParams())
    with pytest.raises(InvalidCycle, match=r"cannot pause \(systemd drives it\): dump it at a moment with --dump-at"):
        GuestTarget().validate(SystemdWorkload(), CycleParams(pause_after=["prepare"]))
    with pytest.raises(InvalidCycle, match="cannot pause"):
        GuestTarget(dump_after=["preserve"]).validate(SystemdWorkload(), CycleParams())
    GuestTarget(dump_at=["serialized", "finished"]).validate(SystemdWorkload(), CycleParams())
    with pytest.raises(InvalidCycle, match="--dump-at takes serialized, next_kernel_pending, .* not 'preserved'"):
        GuestTarget(dump_at=["preserved"]).validate(SystemdWorkload(), CycleParams())
    params = GuestTarget(dump_at=["serialized"]).record_params()
    assert params["dump_at"] == ["serialized"]


def test_the_command_line_takes_dump_at_for_the_guest_only(tmp_path):
    from click.testing import CliRunner

    from workbench.cli import main

    args = ["cycle", "--dump-at", "serialized", "--data", str(tmp_path)]
    out = CliRunner().invoke(main, [*args, "--target", "qemu"])
    assert out.exit_code != 0 and "--dump-at is not for the qemu target" in out.output
    out = CliRunner().invoke(main, ["cycle", "--target", "guest", "--dump-at", "preserved"])
    assert out.exit_code != 0 and "'preserved' is not one of" in out.output
