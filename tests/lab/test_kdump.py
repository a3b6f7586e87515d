"""kdump in the lab VM: the crash points, the capture kernel's request, what the agent reads from the kernel, the
dump taken from the results share, the coexistence finding; and (lab) real cycles that panic the target and
whose capture kernel writes a kdump-compressed dump that the inspector reads."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workbench.lab.cycle import check, run_cycle
from workbench.lab.errors import InvalidCycle, LabError, ShareFileError, ShareFileMalformed
from workbench.lab.faults import Faults
from workbench.lab.initramfs import INIT_SCRIPT
from workbench.lab.inventory import LabHost
from workbench.lab.kdump import (
    CRASH_KHO_SCRATCH,
    CRASHKERNEL,
    DUMP_FILE,
    DUMP_LEVEL,
    TargetCrashed,
    capture_cmdline,
    capture_facts,
    capture_request,
    check_crash,
    claim_dump,
    coexistence,
    crash_pause_point,
    crash_result,
    makedumpfile_output,
)
from workbench.lab.params import CycleParams
from workbench.lab.protocol import FRAMES_AFTER, FRAMES_BEFORE, Event, format_mark, parse_mark
from workbench.lab.qemu import running_vms
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.ssh.target import SshTarget
from workbench.lab.target import Target
from workbench.lab.workload import make_workload, workload_class
from workbench.lab.workloads.memfd import MemfdWorkload
from workbench.records import RecordStore

MEMFD_SIZE = 4 << 20
TOKENS = [1000, 1001]

IOMEM = """00000000-00000fff : Reserved
00001000-0009fbff : System RAM
00100000-3ffdefff : System RAM
  05000000-05ffffff : Kernel code
  37000000-3effffff : Crash kernel
