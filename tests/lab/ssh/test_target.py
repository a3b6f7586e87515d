"""One cycle on one SSH host: the command line's checks of SSH options without a VM, and (``lab``) the cycle,
the dry run and a host that does not come back, on lab VMs with sshd (the inventory is tested in
tests/lab/test_inventory.py)."""

import json
import subprocess
import sys
import time

import pytest

from workbench.lab.errors import CycleFailed
from workbench.lab.params import CycleParams
from workbench.lab.ssh.connection import connect, run_command
from workbench.lab.ssh.target import run_ssh_cycle
from workbench.lab.workloads.memfd import MemfdWorkload

SMALL = 8 << 20
lab = pytest.mark.lab


# -- without a VM ----------------------------------------------------------------------------------------------
def test_cli_refuses_ssh_options_for_qemu_and_bad_host_lists(tmp_path):
    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "workbench.cli", "cycle", *args, "--data", str(tmp_path / "data")],
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = cli("--target", "qemu", "--dry-run", "--ssh-key", "k")
    assert proc.returncode == 2 and "--ssh-key, --dry-run are not for the qemu target" in proc.stderr
    proc = cli("--target", "ssh:root@192.0.2.1", "--workload", "criu")
    assert proc.returncode == 2 and "the criu workload runs on the qemu and guest targets only, not ssh" in proc.stderr
    proc = cli("--target", "ssh:root@192.0.2.1,root@192.0.2.1", "--inventory", str(tmp_path / "none.toml"))
    assert proc.returncode == 2 and "no inventory" in proc.stderr
    proc = cli("--target", "ssh:root@192.0.2.1,root@192.0.2.1")
    assert proc.returncode == 2 and "given twice" in proc.stderr
    proc = cli("--target", "ssh:root@192.0.2.1", "--dump-after", "preserve")
    assert proc.returncode == 2 and "--dump-after is not for the ssh target" in proc.stderr


# -- lab VMs with sshd -----------------------------------------------------------------------------------------
@lab
def test_cycle_over_ssh_verifies_and_is_recorded(sshd_vm, store, lab_kernel):
    events = []
    result = run_ssh_cycle(
        sshd_vm.host(), MemfdWorkload(memfds=2, memfd_size=SMALL), store=store, on_event=events.append
    )
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
def test_dry_run_stops_before_the_kexec_and_leaves_nothing_behind(shared_vm, store):
    host = shared_vm.host(workbench=None, agent_dir="/tmp/wb-results/agent")  # the agent is copied over SFTP
    paused = []
    params = CycleParams(pause_after=["preserve"])
    result = run_ssh_cycle(
        host,
        MemfdWorkload(memfds=1, memfd_size=SMALL),
        params,
        store=store,
        dry_run=True,
        on_pause=lambda phase, target: paused.append(phase),
    )
    assert paused == ["preserve"]
    assert result["dry_run"] is True and result["verified"] is None
    assert set(result["phases"]) == {"prepare", "preserve", "load"}
    assert result["stood_down"]["undone"] == ["kexec unload", "session close", "/dev/liveupdate close"]
    assert result["would_kexec"]["cmdline"].endswith("wb.phase=shell")
    assert store.get(result["record_id"]).status == "ok"
    assert (shared_vm.guest / "agent" / "workbench" / "lab" / "agent.py").exists()
    client = connect(host)
    try:
        status, out, err = run_command(
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
def test_host_that_does_not_come_back_fails_clearly_and_is_recorded(sshd_vm, store):
    params = CycleParams(faults={"next_boot_hangs": True}, return_timeout_s=60)
    started = time.monotonic()
    with pytest.raises(CycleFailed) as info:
        run_ssh_cycle(sshd_vm.host(), MemfdWorkload(memfds=1, memfd_size=SMALL), params, store=store)
    assert time.monotonic() - started < 900
    assert info.value.phase == "kexec"
    assert "did not come back within 60 s after the kexec" in str(info.value)
    record = store.get(info.value.record_id)
    assert record.status == "failed" and "did not come back" in record.error
    assert record.result["failed_phase"] == "kexec" and record.result["host"] == "vm1"
    assert "WB-MARK hang" in sshd_vm.vm.serial_text()
