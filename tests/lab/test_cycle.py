"""Real preserve → kexec → restore cycles in the lab VM (QEMU; KVM where a probe shows it works, TCG otherwise)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from workbench.lab.cycle import run_cycle
from workbench.lab.errors import CycleFailed, TargetLost
from workbench.lab.faults import Faults, PageRef
from workbench.lab.params import CycleParams
from workbench.lab.protocol import FINGERPRINTS_BEFORE
from workbench.lab.qemu import running_vms
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workloads.memfd import MemfdWorkload
from workbench.records import RecordStore

pytestmark = pytest.mark.lab

SMALL = 8 << 20


def test_cycle_64m_verifies_through_the_cli(lab_kernel, tmp_path):
    data = tmp_path / "data"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "cycle",
            "--target",
            "qemu",
            "--memfds",
            "2",
            "--memfd-size",
            "64M",
            "--json",
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["verified"] is True
    assert result["pages_checked"] == 2 * (64 << 20) // 4096
    assert result["session"] == "workbench"
    assert set(result["phases"]) >= {"prepare", "preserve", "load", "kexec", "restore", "verify", "finish"}
    assert result["blackout_s"] > 0
    assert result["kernel_release_before"] == result["kernel_release_after"] == lab_kernel.release
    assert all(m["differing_count"] == 0 and m["size"] == 64 << 20 for m in result["memfds"])
    from workbench.records import RecordStore

    record = RecordStore(data).get(result["record_id"])
    assert record.status == "ok" and record.kind == "lab.cycle"
    assert record.environment["target_kernel_release"] == lab_kernel.release
    assert record.environment["target_config_hash"] == lab_kernel.config_hash
    assert record.environment["accelerator"] in ("kvm", "tcg") and record.environment["accelerator_reason"]
    assert {"phases", "memfds", "marks"} <= set(record.table_names)


def test_ctrl_c_to_a_running_cycle_command_records_interrupted_and_leaves_no_qemu(lab_kernel, tmp_path):
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "workbench.cli", "cycle", "--memfds", "1", "--memfd-size", "8M", "--json"]
    proc = subprocess.Popen([*argv, "--data", str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        vm = _vm_of(data, proc, until="WB-MARK agent-start")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, stderr[-3000:]
    (record,) = RecordStore(data).runs(kind="lab.cycle")
    assert record.status == "interrupted" and record.error.endswith("interrupted by the user")  # not left behind
    assert not _alive(vm["pid"]) and _no_qemu_of(record.id)
    assert not any(Path(about["workdir"]).is_relative_to(data) for about in running_vms())


def test_qemu_killed_during_the_kexec_fails_the_cycle_in_that_phase(lab_kernel, store):
    killed = []

    def kill_qemu_at_the_kexec(event):
        if event.kind == "phase" and event.name == "kexec" and event.status == "begin" and not killed:
            (about,) = [a for a in running_vms() if Path(a["workdir"]).is_relative_to(store.data_dir)]
            os.kill(about["pid"], signal.SIGKILL)
            killed.append(about["pid"])

    workload = MemfdWorkload(memfds=1, memfd_size=SMALL)
    with pytest.raises(TargetLost) as info:
        run_cycle(workload, target=QemuTarget(lab_kernel), store=store, on_event=kill_qemu_at_the_kexec)
    assert killed and info.value.phase == "kexec"
    assert "QEMU exit -9" in str(info.value) and "phase kexec" in str(info.value)
    record = store.get(info.value.record_id)
    assert record.status == "failed" and record.result["failed_phase"] == "kexec"
    assert "phase kexec" in record.error and "QEMU exit -9" in record.error
    assert not _alive(killed[0]) and _no_qemu_of(record.id)


def test_pages_that_do_not_verify_exit_the_cycle_command_with_status_3(lab_kernel, tmp_path):
    # the agent compares the restored pages with the fingerprints it left in the share before the kexec: one
    # changed on the host during the kexec is a page that came back different, through the real command
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "workbench.cli", "cycle", "--memfds", "1", "--memfd-size", "8M", "--json"]
    proc = subprocess.Popen([*argv, "--data", str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        vm = _vm_of(data, proc, until="WB-MARK kexec")
        fingerprints = Path(vm["workdir"]) / "guest" / FINGERPRINTS_BEFORE
        changed = np.load(fingerprints)
        changed[0, 5] ^= 1
        np.save(fingerprints.with_name("changed.npy"), changed)
        os.replace(fingerprints.with_name("changed.npy"), fingerprints)
        stdout, stderr = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, stderr[-3000:]
    result = json.loads(stdout)
    assert result["verified"] is False and result["differing_pages"] == {"0": [5]}
    assert RecordStore(data).get(result["record_id"]).status == "failed"


def _vm_of(data: Path, proc: subprocess.Popen, until: str, timeout_s: float = 900) -> dict:
    """The lab VM that the cycle command ``proc`` runs with its records in ``data``, once its serial log shows
    ``until``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the cycle ended first: {proc.communicate()[1][-3000:]}"
        for about in running_vms():
            serial = Path(about["workdir"]) / "serial.log"
            mine = Path(about["workdir"]).is_relative_to(data) and serial.exists()
            if mine and until in serial.read_text(errors="replace"):
                return about
        time.sleep(0.5)
    raise AssertionError(f"no lab VM of {data} printed {until!r} within {timeout_s} s")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_corrupted_page_is_reported_never_verified(lab_kernel, store):
    params = CycleParams(faults=Faults(corrupt_page=PageRef(memfd=1, page=77)))
    result = run_cycle(MemfdWorkload(memfds=2, memfd_size=SMALL), params, target=QemuTarget(lab_kernel), store=store)
    assert result["verified"] is False
    assert result["differing_pages"] == {"1": [77]}
    assert store.get(result["record_id"]).status == "failed"


