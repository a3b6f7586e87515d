"""Opening a kernel for inspection with drgn: the running kernel, a running lab VM, or a crash dump.

Three entry points return a ``drgn.Program`` with the kernel's debug info loaded and checked:

* :func:`open_live` reads the running kernel through ``/proc/kcore`` (root only);
* :func:`open_vm` reads a running QEMU guest from the host without stopping it: drgn's QMP transport first
  (needs ``-device vmcoreinfo`` and ``CONFIG_FW_CFG_SYSFS`` in the guest), else the guest's RAM file
  (``memory-backend-file``) with the VMCOREINFO found by scanning guest RAM;
* :func:`open_vmcore` reads a dump: ELF (QEMU ``dump-guest-memory``), kdump-compressed or its flattened form.

Before anything is loaded the vmlinux's GNU build id is compared with the ``BUILD-ID`` (and the release with the
``OSRELEASE``) in the kernel's VMCOREINFO (:mod:`~workbench.inspect.debug_info`); dumps are checked against their
own headers for truncation (:mod:`~workbench.inspect.vmcore`); and, unless ``require=()``, the KHO and LUO globals
are looked up so that a kernel built without them fails here, by name. How a program was opened is kept in
``prog.cache`` (see :func:`~workbench.inspect.debug_info.program_info`).

QEMU's QMP socket serves one client at a time. While a program opened by :func:`open_vm` over QMP is alive it
holds the socket; drop every reference to it (and to its objects) before anyone else needs QMP.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import drgn

from workbench.inspect.debug_info import load_debug_info
from workbench.inspect.errors import LiveKernelUnavailable, NotRoot, QmpBusy, UnreadableDump, VmUnreachable
from workbench.inspect.vmcore import check_dump, kdump_for_drgn
from workbench.inspect.vmcoreinfo import running_vmcoreinfo, vmcoreinfo_candidates
from workbench.lab.errors import QMPError
from workbench.lab.qmp import QMPClient

if TYPE_CHECKING:
    from workbench.abi.physmem import MemoryRange

__all__ = ["open_live", "open_vm", "open_vmcore", "KCORE"]

KCORE = Path("/proc/kcore")


# -- the running kernel ----------------------------------------------------------------------------------------
def open_live(vmlinux: str | os.PathLike[str] | None = None, *, require: Sequence[str] = ("kho", "luo")):
    """The running kernel, through ``/proc/kcore``.

    :param vmlinux: its vmlinux; by default searched by build id in the standard debug-info locations and the
        lab kernel cache
    :param require: features whose globals must exist (:data:`~workbench.inspect.debug_info.REQUIREMENTS`); ``()`` to
        skip the check
    :raises NotRoot: not running as root
    :raises LiveKernelUnavailable: no ``/proc/kcore`` (``CONFIG_PROC_KCORE`` off, or a container hiding it)
    """
    if os.geteuid() != 0:
        raise NotRoot(
            f"reading the running kernel through {KCORE} needs root (uid {os.geteuid()} here): run as root, e.g. "
            "`sudo workbench inspect --live`"
        )
    if not KCORE.exists():
        raise LiveKernelUnavailable(
            f"{KCORE} does not exist on this system: the running kernel was built without CONFIG_PROC_KCORE or "
            "/proc is restricted (container). Inspect a VM (--qmp) or a dump (--vmcore) instead"
        )
    prog = drgn.Program()
    try:
        prog.set_kernel()
    except PermissionError as exc:
        raise NotRoot(f"{KCORE}: {exc}: run as root with CAP_SYS_RAWIO") from exc
    except (OSError, ValueError) as exc:
        raise LiveKernelUnavailable(f"cannot read the running kernel through {KCORE}: {exc}") from exc
    return load_debug_info(
        prog, vmlinux, "the running kernel", {"target": "kcore", "path": str(KCORE), "live": True}, require
    )


# -- a QEMU guest ----------------------------------------------------------------------------------------------
def _qmp_session(path: Path, timeout: float) -> QMPClient:
    """A QMP session with the QEMU behind ``path``; its failures as :class:`VmUnreachable` (:class:`QmpBusy` when
    QEMU accepts the connection but another client holds QMP)."""
    if not path.exists():
        raise VmUnreachable(f"QMP socket {path} does not exist: is the VM running (vm.qmp_sock)?")
    try:
        return QMPClient(path, timeout)
    except TimeoutError:
        raise QmpBusy(
            f"QMP socket {path} accepted the connection but sent no greeting within {timeout:.0f} s: another client "
            "holds it (QEMU serves one at a time). Close that client first, e.g. vm.release_qmp() in an on_pause "
            "callback, and drop other drgn programs opened on this VM"
        ) from None
    except QMPError as exc:
        raise VmUnreachable(str(exc)) from exc
    except OSError as exc:
        raise VmUnreachable(f"cannot connect to QMP socket {path}: {exc} (has QEMU exited?)") from exc


def _qmp_ram_file(qmp: QMPClient) -> tuple[Path, int] | None:
    """The ``mem-path`` and size of the guest's file-backed RAM, if it has one."""
    for obj in qmp.execute("qom-list", path="/objects"):
        if obj.get("type") != "child<memory-backend-file>":
            continue
        where = f"/objects/{obj['name']}"
        mem_path = qmp.execute("qom-get", path=where, property="mem-path")
        size = qmp.execute("qom-get", path=where, property="size")
        return Path(mem_path), int(size)
    return None


