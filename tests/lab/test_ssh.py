"""The SSH target proven against a real sshd and a real kexec: lab VMs whose init starts Debian's OpenSSH server
(the host's /usr/sbin/sshd through the 9p root) on a loopback-forwarded port, driven with paramiko.

The tests without a VM (inventory, host specs, preconditions, "is this this machine") run anywhere; the ``lab``
ones boot the lab kernel in QEMU."""

import json
import subprocess
import sys
import time

import pytest

from workbench.lab.cycle import CycleFailed, CycleParams
from workbench.lab.inventory import InventoryError, LabHost, load_inventory, parse_host_spec, resolve_hosts
from workbench.lab.ssh import (
    PreconditionFailed,
    SshdLabVM,
    SshTargetError,
    ThisMachineRefused,
    _run,
    connect,
    missing_preconditions,
    run_ssh_cycle,
    this_machine,
)
from workbench.records import RecordStore

SMALL = 8 << 20
lab = pytest.mark.lab


# -- without a VM ----------------------------------------------------------------------------------------------
def test_example_inventory_parses(tmp_path):
    from workbench.environment import REPO_ROOT

    inv = load_inventory(REPO_ROOT / "data" / "lab-hosts.example.toml", missing_ok=False)
    box1, box2 = inv.hosts["box1"], inv.hosts["box2"]
    assert (box1.host, box1.user, box1.port, box1.host_key_policy) == ("192.0.2.10", "root", 22, "reject")
    assert box1.key.endswith("/.ssh/lab_ed25519") and not box1.key.startswith("~")
    assert box2.workbench == "/opt/live-update-workbench" and box2.env["NUMBA_CACHE_DIR"]
    adhoc = inv.resolve("admin@[fd00::7]:2222")
    assert (adhoc.host, adhoc.user, adhoc.port, adhoc.key) == ("fd00::7", "admin", 2222, box1.key)
    assert adhoc.address == "admin@[fd00::7]:2222"


def test_inventory_errors_name_the_problem(tmp_path):
    bad = tmp_path / "hosts.toml"
    bad.write_text('[hosts.a]\nhost = "x"\nprot = 22\n')
    with pytest.raises(InventoryError, match=r"\[hosts.a\]: unknown key\(s\) prot"):
        load_inventory(bad)
    bad.write_text('[hosts.a]\nuser = "root"\n')
    with pytest.raises(InventoryError, match="host is missing"):
        load_inventory(bad)
    with pytest.raises(InventoryError, match="no inventory"):
        load_inventory(tmp_path / "absent.toml", missing_ok=False)
    with pytest.raises(InventoryError, match="given twice"):
        resolve_hosts("a@h,a@h")
    with pytest.raises(InventoryError, match="neither an inventory name"):
        parse_host_spec("a@b@c")
    assert parse_host_spec("h:2022") == {"host": "h", "user": None, "port": 2022}


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
    from workbench.environment import boot_id

    here = LabHost(name="here", host="127.0.0.1")
    assert this_machine(here, {"boot_id": boot_id(), "machine_id": None})["is_this_machine"]
    other = this_machine(here, {"boot_id": "00000000-0000-0000-0000-000000000000", "machine_id": None})
    assert not other["is_this_machine"] and other["local_address"]
    assert this_machine(here, {"boot_id": None, "machine_id": None})["is_this_machine"]  # cannot rule it out
    far = LabHost(name="far", host="192.0.2.10")
    assert not this_machine(far, {"boot_id": None, "machine_id": "0" * 32})["is_this_machine"]


