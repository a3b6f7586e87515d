"""Debug info: a kernel built without KHO or LUO is named as such; the vmlinux is found by build id, and one of
another build, another release or without DWARF is refused before drgn loads it."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import drgn
import pytest

from tests.elf_builder import GNU_BUILD_ID, ElfSpec, build_elf, note
from workbench.inspect import (
    DebugInfoNotFound,
    MissingKernelSupport,
    VmlinuxMismatch,
    check_live_update_support,
    open_vmcore,
    program_info,
)
from workbench.inspect import kho as kho_helpers
from workbench.inspect.debug_info import REQUIREMENTS, load_debug_info
from workbench.inspect.vmlinux import elf_build_id

lab = pytest.mark.lab


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


def _kernel_program(build_id: str) -> drgn.Program:
    """A Linux kernel program (no debug info) whose VMCOREINFO gives ``build_id`` and release 7.2.13-lab."""
    prog = drgn.Program(
        drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
    )
    ram = bytes(1 << 16)
    prog.add_memory_segment(0, len(ram), lambda address, count, offset, physical: ram[offset : offset + count], True)
    vmcoreinfo = (
        f"OSRELEASE=7.2.13-lab\nBUILD-ID={build_id}\nPAGESIZE=4096\nKERNELOFFSET=0\n"
        "SYMBOL(swapper_pg_dir)=ffffffff82000000\n"
    )
    prog.set_linux_kernel_custom(vmcoreinfo.encode(), False)
    return prog


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
    assert set(REQUIREMENTS) == {"kho", "luo", "memfd"}


def test_a_vmlinux_of_another_build_is_refused_before_loading(tmp_path):
    prog = _kernel_program("aa" * 20)
    other = tmp_path / "vmlinux"
    other.write_bytes(build_elf(ElfSpec(notes=note(b"GNU", GNU_BUILD_ID, b"\xbb" * 20))))
    source = {"target": "vmcore", "path": "x", "live": False}
    with pytest.raises(VmlinuxMismatch, match="its build id is " + "bb" * 20) as info:
        load_debug_info(prog, other, "the dump x", source, ())
    assert (info.value.expected_build_id, info.value.actual_build_id) == ("aa" * 20, "bb" * 20)
    assert program_info(prog)["description"] == "the dump x"


def test_a_vmlinux_that_is_not_elf(tmp_path):
    prog = _kernel_program("aa" * 20)
    text = tmp_path / "vmlinux"
    text.write_text("not a vmlinux")
    with pytest.raises(DebugInfoNotFound, match="not an ELF file"):
        load_debug_info(prog, text, "the dump x", {}, ())
    with pytest.raises(DebugInfoNotFound, match="does not exist"):
        load_debug_info(prog, tmp_path / "missing", "the dump x", {}, ())


def test_no_vmlinux_found(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(DebugInfoNotFound, match="--vmlinux") as info:
        load_debug_info(_kernel_program("cc" * 20), None, "the dump x", {}, ())
    assert info.value.build_id == "cc" * 20


# -- the lab VM's dumps ----------------------------------------------------------------------------------------
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
def test_real_dump_read_with_debug_info_lacking_kho(inspection, fake_debug_info):
    prog = drgn.Program()
    prog.set_core_dump(inspection.result["vmcores"]["preserve"])
    prog.create_loaded_modules()
    prog.main_module().try_file(str(fake_debug_info), force=True)
    with pytest.raises(MissingKernelSupport) as info:
        check_live_update_support(prog, ("kho", "luo", "memfd"))
    assert info.value.options == ["CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD"]