3ffdf000-3fffffff : Reserved
"""


# -- crash points and requests ---------------------------------------------------------------------------------
def test_crash_points_map_to_where_the_agent_stops():
    assert crash_pause_point("preserve") == "preserve"
    assert crash_pause_point("retrieve") == crash_pause_point("restore") == "restore"
    with pytest.raises(InvalidCycle, match="--crash-after takes preserve, retrieve, restore, not 'kexec'"):
        crash_pause_point("kexec")


def test_a_fault_with_an_unknown_crash_point_is_refused_and_a_known_one_travels_in_the_request():
    with pytest.raises(InvalidCycle, match="not 'verify'"):
        Faults(crash_after="verify")
    faults = Faults.from_dict({"crash_after": "retrieve"})
    assert faults.crash_after == "retrieve"
    assert faults.to_request() == {"crash_after": "retrieve"}
    assert Faults.from_dict(faults.to_request()) == faults
    assert "crash_after" not in Faults().to_request()


def test_crash_needs_a_target_with_kdump_and_a_workload_that_stops_there():
    memfd, criu, selftest = make_workload("memfd"), make_workload("criu"), make_workload("selftest")
    ssh = SshTarget(LabHost(name="lab1", host="lab1.example"))
    check_crash(None, selftest, ssh)  # no crash asked for: nothing to check
    check_crash("preserve", criu, QemuTarget())
    for point in ("preserve", "retrieve", "restore"):
        check_crash(point, memfd, QemuTarget())
    with pytest.raises(InvalidCycle, match="needs the lab VM .* ssh:lab1 target has no kdump"):
        check_crash("preserve", memfd, ssh)
    with pytest.raises(
        InvalidCycle, match="--crash-after retrieve needs a workload .* criu workload's agent can crash "
    ):
        check_crash("retrieve", criu, QemuTarget())
    with pytest.raises(InvalidCycle, match="selftest workload's agent can crash the target at no point"):
        check(
            make_workload("selftest"),
            CycleParams(faults=Faults(crash_after="preserve")),
            QemuTarget(),
        )


def test_what_can_crash_is_said_by_the_workload_and_target_classes():
    assert Target.supports_kdump is False and SshTarget.supports_kdump is False and QemuTarget.supports_kdump is True
    assert workload_class("criu").crash_points == ("preserve",)
    for name in ("memfd", "sessions", "converted"):
        assert workload_class(name).crash_points == ("preserve", "retrieve", "restore")
    for name in ("selftest", "baseline"):
        assert workload_class(name).crash_points == ()


def test_the_kdump_marks_are_the_protocols_and_the_capture_initramfs_prints_them():
    assert parse_mark(format_mark(Event.CRASH, {"after": "preserve"})) == ("crash", {"after": "preserve"})
    assert f'echo "WB-MARK {Event.KDUMP_START}"' in INIT_SCRIPT
    assert f'echo "WB-MARK {Event.KDUMP_SAVED} {{' in INIT_SCRIPT
    assert f'echo "WB-MARK {Event.KDUMP_ERROR} {{' in INIT_SCRIPT
    saved = INIT_SCRIPT.split(f"WB-MARK {Event.KDUMP_SAVED} ")[1].split('"\n')[0]
    event, data = parse_mark(
        "WB-MARK kdump-saved " + saved.replace('\\"', '"').replace("$dumpfile", DUMP_FILE).replace("$dumplevel", "23")
    )
    assert event == Event.KDUMP_SAVED and data == {"file": DUMP_FILE, "level": 23}


def test_the_capture_kernel_boots_one_cpu_into_the_initramfs_kdump_phase():
    request = capture_request("retrieve", Path("/k/bzImage"), Path("/c/initramfs.cpio"), tcg=True)
    assert request["point"] == "retrieve" and request["pause"] == "restore" and request["level"] == DUMP_LEVEL
    assert (request["kernel"], request["initrd"]) == ("/k/bzImage", "/c/initramfs.cpio")
    args = request["cmdline"].split()
    assert {"wb.phase=kdump", f"wb.dumplevel={DUMP_LEVEL}", f"wb.dumpfile={DUMP_FILE}", "nr_cpus=1"} <= set(args)
    assert "no_timer_check" in args and "no_timer_check" not in capture_cmdline(tcg=False).split()
    assert not any(a.startswith(("kho=", "liveupdate=", "crashkernel=")) for a in args)


def test_facts_read_the_crash_reservation_from_iomem():
    facts = capture_facts(IOMEM)
    assert facts["crash_kernel"] == [[0x37000000, 0x3EFFFFFF]]
    none = capture_facts("00100000-3ffdefff : System RAM\n")
    assert none["crash_kernel"] == []


# -- the coexistence finding -------------------------------------------------------------------------------------
def test_a_reservation_beside_the_scratch_areas_coexists_before_the_kexec():
    facts = {
        "crash_kernel": [[0x37000000, 0x3EFFFFFF]],
        "capture_loaded": True,
        "kho_scratch": [[0x22800000, 320 << 20], [0x21800000, 16 << 20], [0x1F800000, 32 << 20]],
    }
    found = coexistence(facts, True, "preserve", 1)
    assert found["coexist"] is True and found["crash_in_scratch"] is False
    assert "coexist before the kexec" in found["finding"] and "beside the 3 KHO scratch" in found["finding"]
    assert "1 session(s) preserved" in found["finding"]


def test_a_reservation_carved_from_scratch_in_the_next_kernel_is_named():
    facts = {
        "crash_kernel": [[0x27000000, 0x2EFFFFFF]],
        "capture_loaded": True,
        "kho_scratch": [[0x1C800000, 320 << 20], [0x35800000, 16 << 20]],
    }
    found = coexistence(facts, True, "restore", 2)
    assert found["coexist"] is True and found["crash_in_scratch"] is True
    assert "inside KHO scratch (0x1c800000+320 MiB)" in found["finding"]
    assert "2 session(s) retrieved" in found["finding"]


def test_without_a_reservation_or_a_dump_they_do_not_coexist_and_the_finding_says_why():
    found = coexistence({"crash_kernel": [], "capture_loaded": False, "kho_scratch": []}, False, "preserve", 1)
    assert found["coexist"] is False
    assert found["finding"] == (
        "KHO and kdump did not coexist before the kexec: no crash reservation in /proc/iomem; no capture kernel "
        "loaded; the capture kernel wrote no dump"
    )


# -- the dump in the results share ------------------------------------------------------------------------------
def test_the_dump_is_moved_out_of_the_share_only_when_it_is_a_plain_kdump_file(tmp_path):
    share, run = tmp_path / "guest", tmp_path
    share.mkdir()
    with pytest.raises(ShareFileError, match="reported the dump '../etc/passwd'"):
        claim_dump(share, "../etc/passwd", run)
    with pytest.raises(ShareFileError, match="is missing"):
        claim_dump(share, DUMP_FILE, run)
    outside = tmp_path / "secret"
    outside.write_bytes(b"KDUMP   " + bytes(100))
    (share / DUMP_FILE).symlink_to(outside)
    with pytest.raises(ShareFileError, match="is a symlink"):
        claim_dump(share, DUMP_FILE, run)
    (share / DUMP_FILE).unlink()
    os.mkfifo(share / DUMP_FILE)
    with pytest.raises(ShareFileError, match="not a regular file"):
        claim_dump(share, DUMP_FILE, run)
    (share / DUMP_FILE).unlink()
    (share / DUMP_FILE).write_bytes(b"\x7fELF" + bytes(100))
    with pytest.raises(ShareFileMalformed, match="not a kdump-compressed file"):
        claim_dump(share, DUMP_FILE, run)
    assert (share / DUMP_FILE).exists() and not (run / DUMP_FILE).exists()
    (share / DUMP_FILE).write_bytes(b"KDUMP   " + bytes(100))
    moved = claim_dump(share, DUMP_FILE, run)
    assert moved == run / DUMP_FILE and moved.read_bytes()[:8] == b"KDUMP   " and not (share / DUMP_FILE).exists()
    assert not moved.is_symlink()


def test_only_the_end_of_a_plain_makedumpfile_log_is_read(tmp_path):
    assert makedumpfile_output(tmp_path) == ""
    (tmp_path / "makedumpfile.log").write_text("x" * 10_000 + "makedumpfile Completed.\n")
    assert makedumpfile_output(tmp_path, limit=24) == "makedumpfile Completed.\n"
    (tmp_path / "makedumpfile.log").write_text("short\n")
    assert makedumpfile_output(tmp_path) == "short\n"
    (tmp_path / "makedumpfile.log").unlink()
    (tmp_path / "makedumpfile.log").symlink_to("/etc/hostname")
    assert makedumpfile_output(tmp_path) == ""
    (tmp_path / "makedumpfile.log").unlink()
    os.mkfifo(tmp_path / "makedumpfile.log")  # a FIFO that never ends is not read at all
    assert makedumpfile_output(tmp_path) == ""


def test_a_crash_result_is_never_verified_and_names_its_dump(tmp_path):
    vmcore = tmp_path / DUMP_FILE
    vmcore.write_bytes(b"KDUMP   " + bytes(4088))
    prepare = {
        "session": "s",
        "phases": {"prepare": 0.5, "preserve": 0.1},
        "kernel_release_before": "7.2.13-lab",
        "kdump": {"crash_kernel": [[1, 2]], "capture_loaded": True, "kho_scratch": [], "capture_load_s": 1.0},
    }
    log = "Copying data : [ 12.3 %] -\rCopying data : [100.0 %] |\nThe kernel version is not supported.\n"
    result = crash_result("preserve", vmcore, Path("/k/vmlinux"), prepare, {}, log, "fallback")
    assert result["outcome"] == "crashed" and result["verified"] is False and result["crashed_after"] == "preserve"
    assert result["vmcore"] == str(vmcore) and result["vmlinux"] == "/k/vmlinux" and result["session"] == "s"
    assert result["kdump"]["dump_bytes"] == 4096 and result["kdump"]["dump_level"] == DUMP_LEVEL
    assert result["kdump"]["makedumpfile"] == "The kernel version is not supported."
    assert result["kho_kdump"]["coexist"] is True
    assert "panicked on purpose after preserve" in str(TargetCrashed(result))
    assert isinstance(TargetCrashed(result), LabError)


# -- real crashes ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crashed(lab_kernel, tmp_path_factory):
    """One cycle of two 4 MiB memfds that panics after preserve, through the command line."""
    data = tmp_path_factory.mktemp("kdump") / "data"
    argv = [sys.executable, "-m", "workbench.cli", "cycle", "--memfds", "2", "--memfd-size", "4M"]
    argv += ["--crash-after", "preserve", "--json", "--data", str(data)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), RecordStore(data)


@pytest.mark.lab
def test_a_crash_after_preserve_is_recorded_with_its_kdump_and_leaves_no_qemu(crashed, lab_kernel):
    result, store = crashed
    assert result["outcome"] == "crashed" and result["verified"] is False
    vmcore = Path(result["vmcore"])
    assert vmcore.name == DUMP_FILE and vmcore.parent == Path(result["run_dir"])
    assert vmcore.read_bytes()[:8] == b"KDUMP   "
    assert result["vmlinux"] == str(lab_kernel.vmlinux)
    assert result["kdump"]["dump_level"] == DUMP_LEVEL and result["kdump"]["capture_loaded"] is True
    assert "makedumpfile Completed." in result["kdump"]["makedumpfile"]
    assert result["kho_kdump"]["coexist"] is True and result["kho_kdump"]["crash_in_scratch"] is False
    record = store.get(result["record_id"])
    assert record.status == "failed" and "panicked on purpose after preserve" in record.error
    assert record.result["vmcore"] == str(vmcore) and record.result["outcome"] == "crashed"
    assert record.params["faults"] == {"crash_after": "preserve"}
    cmdline = Path(result["run_dir"], "qemu.cmdline").read_text()
    assert f"crashkernel={CRASHKERNEL}" in cmdline and f"kho_scratch={CRASH_KHO_SCRATCH}" in cmdline
    assert not (Path(result["run_dir"]) / "guest" / f"{DUMP_FILE}.part").exists()
    assert not any(Path(about["workdir"]) == Path(result["run_dir"]) for about in running_vms())


@pytest.mark.lab
def test_the_kdump_shows_the_sessions_the_agent_preserved(crashed, lab_kernel):
    from workbench.inspect import open_vmcore
    from workbench.inspect.snapshot import snapshot
    from workbench.inspect.vmcore import check_dump, kdump_for_drgn

    result, _ = crashed
    vmcore = Path(result["vmcore"])
    assert check_dump(vmcore) == "kdump"
    assert kdump_for_drgn(vmcore, "kdump") == vmcore  # makedumpfile writes a utsname: no repaired copy
    snap = snapshot(open_vmcore(vmcore, lab_kernel.vmlinux), memory=False)
    assert snap.source["format"] == "kdump" and snap.source["release"] == lab_kernel.release
    sessions = snap.tables["sessions"]
    assert list(sessions["name"]) == ["workbench"] and list(sessions["direction"]) == ["outgoing"]
    assert list(sessions["files"]) == [2]
    memfds = snap.tables["memfds"]
    assert sorted(memfds["token"]) == TOKENS
    assert (memfds["size"] == MEMFD_SIZE).all() and (memfds["ser_size"] == MEMFD_SIZE).all()
    assert (memfds["folios"] == MEMFD_SIZE // 4096).all() and (memfds["ser_nr_folios"] == MEMFD_SIZE // 4096).all()
    frames = np.load(Path(result["run_dir"]) / "guest" / FRAMES_BEFORE)
    folios = snap.tables["memfd_folios"].sort_values(["token", "index"])
    for i, token in enumerate(TOKENS):
        assert folios[folios["token"] == token]["pfn"].tolist() == frames[i].tolist()
    preserved = set(snap.tables["preserved"]["pfn"].tolist())
    assert set(frames.ravel().tolist()) <= preserved
    assert snap.kho["enabled"] is True and snap.luo["outgoing_sessions"] == 1


@pytest.mark.lab
def test_a_cut_copy_of_a_real_kdump_is_refused(crashed, lab_kernel, tmp_path):
    from workbench.inspect import TruncatedDump, open_vmcore

    original = Path(crashed[0]["vmcore"])
    copy = tmp_path / original.name
    shutil.copyfile(original, copy)
    os.truncate(copy, original.stat().st_size * 3 // 4)
    with pytest.raises(TruncatedDump, match="descriptors|truncated") as info:
        open_vmcore(copy, lab_kernel.vmlinux)
    assert info.value.actual_size == original.stat().st_size * 3 // 4


@pytest.mark.lab
def test_a_crash_after_retrieve_dumps_the_next_kernel_with_its_incoming_session(lab_kernel, store):
    from workbench.inspect import open_vmcore
    from workbench.inspect.snapshot import snapshot

    workload = MemfdWorkload(memfds=2, memfd_size=MEMFD_SIZE)
    params = CycleParams(faults=Faults(crash_after="retrieve"))
    result = run_cycle(workload, params, target=QemuTarget(lab_kernel), store=store)
    assert result["outcome"] == "crashed" and result["crashed_after"] == "retrieve"
    assert result["kernel_release_after"] == lab_kernel.release and "restore" in result["phases"]
    # the next kernel reserves for its capture kernel while memblock allocates from KHO scratch only
    assert result["kho_kdump"]["coexist"] is True and result["kho_kdump"]["crash_in_scratch"] is True
    snap = snapshot(open_vmcore(result["vmcore"], lab_kernel.vmlinux), memory=False)
    memfds = snap.tables["memfds"]
    assert list(memfds["direction"].unique()) == ["incoming"] and sorted(memfds["token"]) == TOKENS
    assert memfds["retrieved"].all() and (memfds["size"] == MEMFD_SIZE).all()
    frames = np.load(Path(result["run_dir"]) / "guest" / FRAMES_AFTER)
    folios = snap.tables["memfd_folios"].sort_values(["token", "index"])
    for i, token in enumerate(TOKENS):
        assert folios[folios["token"] == token]["pfn"].tolist() == frames[i].tolist()
    assert store.get(result["record_id"]).status == "failed"
