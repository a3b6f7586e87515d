"""Opening kernels: every error says what is wrong and is its own exception; the three ways of reading the lab VM
(QMP, guest RAM file, dumps) give the same answers. Without a VM, QEMU's QMP monitor is served from a thread and
guest RAM is a file holding a VMCOREINFO."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.elf_builder import GNU_BUILD_ID, ElfSpec, Segment, build_elf, note
from tests.lab.fake_qemu import FakeQmp, QmpFailure, short_socket_path
from workbench.elf import PT_LOAD
from workbench.inspect import (
    LiveKernelUnavailable,
    NotRoot,
    QmpBusy,
    UnreadableDump,
    VmlinuxMismatch,
    VmUnreachable,
    open_live,
    open_vm,
    open_vmcore,
    program_info,
)
from workbench.inspect.program import KCORE
from workbench.inspect.vmlinux import elf_build_id

lab = pytest.mark.lab

BUILD_ID = "ab" * 20
VMCOREINFO = (
    f"OSRELEASE=7.2.13-lab\nBUILD-ID={BUILD_ID}\nPAGESIZE=4096\nKERNELOFFSET=0\n"
    "SYMBOL(swapper_pg_dir)=ffffffff82000000\nSYMBOL(init_uts_ns)=ffffffff82000000\n"
)


def _guest_ram() -> bytes:
    ram = bytearray(64 * 4096)
    ram[8192 : 8192 + len(VMCOREINFO)] = VMCOREINFO.encode()
    return bytes(ram)


@pytest.fixture
def other_vmlinux(tmp_path) -> Path:
    """A vmlinux of another build: opening stops at the build id check, after the kernel was identified."""
    path = tmp_path / "vmlinux"
    path.write_bytes(build_elf(ElfSpec(notes=note(b"GNU", GNU_BUILD_ID, b"\xcd" * 20))))
    return path


# -- the running kernel ----------------------------------------------------------------------------------------
def test_not_root_is_refused_before_touching_kcore(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    with pytest.raises(NotRoot, match="needs root") as info:
        open_live()
    assert isinstance(info.value, PermissionError)
    assert "sudo" in str(info.value)


def test_not_root_in_a_real_unprivileged_process():
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed")
    code = (
        "from workbench.inspect import open_live, NotRoot\n"
        "try:\n    open_live()\nexcept NotRoot as e:\n    print('NotRoot', e)\n"
    )
    proc = subprocess.run(
        [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    if proc.returncode and ("Permission denied" in proc.stderr or "No such file" in proc.stderr):
        pytest.skip(f"user nobody cannot run {sys.executable} here: {proc.stderr.strip()[-200:]}")
    assert proc.stdout.startswith("NotRoot"), proc.stderr


def test_live_kernel_without_kcore_says_so():
    if os.geteuid() != 0:
        pytest.skip("needs root to get past the root check")
    if KCORE.exists():
        pytest.skip("this machine has /proc/kcore")
    with pytest.raises(LiveKernelUnavailable, match="CONFIG_PROC_KCORE"):
        open_live()


# -- a QEMU guest ----------------------------------------------------------------------------------------------
def test_missing_qmp_socket(tmp_path):
    with pytest.raises(VmUnreachable, match="does not exist"):
        open_vm(tmp_path / "qmp", None)


def test_qmp_socket_nobody_listens_on(tmp_path):
    path = tmp_path / "qmp"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody accepts
    with pytest.raises(VmUnreachable, match="cannot connect"):
        open_vm(path, None)


def test_qmp_socket_held_by_another_client(tmp_path):
    path = tmp_path / "qmp"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)  # accepts into the backlog but never greets, like QEMU busy with another client
    try:
        with pytest.raises(QmpBusy, match="another client"):
            open_vm(path, None, timeout=0.5)
    finally:
        server.close()


def test_qemu_closing_the_socket_without_a_greeting():
    path = short_socket_path("qmp")
    with FakeQmp(path, hang_up=True), pytest.raises(VmUnreachable, match="without a greeting"):
        open_vm(path, None, timeout=2)


def test_an_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="method is auto, qmp or ram-file"):
        open_vm(tmp_path / "qmp", method="gdb")


def test_the_ram_file_found_over_qmp_is_read(tmp_path, other_vmlinux):
    ram = tmp_path / "guest-ram"
    ram.write_bytes(_guest_ram())

    def qom_get(args: dict) -> object:
        assert args["path"] == "/objects/ram0"
        return str(ram) if args["property"] == "mem-path" else len(_guest_ram())

    objects = [
        {"name": "pc.ram", "type": "child<memory-backend-ram>"},
        {"name": "ram0", "type": "child<memory-backend-file>"},
    ]
    path = short_socket_path("qmp")
    with (
        FakeQmp(path, {"qom-list": objects, "qom-get": qom_get}) as qemu,
        pytest.raises(VmlinuxMismatch, match="the VM with RAM file") as info,
    ):
        open_vm(path, other_vmlinux, method="ram-file", timeout=2)
    assert info.value.expected_build_id == BUILD_ID and info.value.release == "7.2.13-lab"
    assert qemu.commands == ["qmp_capabilities", "qom-list", "qom-get", "qom-get"]


def test_a_given_ram_file_needs_no_qmp_question(tmp_path, other_vmlinux):
    ram = tmp_path / "guest-ram"
    ram.write_bytes(_guest_ram())
    path = short_socket_path("qmp")
    with FakeQmp(path) as qemu, pytest.raises(VmlinuxMismatch):
        open_vm(path, other_vmlinux, ram_file=ram, method="ram-file", timeout=2)
    assert qemu.commands == ["qmp_capabilities"]


def test_a_ram_file_without_vmcoreinfo(tmp_path):
    ram = tmp_path / "guest-ram"
    ram.write_bytes(bytes(64 * 4096))
    path = short_socket_path("qmp")
    with FakeQmp(path), pytest.raises(VmUnreachable, match="no VMCOREINFO found in guest RAM"):
        open_vm(path, None, ram_file=ram, method="ram-file", timeout=2)


def test_a_vm_without_file_backed_ram():
    path = short_socket_path("qmp")
    with (
        FakeQmp(path, {"qom-list": [{"name": "pc.ram", "type": "child<memory-backend-ram>"}]}),
        pytest.raises(VmUnreachable, match="its RAM is not file-backed"),
    ):
        open_vm(path, None, method="ram-file", timeout=2)


def test_a_qmp_error_while_asking_for_the_ram_file():
    path = short_socket_path("qmp")
    with (
        FakeQmp(path, {"qom-list": QmpFailure("Device 'objects' not found")}),
        pytest.raises(VmUnreachable, match="QMP qom-list: Device 'objects' not found"),
    ):
        open_vm(path, None, method="ram-file", timeout=2)


# -- dumps -----------------------------------------------------------------------------------------------------
def test_an_elf_dump_without_vmcoreinfo_note_is_identified_from_its_memory(tmp_path, other_vmlinux):
    core = tmp_path / "vmcore"
    core.write_bytes(build_elf(ElfSpec(segments=[Segment(PT_LOAD, _guest_ram(), vaddr=0xFFFF888000000000)])))
    with pytest.raises(VmlinuxMismatch, match="the dump") as info:
        open_vmcore(core, other_vmlinux)
    assert info.value.expected_build_id == BUILD_ID


def test_an_elf_dump_without_any_vmcoreinfo(tmp_path):
    core = tmp_path / "vmcore"
    core.write_bytes(build_elf(ElfSpec(segments=[Segment(PT_LOAD, bytes(4096))])))
    with pytest.raises(UnreadableDump, match="has no VMCOREINFO note and none was found"):
        open_vmcore(core)


def test_a_missing_dump(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_vmcore(tmp_path / "vmcore")


# -- the lab VM and its dumps --------------------------------------------------------------------------------
def _comparable(snap) -> dict:
    return {"kho": snap.kho, "luo": snap.luo}


@lab
def test_qmp_reads_the_running_lab_kernel(inspection, lab_kernel):
    assert not inspection.errors, "\n".join(inspection.errors)
    source = inspection.snapshots["preserve"].source
    assert source["target"] == "qmp" and source["live"] is True
    assert source["release"] == lab_kernel.release
    assert source["build_id"] == elf_build_id(lab_kernel.vmlinux)
    assert source["vmlinux"] == str(lab_kernel.vmlinux)


@lab
def test_qmp_busy_while_the_lab_client_holds_the_socket(inspection):
    assert inspection.qmp_busy is not None and "release_qmp" in inspection.qmp_busy


@lab
@pytest.mark.parametrize("phase", ["prepare", "preserve", "restore"])
def test_guest_ram_file_gives_the_same_answer_as_qmp(inspection, phase):
    ram = inspection.ram_snapshots[phase]
    assert ram.source["target"] == "ram-file"
    assert _comparable(ram) == _comparable(inspection.snapshots[phase])
    pd.testing.assert_frame_equal(ram.tables["preserved"], inspection.snapshots[phase].tables["preserved"])


@lab
@pytest.mark.parametrize("kind", ["elf", "kdump"])
def test_dump_after_preserve_inspected_offline_matches_live(inspection, lab_kernel, kind):
    from workbench.inspect import snapshot

    path = inspection.result["vmcores"]["preserve"] if kind == "elf" else inspection.kdump
    prog = open_vmcore(path, lab_kernel.vmlinux)
    info = program_info(prog)
    assert info["target"] == "vmcore" and info["live"] is False
    assert info["format"] == ("elf" if kind == "elf" else "flattened")
    offline = snapshot(prog)
    live = inspection.snapshots["preserve"]
    assert offline.errors == {}
    assert _comparable(offline) == _comparable(live)
    for table in ("preserved", "memfd_folios", "scratch", "luo_summary", "memfds"):
        pd.testing.assert_frame_equal(offline.tables[table], live.tables[table], obj=table)


@lab
def test_open_vm_after_the_vm_is_gone(inspection):
    # the cycle has ended: its QMP socket was removed with the VM
    sock = inspection.snapshots["preserve"].source["path"]
    with pytest.raises(VmUnreachable):
        open_vm(sock, None)
