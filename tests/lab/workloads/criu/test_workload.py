"""The ``criu`` workload's parameters, request, sizing and result, on the host (no VM)."""

import pytest

from workbench.lab.cycle import check
from workbench.lab.errors import InvalidCycle, UnknownName
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workload import make_workload
from workbench.lab.workloads.criu import CriuFaults, CriuWorkload, applied_workarounds


def test_criu_parameters_are_checked_before_boot():
    with pytest.raises(InvalidCycle, match="multiple of the 4096-byte page size"):
        CriuWorkload(anon_size=1000).validate()
    with pytest.raises(InvalidCycle, match="images is one of direct, copy"):
        CriuWorkload(images="stream").validate()
    with pytest.raises(InvalidCycle, match="needs some memory"):
        CriuWorkload(anon_size=0).validate()
    with pytest.raises(UnknownName, match="unknown workload 'vm': choose from .*criu.*memfd"):
        make_workload("vm")
    assert CriuWorkload(anon_size=1 << 30).memory_mb() >= 2048 + 768
    assert CriuWorkload(anon_size=1 << 30, images="copy").memory_mb() >= 3072 + 768


def test_criu_runs_on_the_qemu_and_guest_targets_only():
    from workbench.lab.guest.target import GuestTarget
    from workbench.lab.inventory import LabHost
    from workbench.lab.ssh.target import SshTarget

    check(CriuWorkload(), CycleParams(), QemuTarget())
    GuestTarget().validate(CriuWorkload(), CycleParams())
    with pytest.raises(InvalidCycle, match="runs on the qemu and guest targets only, not ssh"):
        check(CriuWorkload(), CycleParams(), SshTarget(LabHost(name="box", host="192.0.2.1")))


def test_request_carries_the_binaries_and_the_faults():
    workload = CriuWorkload(anon_size=16 << 20, memfd_region=8 << 20, criu_faults=CriuFaults(pid_taken=True))
    request = workload.request()
    assert request["anon_size"] == 16 << 20 and request["memfd_region"] == 8 << 20
    assert request["workload_binary"] and request["criu_preload"]
    assert workload.faults() == {"pid_taken": True}
    assert workload.kernel_args() == ["vdso=0"]
    assert workload.record_params()["criu_faults"] == {"pid_taken": True}
    assert workload.timeout_bytes() == 3 * (24 << 20)


def test_summary_cuts_the_downtime_and_keeps_the_common_fields():
    marks = [
        ("phase-begin", {"phase": "dump"}, 10.0),
        ("phase-end", {"phase": "dump"}, 11.0),
        ("kexec", {}, 12.0),
        ("agent-start", {"phase": "restore"}, 20.0),
        ("workload-resumed", {"counter": 3}, 22.0),
    ]
    base = {"verified": False, "blackout_s": 8.0, "phases": {"kexec": 8.0}, "session": "s"}
    restore = {
        "verified": True,
        "finished": True,
        "pages_checked": 4,
        "regions": [{"memfd": 0, "region": "anon", "differing_count": 0, "differing_pages": []}],
    }
    out = CriuWorkload().summarize(base, {"criu": {"version": "3.17.1"}}, restore, marks)
    assert out["workload"] == "criu" and out["verified"] is True and out["session"] == "s"
    assert out["downtime_s"] == pytest.approx(12.0) and out["criu"]["version"] == "3.17.1"
    assert out["phases"] == {"kexec": 8.0}


def test_workarounds_are_read_from_what_the_agent_saw():
    qemu = {"cmdline_before": "console=ttyS0 wb.phase=prepare vdso=0", "criu": {"preload": "/c/nft-shim.so"}}
    assert applied_workarounds(qemu) == ["vdso=0", "nft-shim"]
    guest = {"cmdline_before": "console=ttyS0 wb.phase=guest vdso=1", "criu": {"preload": None}}
    assert applied_workarounds(guest) == [] and applied_workarounds({}) == []
    out = CriuWorkload().summarize({"verified": False}, {**guest, "criu": {"version": "4.2.1"}}, {}, [])
    assert out["criu"]["workarounds"] == [] and out["criu"]["version"] == "4.2.1"
    with pytest.raises(InvalidCycle, match="guest workarounds are among vdso=0, nft-shim, not 'seccomp'"):
        CriuWorkload(guest_workarounds=("seccomp",)).validate()
    assert CriuWorkload(guest_workarounds=("vdso=0",)).record_params()["guest_workarounds"] == ["vdso=0"]