def test_memfd_changed_after_preservation_is_refused_or_caught(lab_kernel, store):
    params = CycleParams(faults=Faults(modify_after_preserve=PageRef(memfd=0, page=3)))
    result = run_cycle(MemfdWorkload(memfds=1, memfd_size=SMALL), params, target=QemuTarget(lab_kernel), store=store)
    outcome = result["modify_after_preserve"]
    if "written" in outcome.values():
        assert result["verified"] is False and result["differing_pages"] == {"0": [3]}
    else:
        assert result["verified"] is True


def test_reused_token_fails_in_preserve_before_any_kexec(lab_kernel, store):
    with pytest.raises(CycleFailed) as info:
        run_cycle(MemfdWorkload(memfds=2, memfd_size=SMALL, tokens=[7, 7]), target=QemuTarget(lab_kernel), store=store)
    assert info.value.phase == "preserve"
    assert "token 7" in str(info.value)
    serial = info.value.serial_log.read_text()
    assert "WB-MARK kexec" not in serial
    assert store.get(info.value.record_id).status == "failed"


def test_kernel_booted_without_live_update_fails_clearly_before_kexec(lab_kernel, store):
    with pytest.raises(CycleFailed) as info:
        run_cycle(
            MemfdWorkload(memfds=1, memfd_size=SMALL), target=QemuTarget(lab_kernel, live_update=False), store=store
        )
    assert info.value.phase == "prepare"
    assert "/dev/liveupdate" in str(info.value) or "liveupdate" in str(info.value).lower()
    assert "WB-MARK kexec" not in info.value.serial_log.read_text()


def test_target_that_never_comes_back_times_out_and_is_recorded(lab_kernel, store):
    params = CycleParams(faults=Faults(next_boot_hangs=True), return_timeout_s=45)
    with pytest.raises(CycleFailed) as info:
        run_cycle(MemfdWorkload(memfds=1, memfd_size=SMALL), params, target=QemuTarget(lab_kernel), store=store)
    assert info.value.phase == "kexec"
    assert "did not come back" in str(info.value)
    record = store.get(info.value.record_id)
    assert record.status == "failed" and "did not come back" in record.error
    assert "WB-MARK hang" in info.value.serial_log.read_text()
    assert _no_qemu_of(record.id)


def _no_qemu_of(record_id: str) -> bool:
    """No QEMU process is left whose results share is this run's folder."""
    out = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64.*{record_id}"], capture_output=True, text=True).stdout
    return out.strip() == ""
