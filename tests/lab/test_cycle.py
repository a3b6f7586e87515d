"""Real preserve → kexec → restore cycles in the lab VM (QEMU; KVM where a probe shows it works, TCG otherwise)."""

import json
import subprocess
import sys

import pytest

from workbench.lab.cycle import run_cycle
from workbench.lab.errors import CycleFailed
from workbench.lab.faults import Faults, PageRef
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workloads.memfd import MemfdWorkload

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