def _physical_program(mm: mmap.mmap, ranges: Sequence[MemoryRange], text: str, is_live: bool) -> drgn.Program:
    """A drgn program over guest RAM mapped in ``mm`` (``ranges`` say where each part is in physical memory),
    for the kernel whose VMCOREINFO is ``text``."""
    prog = drgn.Program(
        drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
    )
    view = memoryview(mm)
    for r in ranges:

        def read(address: int, count: int, offset: int, physical: bool, _base=r.file_offset) -> bytes:
            return bytes(view[_base + offset : _base + offset + count])

        prog.add_memory_segment(r.phys_start, r.size, read, physical=True)
    prog.set_linux_kernel_custom(text.encode(), is_live)
    prog.cache["workbench.inspect.mapping"] = (mm, view)  # keep the mapping alive with the program
    return prog


def _open_ram_file(ram_file: Path, ram_size: int | None, qmp: QMPClient | None) -> tuple[drgn.Program, str]:
    """A program over the guest RAM file (``ram_size`` bytes of q35 RAM, default: the file's size) for the kernel
    running in it, and why its VMCOREINFO was chosen."""
    # imported here: workbench.abi compiles its numba kernels on import, which an unprivileged open_live() and
    # every CLI start would pay for
    from workbench.abi.physmem import q35_ram_ranges

    size = ram_size or ram_file.stat().st_size
    ranges = q35_ram_ranges(size)
    with open(ram_file, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    candidates = vmcoreinfo_candidates(mm)
    if not candidates:
        mm.close()
        raise VmUnreachable(f"no VMCOREINFO found in guest RAM {ram_file}: has the guest kernel booted?")
    text, why = running_vmcoreinfo(candidates, qmp, mm, ranges)
    return _physical_program(mm, ranges, text, is_live=True), why


def open_vm(
    qmp_socket: str | os.PathLike[str] | Any,
    vmlinux: str | os.PathLike[str] | None = None,
    *,
    ram_file: str | os.PathLike[str] | None = None,
    method: str = "auto",
    require: Sequence[str] = ("kho", "luo"),
    timeout: float = 10.0,
) -> drgn.Program:
    """A running QEMU guest, read live from the host without stopping it.

    :param qmp_socket: QEMU's QMP unix socket, or a :class:`workbench.lab.qemu.QemuVM` (its socket is used and
        its own QMP client released first, since QEMU serves one QMP client at a time)
    :param vmlinux: the guest kernel's vmlinux (default: searched by build id, see
        :func:`~workbench.inspect.vmlinux.find_vmlinux`)
    :param ram_file: the guest's RAM file (``memory-backend-file``) for the fallback; default: asked over QMP
    :param method: ``qmp`` (drgn's QMP transport), ``ram-file`` (guest RAM file + VMCOREINFO scanned in it), or
        ``auto``: QMP, then the RAM file when drgn cannot identify the kernel over QMP
    :raises VmUnreachable: no socket, QEMU gone, no usable transport; :class:`QmpBusy` when another client holds
        the socket
    """
    if hasattr(qmp_socket, "qmp_sock"):
        vm = qmp_socket
        if hasattr(vm, "release_qmp"):
            vm.release_qmp()
        qmp_socket = vm.qmp_sock
        if ram_file is None and getattr(getattr(vm, "config", None), "ram_file", None) is not None:
            ram_file = vm.config.ram_file
    path = Path(qmp_socket)
    if method not in ("auto", "qmp", "ram-file"):
        raise ValueError(f"method is auto, qmp or ram-file, not {method!r}")
    notes: list[str] = []
    if method in ("auto", "qmp"):
        _qmp_session(path, timeout).close()
        prog = drgn.Program()
        try:
            prog.set_qemu_qmp(str(path))
        except (OSError, ValueError, drgn.FaultError) as exc:
            if method == "qmp":
                raise VmUnreachable(f"drgn could not attach to QMP socket {path}: {exc}") from exc
            notes.append(f"drgn's QMP transport failed: {exc}")
        else:
            if prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
                source = {"target": "qmp", "path": str(path), "live": True, "notes": notes}
                return load_debug_info(prog, vmlinux, f"the VM behind {path}", source, require)
            notes.append(
                "drgn's QMP transport did not identify a Linux kernel: QEMU needs -device vmcoreinfo and the guest "
                "CONFIG_FW_CFG_SYSFS"
            )
            if method == "qmp":
                raise VmUnreachable(f"{path}: {notes[-1]}")
        del prog
        gc.collect()  # drgn keeps the QMP connection until the program is freed
        time.sleep(0.1)
    qmp: QMPClient | None = None
    try:
        with contextlib.suppress(VmUnreachable):
            qmp = _qmp_session(path, timeout)
        ram_size = None
        if ram_file is None and qmp is not None:
            try:
                found = _qmp_ram_file(qmp)
            except QMPError as exc:
                raise VmUnreachable(str(exc)) from exc
            if found is not None:
                ram_file, ram_size = found
        if ram_file is None:
            raise VmUnreachable(
                f"cannot read the VM behind {path}: {'; '.join(notes) or 'QMP unusable'}; and its RAM is not "
                "file-backed (start QEMU with -object memory-backend-file,share=on, e.g. QemuTarget(ram_file=True))"
            )
        prog, why = _open_ram_file(Path(ram_file), ram_size, qmp)
    finally:
        if qmp is not None:
            qmp.close()
    notes.append(why)
    source = {"target": "ram-file", "path": str(ram_file), "qmp": str(path), "live": True, "notes": notes}
    return load_debug_info(prog, vmlinux, f"the VM with RAM file {ram_file}", source, require)


# -- dumps -----------------------------------------------------------------------------------------------------
def open_vmcore(
    path: str | os.PathLike[str],
    vmlinux: str | os.PathLike[str] | None = None,
    *,
    require: Sequence[str] = ("kho", "luo"),
) -> drgn.Program:
    """A kernel crash dump: ELF (QEMU ``dump-guest-memory``, ``/proc/vmcore``), kdump-compressed, or the flattened
    makedumpfile stream QEMU writes for ``kdump-*`` formats. QEMU's kdump files (flattened, with an empty
    utsname that libkdumpfile rejects) are read through a repaired copy made once and cached beside them.

    :param path: the dump
    :param vmlinux: its kernel's vmlinux (default: searched by the dump's build id)
    :raises TruncatedDump: the file is shorter than its headers say
    :raises UnreadableDump: not a dump drgn can read
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vmcore {path} does not exist")
    fmt = check_dump(path)
    target = kdump_for_drgn(path, fmt) if fmt in ("kdump", "flattened") else path
    prog = drgn.Program()
    try:
        prog.set_core_dump(str(target))
    except (OSError, ValueError, drgn.FaultError) as exc:
        raise UnreadableDump(f"drgn cannot read {path} as a kernel dump ({fmt}): {exc}") from exc
    notes = []
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        if fmt != "elf":
            raise UnreadableDump(f"{path} has no VMCOREINFO: drgn cannot tell which kernel it is")
        from workbench.abi.physmem import ElfVmcore

        elf = ElfVmcore(path)
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        candidates = vmcoreinfo_candidates(mm)
        if not candidates:
            raise UnreadableDump(
                f"{path} has no VMCOREINFO note and none was found in its memory: dump with QEMU's "
                "-device vmcoreinfo and a guest kernel with CONFIG_FW_CFG_SYSFS"
            )
        text, why = running_vmcoreinfo(candidates, None, mm, elf.ranges)
        prog = _physical_program(mm, elf.ranges, text, is_live=False)
        elf.close()
        notes.append(f"no VMCOREINFO note in the dump; {why}")
    source = {"target": "vmcore", "path": str(path), "format": fmt, "live": False, "notes": notes}
    if target != path:
        source["reassembled"] = str(target)
    return load_debug_info(prog, vmlinux, f"the dump {path}", source, require)
