"""A whole process kept alive across the kexec with CRIU and LUO (the ``criu`` workload) in the lab VM, and its
failure paths."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.lab.cycle import run_cycle
from workbench.lab.errors import CycleFailed
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workloads.criu import CriuFaults, CriuWorkload

pytestmark = pytest.mark.lab

SMALL = 16 << 20


def _failed_before_kexec(exc: CycleFailed) -> bool:
    return "WB-MARK kexec" not in exc.serial_log.read_text()


def _cycle(workload: CriuWorkload, lab_kernel, store, **target) -> dict:
    # run once: a kernel that panics (after the kexec or before it) fails the test, never an infrastructure retry
    return run_cycle(workload, target=QemuTarget(kernel=lab_kernel, **target), store=store)


def test_process_survives_kexec_with_identical_memory(lab_kernel, tmp_path):
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "workbench.cli", "cycle", "--workload", "criu", "--anon", "16M"]
    argv += ["--memfd-region", "8M", "--json", "--data", str(data)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["verified"] is True and result["workload"] == "criu"
    assert [(r["region"], r["differing_count"]) for r in result["memfds"]] == [("anon", 0), ("tmpfile", 0)]
    assert result["pages_checked"] == (16 << 20) // 4096 + (8 << 20) // 4096
    counter = result["criu"]["counter"]
    assert counter["later"] > counter["after_restore"] > counter["before_dump"]
    assert result["criu"]["version"] == "3.17.1"
    assert set(result["phases"]) >= {"dump", "convert", "preserve", "kexec", "retrieve", "restore", "resume"}
    assert result["downtime_s"] > result["blackout_s"] > 0
    assert sum(result["downtime_breakdown"].values()) == pytest.approx(result["downtime_s"])
    # the shmem region is not in CRIU's images: LUO preserved it directly
    pages_img = next(i for i in result["criu"]["images"] if i["name"] == "pages-1.img")
    assert (16 << 20) <= pages_img["size"] < (16 << 20) + (1 << 20)
    tokens = json.loads((Path(result["run_dir"]) / "guest" / "criu-tokens.json").read_text())
    assert "pages-1.img" in tokens["images"].values() and tokens["region"]["criu_id"].startswith("file[")


def test_criu_missing_fails_before_the_workload_starts(lab_kernel, store):
    params = CriuWorkload(anon_size=SMALL, criu="/nonexistent/criu")
    with pytest.raises(CycleFailed) as info:
        _cycle(params, lab_kernel, store)
    assert info.value.phase == "prepare"
    assert "CRIU not found at /nonexistent/criu" in str(info.value)
    assert _failed_before_kexec(info.value)
    assert store.get(info.value.record_id).status == "failed"


def test_criu_too_old_is_refused(lab_kernel, store):
    params = CriuWorkload(anon_size=SMALL, criu_faults=CriuFaults(criu_min_version="99.0"))
    with pytest.raises(CycleFailed) as info:
        _cycle(params, lab_kernel, store)
    assert info.value.phase == "prepare"
    assert "CRIU 3.17.1 at /usr/sbin/criu is too old: the workbench needs CRIU 99.0" in str(info.value)
    assert _failed_before_kexec(info.value)


def test_criu_317_cannot_probe_linux_72_with_its_vdso(lab_kernel, store):
    """What happens without the ``vdso=0`` the CRIU cycle adds: CRIU 3.17 stops at the [vvar_vclock] mapping."""
    params = CriuWorkload(anon_size=SMALL)
    with pytest.raises(CycleFailed) as info:
        _cycle(params, lab_kernel, store, kernel_args="vdso=1")
    assert info.value.phase == "prepare"
    message = str(info.value)
    assert "Unexpected rt vDSO area bounds" in message and "vdso=0" in message
    assert _failed_before_kexec(info.value)


def test_failed_dump_leaves_the_process_running_and_nothing_kexecd(lab_kernel, store):
    """The workload holds a pidfd, which CRIU 3.17 cannot dump: CRIU freezes it, fails, and thaws it."""
    params = CriuWorkload(anon_size=SMALL, criu_faults=CriuFaults(undumpable=True))
    with pytest.raises(CycleFailed) as info:
        _cycle(params, lab_kernel, store)
    assert info.value.phase == "dump"
    message = str(info.value)
    assert "criu dump failed" in message and "still running" in message and "nothing was kexec'd" in message
    assert _failed_before_kexec(info.value)
    record = store.get(info.value.record_id)
    guest = Path(record.result["run_dir"]) / "guest"
    prepare = json.loads((guest / "prepare.json").read_text())
    after = prepare["workload_after_failed_dump"]
    assert after["alive"] is True and after["counter"] > prepare["status_at_dump"]["counter"]
    assert "pidfd" in (guest / "dump.log").read_text() or "anon_inode" in (guest / "dump.log").read_text()


def test_failed_restore_says_where_and_keeps_the_images(lab_kernel, store):
    """Another process holds the workload's pid in the next kernel when CRIU restores it."""
    params = CriuWorkload(anon_size=SMALL, criu_faults=CriuFaults(pid_taken=True))
    with pytest.raises(CycleFailed) as info:
        _cycle(params, lab_kernel, store)
    assert info.value.phase == "restore"
    assert "criu restore failed" in str(info.value) and "kept in the run folder (guest/criu-images)" in str(info.value)
    serial = info.value.serial_log.read_text()
    assert "WB-MARK kexec" in serial and "workload-resumed" not in serial.split("WB-MARK kexec", 1)[1]
    guest = Path(store.get(info.value.record_id).result["run_dir"]) / "guest"
    kept = {p.name for p in (guest / "criu-images").iterdir()}
    assert {"pages-1.img", "pstree.img", "inventory.img"} <= kept
    assert (guest / "criu-images" / "pages-1.img").stat().st_size >= SMALL
    assert "Error" in (guest / "restore.log").read_text()
