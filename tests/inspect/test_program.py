"""Opening kernels: every error says what is wrong and is its own exception; the three ways of reading the lab VM
(QMP, guest RAM file, dumps) give the same answers."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import drgn
import pandas as pd
import pytest

from workbench.inspect import (
    DebugInfoNotFound,
    LiveKernelUnavailable,
    MissingKernelSupport,
    NotRoot,
    QmpBusy,
    TruncatedDump,
    UnreadableDump,
    VmlinuxMismatch,
    VmUnreachable,
    check_live_update_support,
    open_live,
    open_vm,
    open_vmcore,
    program_info,
)
from workbench.inspect import kho as kho_helpers
from workbench.inspect.program import KCORE, check_dump, elf_build_id, parse_vmcoreinfo, vmlinux_release

lab = pytest.mark.lab


# -- no VM needed -----------------------------------------------------------------------------------------------
def test_vmcoreinfo_parsing():
    info = parse_vmcoreinfo(b"OSRELEASE=7.2.13-lab\nBUILD-ID=abcd\nSYMBOL(init_uts_ns)=ffffffff81e5dec0\n\0junk")
    assert info == {"OSRELEASE": "7.2.13-lab", "BUILD-ID": "abcd", "SYMBOL(init_uts_ns)": "ffffffff81e5dec0"}


def test_build_id_of_an_elf_and_of_a_non_elf(tmp_path):
    build_id = elf_build_id(sys.executable)
    assert build_id is None or len(build_id) in (32, 40)
    not_elf = tmp_path / "x"
    not_elf.write_bytes(b"hello" * 20)
    with pytest.raises(ValueError, match="not an ELF"):
        elf_build_id(not_elf)


def test_release_from_the_linux_banner(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\0" * 100 + b"Linux version %s (%s)\0" + b"Linux version 7.2.13-lab (root@host) (gcc) #1\0")
    assert vmlinux_release(path) == "7.2.13-lab"
    path.write_bytes(b"no banner here")
    assert vmlinux_release(path) is None


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


def test_not_a_dump(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a kernel dump\n" * 100)
    with pytest.raises(UnreadableDump, match="not a kernel dump"):
        open_vmcore(path, None)


def _elf_core(pt_load_size: int, data: int) -> bytes:
    """A minimal ELF64 core: one PT_LOAD of ``pt_load_size`` bytes at file offset 0x1000, ``data`` of them
    present."""
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 6, 0x1000, 0, 0, pt_load_size, pt_load_size, 4096)
    return (ehdr + phdr).ljust(0x1000, b"\0") + bytes(data)


def test_truncated_elf_dump_is_detected_from_its_headers(tmp_path):
    whole = tmp_path / "whole.elf"
    whole.write_bytes(_elf_core(1 << 16, 1 << 16))
    assert check_dump(whole) == "elf"
    cut = tmp_path / "cut.elf"
    cut.write_bytes(_elf_core(1 << 16, 1000))
    with pytest.raises(TruncatedDump, match="truncated") as info:
        open_vmcore(cut, None)
    assert info.value.expected_size == 0x1000 + (1 << 16)
    assert info.value.actual_size == 0x1000 + 1000


def test_truncated_flattened_stream_is_detected(tmp_path):
    header = b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)
    records = struct.pack(">qq", 0, 8) + b"KDUMP   " + struct.pack(">qq", 4096, 4) + b"abcd"
    whole = tmp_path / "whole.flat"
    whole.write_bytes(header.ljust(4096, b"\0") + records + struct.pack(">qq", -1, -1))
    assert check_dump(whole) == "flattened"
    cut = tmp_path / "cut.flat"
    cut.write_bytes(whole.read_bytes()[:-20])
    with pytest.raises(TruncatedDump, match="flattened"):
        check_dump(cut)


@pytest.fixture
def fake_debug_info(tmp_path):
    """An object file with DWARF for a few kernel-ish globals and no KHO/LUO ones."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src = tmp_path / "fake.c"
    src.write_text("struct task_struct { int pid; };\nstruct task_struct init_task;\nunsigned long jiffies;\n")
    obj = tmp_path / "fake.o"
    subprocess.run(["gcc", "-g", "-c", str(src), "-o", str(obj)], check=True)
    return obj


