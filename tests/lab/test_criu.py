"""A whole process kept alive across the kexec with CRIU and LUO (``workload="criu"``), and its failure paths.

The tests marked ``lab`` boot the lab kernel in QEMU; the others check the host-side pieces with fake CRIU binaries
and synthetic serial marks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.lab.criu import build_nft_shim, build_workload, downtime_breakdown
from workbench.lab.criu_agent import CriuUnavailable, check_criu, parse_version, seize_offset
from workbench.lab.cycle import CycleFailed, CycleParams, run_cycle

SMALL = 16 << 20


# -- host side, no VM ----------------------------------------------------------------------------------------------
def _fake_criu(tmp_path: Path, version: str, check_output: str = "Looks good.", check_rc: int = 0) -> str:
    script = tmp_path / "criu"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "Version: {version}"; exit 0; fi\n'
        f"cat <<'EOF' >&2\n{check_output}\nEOF\n"
        f"exit {check_rc}\n"
    )
    script.chmod(0o755)
    return str(script)


def test_versions_parse():
    assert parse_version("Version: 3.17.1\n") == (3, 17, 1)
    assert parse_version("Version: 4.1\nGitID: v4.1") == (4, 1)
    with pytest.raises(ValueError):
        parse_version("criu: command not found")


def test_missing_criu_is_a_clear_error(tmp_path):
    with pytest.raises(CriuUnavailable, match="CRIU not found at .*install-system-deps"):
        check_criu(str(tmp_path / "nowhere" / "criu"))


def test_old_criu_is_refused(tmp_path):
    with pytest.raises(CriuUnavailable, match=r"CRIU 3\.10 at .* is too old: the workbench needs CRIU 3\.17"):
        check_criu(_fake_criu(tmp_path, "3.10"))


def test_criu_check_failure_names_the_cause_and_the_way_out(tmp_path):
    vdso = (
        "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n"
        "Error (criu/kerndat.c:1615): kerndat_vdso_fill_symtable failed when initializing kerndat.\n"
        "Error (criu/crtools.c:260): Could not initialize kernel features detection."
    )
    with pytest.raises(CriuUnavailable, match=r"Unexpected rt vDSO area bounds.*vvar_vclock.*vdso=0"):
        check_criu(_fake_criu(tmp_path, "3.17.1", vdso, 1))
    # a check that fails without stopping CRIU's kernel probe is recorded, not fatal
    info = check_criu(_fake_criu(tmp_path, "3.17.1", "Error (criu/tun.c:85): tun: Unable to create tun", 1))
    assert info["version"] == "3.17.1" and info["check_rc"] == 1 and "tun" in info["check_errors"][0]


def test_seize_offset_comes_from_criu_log():
    log = '(00.088840) cg-prop: Parsing controller "freezer"\n(00.098664) Seized task 30001, state 1\n'
    assert seize_offset(log) == pytest.approx(0.098664)
    assert seize_offset("(00.1) nothing here\n") is None


def test_downtime_adds_up_from_freeze_to_first_instruction():
    marks = [
        ("phase-begin", {"phase": "dump"}, 100.0),
        ("phase-end", {"phase": "dump"}, 101.0),
        ("phase-end", {"phase": "convert"}, 101.1),
        ("phase-end", {"phase": "preserve"}, 101.2),
        ("kexec", {}, 101.5),
        ("agent-start", {"phase": "restore"}, 130.0),
        ("phase-end", {"phase": "retrieve"}, 130.2),
        ("phase-end", {"phase": "images"}, 130.3),
        ("phase-end", {"phase": "criu-init"}, 133.0),
        ("workload-resumed", {"counter": 5}, 134.0),
        ("phase-end", {"phase": "restore"}, 134.1),
    ]
    out = downtime_breakdown(marks, {"criu": {"seize_offset_s": 0.1}})
    assert out["downtime_s"] == pytest.approx(33.9)
    assert sum(out["steps"].values()) == pytest.approx(out["downtime_s"])
    assert out["steps"]["blackout"] == pytest.approx(28.5)
    assert out["steps"]["restore"] == pytest.approx(1.0)
    assert out["criu_exit_after_resume_s"] == pytest.approx(0.1)


def test_criu_parameters_are_checked_before_boot():
    with pytest.raises(ValueError, match="multiple of the 4096-byte page size"):
        CycleParams(workload="criu", anon_size=1000).validate()
    with pytest.raises(ValueError, match="images is one of direct, copy"):
        CycleParams(workload="criu", images="stream").validate()
    with pytest.raises(ValueError, match="memfd or criu"):
        CycleParams(workload="vm").validate()
    assert CycleParams(workload="criu", anon_size=1 << 30).resolved_memory_mb() >= 2048 + 768


def test_workload_and_shim_build_on_the_host():
    binary, shim = build_workload(), build_nft_shim()
    assert binary.exists() and shim.exists()
    symbols = subprocess.run(["nm", "-D", str(shim)], capture_output=True, text=True).stdout
    assert "nft_run_cmd_from_buffer@@LIBNFTABLES_1" in symbols


# -- in the lab VM -------------------------------------------------------------------------------------------------
def _failed_before_kexec(exc: CycleFailed) -> bool:
    return "WB-MARK kexec" not in exc.serial_log.read_text()


def _kernel_died(serial_log) -> bool:
    """A guest kernel that panicked while booting (under a loaded TCG host the lab kernel occasionally dies with
    ``Oops: int3`` in static-key patching): nothing these tests are about, so they run the cycle once more."""
    text = Path(serial_log).read_text(errors="replace") if serial_log and Path(serial_log).exists() else ""
    return (
        "Kernel panic" in text
        and "WB-MARK agent-start" not in text.rsplit("Kernel panic", 1)[0].rsplit("Linux version", 1)[-1]
    )


def _cycle(params: CycleParams, lab_kernel, store) -> dict:
    try:
        return run_cycle(params, kernel=lab_kernel, store=store)
    except CycleFailed as exc:
        if not _kernel_died(exc.serial_log):
            raise
    return run_cycle(params, kernel=lab_kernel, store=store)


@pytest.mark.lab
def test_process_survives_kexec_with_identical_memory(lab_kernel, tmp_path):
    data = tmp_path / "data"
    argv = [sys.executable, "-m", "workbench.cli", "cycle", "--workload", "criu", "--anon", "16M"]
    argv += ["--memfd-region", "8M", "--json", "--data", str(data)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 and proc.stdout.startswith("{") and _kernel_died(json.loads(proc.stdout)["serial_log"]):
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


@pytest.mark.lab
def test_criu_missing_fails_before_the_workload_starts(lab_kernel, store):
    params = CycleParams(workload="criu", anon_size=SMALL, criu="/nonexistent/criu")
    with pytest.raises(CycleFailed) as info:
        _cycle(params, lab_kernel, store)
    assert info.value.phase == "prepare"
    assert "CRIU not found at /nonexistent/criu" in str(info.value)
    assert _failed_before_kexec(info.value)
    assert store.get(info.value.record_id).status == "failed"


@pytest.mark.lab
def test_criu_too_old_is_refused(lab_kernel, store):
    params = CycleParams(workload="criu", anon_size=SMALL, faults={"criu_min_version": "99.0"})
    with pytest.raises(CycleFailed) as info:
        _cycle(params, lab_kernel, store)
    assert info.value.phase == "prepare"
    assert "CRIU 3.17.1 at /usr/sbin/criu is too old: the workbench needs CRIU 99.0" in str(info.value)
    assert _failed_before_kexec(info.value)


@pytest.mark.lab
def test_criu_317_cannot_probe_linux_72_with_its_vdso(lab_kernel, store):
    """What happens without the ``vdso=0`` the CRIU cycle adds: CRIU 3.17 stops at the [vvar_vclock] mapping."""
    params = CycleParams(workload="criu", anon_size=SMALL, kernel_args="vdso=1")
    with pytest.raises(CycleFailed) as info:
        _cycle(params, lab_kernel, store)
    assert info.value.phase == "prepare"
    message = str(info.value)
    assert "Unexpected rt vDSO area bounds" in message and "vdso=0" in message
    assert _failed_before_kexec(info.value)


@pytest.mark.lab
def test_failed_dump_leaves_the_process_running_and_nothing_kexecd(lab_kernel, store):
    """The workload holds a pidfd, which CRIU 3.17 cannot dump: CRIU freezes it, fails, and thaws it."""
    params = CycleParams(workload="criu", anon_size=SMALL, faults={"undumpable": True})
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


@pytest.mark.lab
def test_failed_restore_says_where_and_keeps_the_images(lab_kernel, store):
    """Another process holds the workload's pid in the next kernel when CRIU restores it."""
    params = CycleParams(workload="criu", anon_size=SMALL, faults={"pid_taken": True})
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