# -- lab VMs with sshd -----------------------------------------------------------------------------------------
def test_cli_refuses_ssh_options_for_qemu_and_bad_host_lists(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "workbench.cli", "cycle", *args, "--data", str(tmp_path / "data")],
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = cli("--target", "qemu", "--dry-run")
    assert proc.returncode == 2 and "are for ssh: targets" in proc.stderr
    proc = cli("--target", "ssh:root@192.0.2.1,root@192.0.2.1", "--inventory", str(tmp_path / "none.toml"))
    assert proc.returncode == 2 and "no inventory" in proc.stderr
    proc = cli("--target", "ssh:root@192.0.2.1,root@192.0.2.1")
    assert proc.returncode == 2 and "given twice" in proc.stderr
    proc = cli("--target", "ssh:root@192.0.2.1", "--dump-after", "preserve")
    assert proc.returncode == 2 and "needs the QEMU target" in proc.stderr


def _inventory_toml(hosts: list[LabHost]) -> str:
    out = []
    for h in hosts:
        out.append(f"[hosts.{h.name}]")
        for key in ("host", "port", "user", "key", "known_hosts", "python", "workbench", "results_dir"):
            out.append(f"{key} = {json.dumps(getattr(h, key))}")
        for key in ("next_kernel", "next_initrd", "connect_timeout_s"):
            out.append(f"{key} = {json.dumps(getattr(h, key))}")
        out.append("env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in h.env.items()) + " }")
        out.append("")
    return "\n".join(out)


@pytest.fixture
def sshd_vm(lab_kernel, tmp_path):
    with SshdLabVM(tmp_path / "vm1", name="vm1", kernel=lab_kernel) as vm:
        yield vm


@pytest.fixture(scope="module")
def shared_vm(lab_kernel, tmp_path_factory):
    """One VM for the tests that never kexec it (login failures, refusals, the dry run)."""
    with SshdLabVM(tmp_path_factory.mktemp("shared") / "vm", name="shared", kernel=lab_kernel) as vm:
        yield vm


def _no_stray_qemu(vm: SshdLabVM) -> bool:
    return vm.vm.proc is not None and vm.vm.proc.poll() is not None


@lab
def test_cycle_over_ssh_verifies_and_is_recorded(sshd_vm, store, lab_kernel):
    events = []
    result = run_ssh_cycle(sshd_vm.host(), CycleParams(memfds=2, memfd_size=SMALL), store=store, on_event=events.append)
    assert result["verified"] is True
    assert result["pages_checked"] == 2 * SMALL // 4096
    assert result["session"] == "workbench"
    assert set(result["phases"]) >= {"prepare", "preserve", "load", "kexec", "restore", "verify", "finish"}
    assert result["blackout_s"] > 0 and result["phases"]["kexec"] == result["blackout_s"]
    b = result["blackout_breakdown"]
    assert b["kexec_to_login_s"] + b["login_to_command_s"] == pytest.approx(result["blackout_s"])
    assert result["boot_id_before"] != result["boot_id_after"]
    assert result["kernel_release_before"] == result["kernel_release_after"] == lab_kernel.release
    assert all(m["differing_count"] == 0 and m["size"] == SMALL for m in result["memfds"])
    assert result["target"] == "ssh:vm1" and result["this_machine"]["is_this_machine"] is False
    # the new kernel's init started sshd again (wb.phase=shell) instead of running the agent
    marks = [m for m, _ in sshd_vm.marks()]
    assert marks.count("init shell") == 2 and marks.count("sshd-started") == 2
    record = store.get(result["record_id"])
    assert record.status == "ok" and record.kind == "lab.cycle" and record.params["target"] == "ssh:vm1"
    assert record.environment["target_kernel_release"] == lab_kernel.release
    assert {"phases", "memfds", "marks"} <= set(record.table_names)
    names = list(store.table(result["record_id"], "marks")["event"])
    assert names.index("kexec") < names.index("ssh-back") < names.index("done")
    # the agent's files came back
    assert (record_dir := store.artifacts_root / result["record_id"] / "guest").is_dir()
    assert {"prepare.json", "restore.json", "fingerprints-before.npy"} <= {p.name for p in record_dir.iterdir()}
    phase_ends = [e.name for e in events if e.kind == "phase" and e.status == "end"]
    assert phase_ends[:2] == ["connect", "check"] and "kexec" in phase_ends
    # the blackout seen from both sides: the guest's console (init, sshd) and the SSH client, one host clock
    serial = sshd_vm.marks()
    t_init = [t for m, t in serial if m == "init shell"][1]
    t_sshd = [t for m, t in serial if m == "sshd-started"][1]
    h = result["host_times"]
    assert h["kexec"] < t_init < t_sshd < h["login"] < h["first_command"]
    steps = {
        "kexec_to_init_s": t_init - h["kexec"],
        "init_to_sshd_s": t_sshd - t_init,
        "sshd_to_login_s": h["login"] - t_sshd,
        "login_to_command_s": h["first_command"] - h["login"],
    }
    report = {k: result[k] for k in ("phases", "blackout_s", "blackout_breakdown")}
    print("\nSSH cycle:", json.dumps({**report, "seen_from_the_console": steps}))