def test_kernel_without_kho_or_luo_is_named(fake_debug_info):
    prog = drgn.Program(
        drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
    )
    prog.extra_module(str(fake_debug_info), create=True).try_file(str(fake_debug_info), force=True)
    prog.type("struct task_struct")  # the debug info is there...
    with pytest.raises(MissingKernelSupport) as info:
        check_live_update_support(prog)
    assert info.value.options == ["CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE"]
    assert "kho_out" in info.value.missing and "luo_session_global" in info.value.missing
    assert "CONFIG_KEXEC_HANDOVER and CONFIG_LIVEUPDATE" in str(info.value)
    with pytest.raises(MissingKernelSupport, match="CONFIG_KEXEC_HANDOVER"):
        kho_helpers.kho_enabled(prog)


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
def test_vmlinux_is_found_by_build_id_when_not_given(inspection):
    prog = open_vmcore(inspection.result["vmcores"]["preserve"])
    assert Path(program_info(prog)["vmlinux"]).name == "vmlinux"


@lab
def test_no_vmlinux_anywhere(inspection, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(DebugInfoNotFound, match="--vmlinux") as info:
        open_vmcore(inspection.result["vmcores"]["preserve"])
    assert info.value.build_id == inspection.snapshots["preserve"].source["build_id"]


@lab
def test_another_elf_is_not_the_vmlinux(inspection):
    with pytest.raises(VmlinuxMismatch, match="build id") as info:
        open_vmcore(inspection.result["vmcores"]["preserve"], sys.executable)
    assert info.value.expected_build_id == inspection.snapshots["preserve"].source["build_id"]
    assert info.value.actual_build_id != info.value.expected_build_id


@lab
def test_vmlinux_of_another_release_without_build_id_is_refused(inspection, tmp_path):
    fake = tmp_path / "vmlinux-6.1"
    ehdr = (
        b"\x7fELF"
        + bytes([2, 1, 1])
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    )
    fake.write_bytes(ehdr + b"Linux version 6.1.0-old (builder) (gcc) #1 SMP\0")
    assert elf_build_id(fake) is None
    with pytest.raises(VmlinuxMismatch, match="is release 6.1.0-old"):
        open_vmcore(inspection.result["vmcores"]["preserve"], fake)


@lab
def test_vmlinux_of_another_build_is_refused(inspection, lab_kernel, tmp_path):
    copy = tmp_path / "vmlinux"
    shutil.copyfile(lab_kernel.vmlinux, copy)
    build_id = bytes.fromhex(elf_build_id(copy))
    data = copy.read_bytes()
    at = data.find(build_id)
    assert at > 0
    with open(copy, "r+b") as f:  # same kernel, one bit of its build id different: another build as far as ids go
        f.seek(at)
        f.write(bytes([build_id[0] ^ 1]))
    with pytest.raises(VmlinuxMismatch, match="does not match"):
        open_vmcore(inspection.result["vmcores"]["preserve"], copy)


@lab
def test_vmlinux_without_dwarf(inspection, lab_kernel, tmp_path):
    stripped = tmp_path / "vmlinux.stripped"
    subprocess.run(["objcopy", "--strip-debug", str(lab_kernel.vmlinux), str(stripped)], check=True, timeout=600)
    assert elf_build_id(stripped) == elf_build_id(lab_kernel.vmlinux)
    with pytest.raises(DebugInfoNotFound, match="no DWARF"):
        open_vmcore(inspection.result["vmcores"]["preserve"], stripped)


@lab
@pytest.mark.parametrize("kind", ["elf", "kdump"])
def test_truncated_copy_of_a_real_dump(inspection, lab_kernel, tmp_path, kind):
    original = Path(inspection.result["vmcores"]["preserve"] if kind == "elf" else inspection.kdump)
    copy = tmp_path / original.name
    shutil.copyfile(original, copy)
    os.truncate(copy, original.stat().st_size * 3 // 4)
    with pytest.raises(TruncatedDump, match="truncated|cut off|past the end|before its end marker") as info:
        open_vmcore(copy, lab_kernel.vmlinux)
    assert info.value.actual_size == original.stat().st_size * 3 // 4


@lab
def test_real_dump_read_with_debug_info_lacking_kho(inspection, fake_debug_info):
    prog = drgn.Program()
    prog.set_core_dump(inspection.result["vmcores"]["preserve"])
    prog.create_loaded_modules()
    prog.main_module().try_file(str(fake_debug_info), force=True)
    with pytest.raises(MissingKernelSupport) as info:
        check_live_update_support(prog, ("kho", "luo", "memfd"))
    assert info.value.options == ["CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD"]


@lab
def test_open_vm_after_the_vm_is_gone(inspection):
    # the cycle has ended: its QMP socket was removed with the VM
    sock = inspection.snapshots["preserve"].source["path"]
    with pytest.raises(VmUnreachable):
        open_vm(sock, None)
