"""What a host must offer before a cycle, and whether it is this machine: from made-up facts, from the probe
shipped over SSH to this machine (an SSH server in this process), and (``lab``) on lab VMs."""

import sys

import pytest

from tests.lab.sshd_vm import SshdLabVM
from workbench.environment import boot_id
from workbench.lab.errors import PreconditionFailed, ThisMachineRefused
from workbench.lab.inventory import LabHost
from workbench.lab.ssh.connection import connect, run_command
from workbench.lab.ssh.preconditions import missing_preconditions, probe_host, this_machine
from workbench.lab.ssh.target import run_ssh_cycle
from workbench.lab.workloads.memfd import MemfdWorkload

SMALL = 8 << 20
lab = pytest.mark.lab


# -- without a VM ----------------------------------------------------------------------------------------------
def _facts(**changes):
    facts = {
        "uid": 0,
        "liveupdate_device": True,
        "cmdline": "root=/dev/sda1 kho=on liveupdate=on",
        "next_kernel": "/boot/vmlinuz",
        "next_kernel_state": "ok",
        "next_initrd": None,
        "next_initrd_state": None,
        "results_fs": "ext4",
        "results_mount": "/",
        "results_writable": True,
        "numpy": "2.0",
        "agent": "/x/workbench/lab/agent.py",
        "agent_protocol": 2,
        "executable": "/usr/bin/python3",
    }
    return {**facts, **changes}


def test_preconditions_name_what_is_missing():
    assert missing_preconditions(_facts(), False) == []
    names = [
        n
        for n, _ in missing_preconditions(
            _facts(
                uid=1000,
                liveupdate_device=False,
                cmdline="root=/dev/sda1 kho=off",
                next_kernel_state="missing",
                next_initrd="/boot/initrd",
                next_initrd_state="not readable",
                results_fs="tmpfs",
                numpy=None,
            ),
            False,
        )
    ]
    assert names == [
        "root",
        "/dev/liveupdate",
        "kho=on",
        "liveupdate=on",
        "next kernel",
        "next initrd",
        "persistent results folder",
        "numpy",
    ]
    old = dict(missing_preconditions(_facts(agent_protocol=1), False))
    assert "too old" in old["agent protocol"]
    assert missing_preconditions(_facts(cmdline="kho=1 liveupdate=y"), False) == []


def test_this_machine_is_decided_by_the_boot_id():
    here = LabHost(name="here", host="127.0.0.1")
    assert this_machine(here, {"boot_id": boot_id(), "machine_id": None})["is_this_machine"]
    other = this_machine(here, {"boot_id": "00000000-0000-0000-0000-000000000000", "machine_id": None})
    assert not other["is_this_machine"] and other["local_address"]
    assert this_machine(here, {"boot_id": None, "machine_id": None})["is_this_machine"]  # cannot rule it out
    far = LabHost(name="far", host="192.0.2.10")
    assert not this_machine(far, {"boot_id": None, "machine_id": "0" * 32})["is_this_machine"]


def test_probe_over_ssh_finds_this_machine(local_sshd, tmp_path):
    host = local_sshd.host()
    client = connect(host)
    try:
        # an environment value with a space: quoted, or the command line would break
        facts = probe_host(client, host, None, str(tmp_path / "results"), {"WB_PROBE_TEST": "a b"})
        assert facts["boot_id"] == boot_id() and facts["executable"] == sys.executable
        me = this_machine(host, facts)
        assert me["is_this_machine"] and me["same_boot_id"] and me["local_address"]
        names = [name for name, _ in missing_preconditions(facts, False)]
        assert not {"numpy", "workbench", "agent protocol", "persistent results folder"} & set(names)
        with pytest.raises(RuntimeError, match="was not found on local"):
            probe_host(client, host.replace(python="/nonexistent/python3"), None, str(tmp_path), {})
        with pytest.raises(RuntimeError, match=r"the probe with /bin/false failed on local \(exit 1\)"):
            probe_host(client, host.replace(python="/bin/false"), None, str(tmp_path), {})
    finally:
        client.close()


# -- lab VMs with sshd -----------------------------------------------------------------------------------------
def _no_stray_qemu(vm: SshdLabVM) -> bool:
    return vm.vm.proc is not None and vm.vm.proc.poll() is not None


@lab
def test_this_machine_is_refused_without_the_flag(shared_vm, store, monkeypatch):
    client = connect(shared_vm.host())
    vm_boot = run_command(client, "cat /proc/sys/kernel/random/boot_id")[1].strip()
    client.close()
    # pretend the VM is where we run
    monkeypatch.setattr("workbench.lab.ssh.preconditions.boot_id", lambda: vm_boot)
    with pytest.raises(ThisMachineRefused) as info:
        run_ssh_cycle(shared_vm.host(), MemfdWorkload(memfds=1, memfd_size=SMALL), store=store)
    assert "--i-really-want-to-kexec-this-machine" in str(info.value) and "boot id" in str(info.value)
    assert "WB-MARK agent-start" not in info.value.serial_log.read_text()


@lab
def test_kernel_without_luo_is_refused_before_any_kexec(lab_kernel, store, tmp_path):
    with SshdLabVM(tmp_path / "noluo", name="noluo", kernel=lab_kernel, live_update=False) as vm:
        with pytest.raises(PreconditionFailed) as info:
            run_ssh_cycle(vm.host(), MemfdWorkload(memfds=1, memfd_size=SMALL), store=store)
        assert [m for m, _ in vm.marks()].count("init shell") == 1
    exc = info.value
    assert exc.phase == "check"
    assert {"kho=on", "liveupdate=on", "/dev/liveupdate"} <= set(exc.missing)
    assert "kho=on is not on the kernel command line" in str(exc) and "/dev/liveupdate does not exist" in str(exc)
    assert "WB-MARK agent-start" not in exc.serial_log.read_text()
    assert store.get(exc.record_id).status == "failed"
    assert _no_stray_qemu(vm)