@lab
def test_wrong_key_is_a_clear_authentication_error(shared_vm, store, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(SshTargetError) as info:
        run_ssh_cycle(shared_vm.host(key=str(other)), CycleParams(memfds=1, memfd_size=SMALL), store=store)
    msg = str(info.value)
    assert info.value.phase == "connect"
    assert "authentication failed for root@127.0.0.1" in msg and str(other) in msg and "authorized_keys" in msg
    assert store.get(info.value.record_id).status == "failed"


@lab
def test_unknown_host_key_is_refused_by_default(shared_vm, store, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SshTargetError) as info:
        run_ssh_cycle(shared_vm.host(known_hosts=str(empty)), CycleParams(memfds=1, memfd_size=SMALL), store=store)
    msg = str(info.value)
    assert "is not in" in msg and "refused (known-hosts checking is on)" in msg and "SHA256:" in msg
    assert store.get(info.value.record_id).status == "failed"
    # a changed key is refused even with accept-new; an unknown one is then trusted and remembered
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    empty.write_text(f"[127.0.0.1]:{shared_vm.port} {kind} {b64}\n")
    with pytest.raises(SshTargetError, match="CHANGED"):
        connect(shared_vm.host(known_hosts=str(empty), host_key_policy="accept-new"))
    fresh = tmp_path / "fresh_known_hosts"
    connect(shared_vm.host(known_hosts=str(fresh), host_key_policy="accept-new")).close()
    assert f"[127.0.0.1]:{shared_vm.port}" in fresh.read_text()
    connect(shared_vm.host(known_hosts=str(fresh))).close()  # now known: the default policy accepts it


@lab
def test_this_machine_is_refused_without_the_flag(shared_vm, store, monkeypatch):
    client = connect(shared_vm.host())
    vm_boot = _run(client, "cat /proc/sys/kernel/random/boot_id")[1].strip()
    client.close()
    monkeypatch.setattr("workbench.lab.ssh.boot_id", lambda: vm_boot)  # pretend the VM is where we run
    with pytest.raises(ThisMachineRefused) as info:
        run_ssh_cycle(shared_vm.host(), CycleParams(memfds=1, memfd_size=SMALL), store=store)
    assert "--i-really-want-to-kexec-this-machine" in str(info.value) and "boot id" in str(info.value)
    assert "WB-MARK agent-start" not in info.value.serial_log.read_text()


@lab
def test_dry_run_stops_before_the_kexec_and_leaves_nothing_behind(shared_vm, store):
    host = shared_vm.host(workbench=None, agent_dir="/tmp/wb-results/agent")  # the agent is copied over SFTP
    paused = []
    params = CycleParams(memfds=1, memfd_size=SMALL, pause_after=["preserve"])
    result = run_ssh_cycle(host, params, store=store, dry_run=True, on_pause=lambda phase, target: paused.append(phase))
    assert paused == ["preserve"]
    assert result["dry_run"] is True and result["verified"] is None
    assert set(result["phases"]) == {"prepare", "preserve", "load"}
    assert result["stood_down"]["undone"] == ["kexec unload", "session close", "/dev/liveupdate close"]
    assert result["would_kexec"]["cmdline"].endswith("wb.phase=shell")
    assert store.get(result["record_id"]).status == "ok"
    assert (shared_vm.guest / "agent" / "workbench" / "lab" / "agent.py").exists()
    client = connect(host)
    try:
        status, out, err = _run(
            client,
            f"cat /sys/kernel/kexec_loaded && cd / && PYTHONPATH=/work/main {sys.executable} -c "
            '\'from workbench.lab.liveupdate import LiveUpdate; s = LiveUpdate().create_session("workbench"); '
            'print("session free")\'',
            timeout=300,
        )
    finally:
        client.close()
    assert status == 0, err
    assert out.splitlines() == ["0", "session free"]  # no kernel armed, the session name free again
    assert [m for m, _ in shared_vm.marks()].count("init shell") == 1  # never kexeced


@lab
def test_kernel_without_luo_is_refused_before_any_kexec(lab_kernel, store, tmp_path):
    with SshdLabVM(tmp_path / "noluo", name="noluo", kernel=lab_kernel, live_update=False) as vm:
        with pytest.raises(PreconditionFailed) as info:
            run_ssh_cycle(vm.host(), CycleParams(memfds=1, memfd_size=SMALL), store=store)
        assert [m for m, _ in vm.marks()].count("init shell") == 1
    exc = info.value
    assert exc.phase == "check"
    assert {"kho=on", "liveupdate=on", "/dev/liveupdate"} <= set(exc.missing)
    assert "kho=on is not on the kernel command line" in str(exc) and "/dev/liveupdate does not exist" in str(exc)
    assert "WB-MARK agent-start" not in exc.serial_log.read_text()
    assert store.get(exc.record_id).status == "failed"
    assert _no_stray_qemu(vm)


@lab
def test_host_that_does_not_come_back_fails_clearly_and_is_recorded(sshd_vm, store):
    params = CycleParams(memfds=1, memfd_size=SMALL, faults={"next_boot_hangs": True}, return_timeout_s=60)
    started = time.monotonic()
    with pytest.raises(CycleFailed) as info:
        run_ssh_cycle(sshd_vm.host(), params, store=store)
    assert time.monotonic() - started < 900
    assert info.value.phase == "kexec"
    assert "did not come back within 60 s after the kexec" in str(info.value)
    record = store.get(info.value.record_id)
    assert record.status == "failed" and "did not come back" in record.error
    assert record.result["failed_phase"] == "kexec" and record.result["host"] == "vm1"
    assert "WB-MARK hang" in sshd_vm.vm.serial_text()


@lab
def test_two_hosts_at_once_through_the_cli(lab_kernel, tmp_path):
    data = tmp_path / "data"
    with (
        SshdLabVM(tmp_path / "vm1", name="vm1", kernel=lab_kernel) as vm1,
        SshdLabVM(tmp_path / "vm2", name="vm2", kernel=lab_kernel) as vm2,
    ):
        inventory = tmp_path / "lab-hosts.toml"
        inventory.write_text(_inventory_toml([vm1.host(), vm2.host()]))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "workbench.cli",
                "cycle",
                "--target",
                "ssh:vm1,vm2",
                "--inventory",
                str(inventory),
                "--memfds",
                "1",
                "--memfd-size",
                "8M",
                "--json",
                "--data",
                str(data),
            ],
            capture_output=True,
            text=True,
            timeout=2400,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert [r["host"] for r in results] == ["vm1", "vm2"]
    assert all(r["verified"] and r["pages_checked"] == SMALL // 4096 for r in results)
    store = RecordStore(data)
    r1, r2 = (store.get(r["record_id"]) for r in results)
    assert (r1.params["target"], r2.params["target"]) == ("ssh:vm1", "ssh:vm2")
    assert r1.status == r2.status == "ok"
    assert r2.started < r1.ended and r1.started < r2.ended  # concurrent, not one after the other
    print("\ntwo hosts:", json.dumps([{k: r[k] for k in ("host", "blackout_s", "phases")} for r in results]))
