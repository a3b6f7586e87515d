"""Capturing a lab VM's physical memory at chosen moments, to decode the handover the real kernel wrote.

In Linux 7.2 the LUO sessions, their file lists and the FLB entries only exist in serialized form after
``liveupdate_reboot()`` has run inside ``kernel_kexec()``; a dump taken earlier shows the radix tree and the memfd
metadata but ``sessions_pa == 0``. The moment that shows the complete handover is the entry of
``machine_kexec()``: ``kernel_kexec()`` calls it after ``liveupdate_reboot()`` (sessions and FLBs serialized),
``kernel_restart_prepare()`` and ``machine_shutdown()`` (the other CPUs are stopped), and it is the last C
function before ``relocate_kernel`` jumps into the next kernel. Nothing changes the handover after that point.

:class:`KexecCapture` stops the guest there through QEMU's gdbstub (``-gdb unix:PATH,server=on,wait=off``, see
:func:`gdbstub_qemu_args`) with :class:`~workbench.lab.gdb_remote.GdbRemote`: it finds the kernel's KASLR slide
from the IDT (:func:`kernel_slide`), sets a breakpoint at the slid address of ``machine_kexec`` (read from
``vmlinux``'s symbol table), lets the guest run, and when the breakpoint hits copies guest RAM
(:func:`snapshot_ram_file` for a ``memory-backend-file``, else QMP ``dump-guest-memory``) and detaches, which lets
the kexec go on. :func:`snapshot_live` copies the RAM of a running guest briefly stopped through QMP (for the
pauses of a cycle).

Under TCG, QEMU implements gdbstub breakpoints (software and hardware alike) in its translator: guest memory is
never patched. Under KVM a hardware breakpoint is used, so that no ``int3`` is written into kernel text. The
breakpoint address is checked against the stopped CPU's ``rip``; the slide against three IDT gates.

The captures are decoded by :mod:`workbench.abi` and checked against its encoders by
:func:`workbench.abi.encoder_check.compare_with_encoders`.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workbench.abi.physmem import ElfVmcore, PhysicalMemory, RawRamFile
from workbench.elf import ElfFile
from workbench.lab.gdb_remote import GdbRemote, GdbRemoteError
from workbench.lab.qemu import QemuVM
from workbench.lab.qmp import QMPClient

__all__ = [
    "KEXEC_STOP_FUNCTION",
    "SLIDE_SYMBOLS",
    "kernel_slide",
    "gdbstub_qemu_args",
    "short_socket_dir",
    "snapshot_ram_file",
    "snapshot_live",
    "open_snapshot",
    "KexecSnapshot",
    "KexecCapture",
    "attach_gdbstub",
    "release_gdbstub",
]

KEXEC_STOP_FUNCTION = "machine_kexec"
# IDT vectors whose gates point at these entry stubs; each gives the same slide, which cross-checks it.
_IDT_PROBES = ((0, "asm_exc_divide_error"), (3, "asm_exc_int3"), (14, "asm_exc_page_fault"))
#: the symbols :func:`kernel_slide` needs
SLIDE_SYMBOLS = tuple(name for _, name in _IDT_PROBES)
_KASLR_ALIGN = 0x200000  # CONFIG_PHYSICAL_ALIGN: the virtual slide is a multiple of it too


# -- the kernel's slide ----------------------------------------------------------------------------------------
def kernel_slide(qmp: QMPClient, gdb: GdbRemote, symbols: dict[str, int]) -> int:
    """The running kernel's KASLR slide (0 without KASLR): the address of the IDT (from the monitor's ``info
    registers``) is read through the gdbstub and three of its gates are compared with the entry stubs' addresses
    in ``symbols`` (which must hold the names of ``_IDT_PROBES``). The guest must be stopped."""
    text = qmp.human_monitor("info registers")
    match = re.search(r"IDT=\s*([0-9a-fA-F]+)\s+([0-9a-fA-F]+)", text)
    if not match:
        raise GdbRemoteError(f"no IDT in the monitor's register dump: {text[:300]!r}")
    idt = int(match[1], 16)
    last = max(v for v, _ in _IDT_PROBES)
    raw = gdb.read_memory(idt, (last + 1) * 16)
    slides = set()
    for vector, name in _IDT_PROBES:
        low, _selector, _flags, middle, high, _reserved = struct.unpack_from("<HHHHII", raw, vector * 16)
        handler = low | middle << 16 | high << 32
        slides.add(handler - symbols[name])
    if len(slides) != 1:
        raise GdbRemoteError(f"IDT gates at {idt:#x} disagree about the kernel's slide: {sorted(slides)}")
    slide = slides.pop()
    if slide % _KASLR_ALIGN or abs(slide) >= 1 << 31:
        raise GdbRemoteError(f"implausible kernel slide {slide:#x} (IDT at {idt:#x}): is this the right vmlinux?")
    return slide


def gdbstub_qemu_args(socket_path: str | os.PathLike[str]) -> list[str]:
    """QEMU arguments opening its gdbstub on a unix socket without waiting for a client."""
    if len(str(socket_path)) > 100:
        raise ValueError(f"unix socket path {socket_path} is too long (at most 100 bytes)")
    return ["-gdb", f"unix:{socket_path},server=on,wait=off"]


# -- copying guest memory ----------------------------------------------------------------------------------------
def snapshot_ram_file(source: str | os.PathLike[str], dest: str | os.PathLike[str], chunk: int = 4 << 20) -> Path:
    """Copies a guest RAM file, leaving holes where a chunk is all zeros (the copy stays sparse)."""
    dest = Path(dest)
    size = os.stat(source).st_size
    with open(source, "rb") as src, open(dest, "wb") as out:
        buf = bytearray(chunk)
        view = memoryview(buf)
        pos = 0
        while pos < size:
            n = src.readinto(view[: min(chunk, size - pos)])
            if not n:
                raise OSError(f"{source} ended at {pos:#x} of {size:#x} bytes")
            if np.frombuffer(view[:n], dtype=np.uint64 if n % 8 == 0 else np.uint8).any():
                out.seek(pos)
                out.write(view[:n])
            pos += n
        out.truncate(size)
    return dest


def snapshot_live(vm: QemuVM, dest: str | os.PathLike[str], elf: str | os.PathLike[str] | None = None) -> Path:
    """A consistent copy of a running VM's RAM: the VM is stopped (QMP ``stop``) for the copy and continued.
    Copies the RAM file when the VM has one (``ram_file``), else writes an ELF vmcore (``dump-guest-memory``);
    ``elf`` also writes an ELF vmcore of the same moment there (with the guest's VMCOREINFO, for drgn)."""
    qmp = vm.qmp()
    qmp.execute("stop")
    try:
        path = _copy_memory(vm, Path(dest))
        if elf is not None:
            qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{elf}")
        return path
    finally:
        qmp.execute("cont")


def _copy_memory(vm: QemuVM, dest: Path) -> Path:
    ram = getattr(vm.config, "ram_file", None)
    if ram is not None:
        return snapshot_ram_file(ram, dest)
    vm.qmp().execute("dump-guest-memory", paging=False, protocol=f"file:{dest}")
    return dest


def open_snapshot(path: str | os.PathLike[str], memory_mb: int | None = None) -> PhysicalMemory:
    """A reader for a snapshot written here: an ELF vmcore, or a raw q35 RAM copy of ``memory_mb`` MiB (default:
    the file's size)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"\x7fELF":
        return ElfVmcore(path)
    return RawRamFile(path, ram_size=memory_mb << 20 if memory_mb else None)


# -- attaching to the gdbstub ------------------------------------------------------------------------------------
def attach_gdbstub(
    vm: QemuVM, gdb_socket: Path, vmlinux: str | os.PathLike[str], functions: list[str]
) -> tuple[GdbRemote, dict[str, int], int]:
    """Connects to the gdbstub of ``vm`` on ``gdb_socket`` (which stops the guest), reads the addresses of
    ``functions`` from ``vmlinux`` and finds the kernel's slide (:func:`kernel_slide`). Returns the connection (the
    guest stays stopped), the unslid addresses of ``functions`` and the slide; on failure the connection is
    released and the error raised (:class:`GdbRemoteError` naming what ``vmlinux`` lacks)."""
    names = [*functions, *SLIDE_SYMBOLS]
    with ElfFile(vmlinux) as elf:
        symbols = elf.symbols(names)
    missing = [n for n in names if n not in symbols]
    if missing:
        raise GdbRemoteError(f"{vmlinux} does not define {', '.join(missing)}: is it the booted kernel's vmlinux?")
    gdb = GdbRemote(gdb_socket, timeout=30.0)
    try:
        gdb.stop_reason()
        slide = kernel_slide(vm.qmp(), gdb, symbols)
    except BaseException:
        release_gdbstub(gdb)
        raise
    return gdb, {name: symbols[name] for name in functions}, slide


def release_gdbstub(gdb: GdbRemote) -> None:
    """Detaches (the guest runs on, its breakpoints removed) and closes, whatever state the connection is in."""
    with contextlib.suppress(Exception):
        gdb.detach()
    gdb.close()


# -- stopping at the kexec ---------------------------------------------------------------------------------------
@dataclass
class KexecSnapshot:
    """Guest memory as it was when the guest stopped at :attr:`function` (the handover complete)."""

    path: Path
    function: str
    address: int  # slid virtual address of the breakpoint
    slide: int
    rip: int
    stop_reply: str
    breakpoint_kind: str
    stopped_at: float  # host monotonic time of the stop
    held_s: float  # how long the guest was held stopped
    elf_path: Path | None = None

    def open(self, memory_mb: int | None = None) -> PhysicalMemory:
        """A reader of the copied memory (:func:`open_snapshot`; ``memory_mb``: the guest's RAM size)."""
        return open_snapshot(self.path, memory_mb)


@dataclass
class KexecCapture:
    """Stops a lab VM at ``machine_kexec`` and copies its memory there (see the module's documentation).

    Call :meth:`arm` while the guest is paused before the kexec (e.g. from a cycle's ``on_pause`` after
    ``preserve``): it connects to the gdbstub, sets the breakpoint and lets the guest run; the kexec itself stops
    it, a background thread copies guest RAM to ``dest`` (and, with ``elf``, also writes an ELF vmcore through
    QMP) and detaches, letting the kexec proceed. :meth:`result` waits for that and returns the
    :class:`KexecSnapshot` (or raises what went wrong). The breakpoint is always removed.
    """

    vm: QemuVM
    vmlinux: Path
    gdb_socket: Path
    dest: Path
    function: str = KEXEC_STOP_FUNCTION
    elf: bool = False
    timeout_s: float = 600.0
    hardware: bool = True
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _snapshot: KexecSnapshot | None = field(default=None, init=False, repr=False)
    _error: BaseException | None = field(default=None, init=False, repr=False)

    def arm(self) -> None:
        """Connects, finds the slide, sets the breakpoint and lets the guest run (it must be paused before the
        kexec, with the gdbstub open on ``gdb_socket``)."""
        if self._thread is not None:
            raise RuntimeError("this capture is already armed")
        gdb, symbols, slide = attach_gdbstub(self.vm, self.gdb_socket, self.vmlinux, [self.function])
        try:
            address = symbols[self.function] + slide
            kind = gdb.insert_breakpoint(address, hardware=self.hardware)
            gdb.resume()
        except BaseException:
            release_gdbstub(gdb)
            raise
        self._thread = threading.Thread(
            target=self._wait_and_copy, args=(gdb, address, slide, kind), daemon=True, name="kexec-capture"
        )
        self._thread.start()

    def _wait_and_copy(self, gdb: GdbRemote, address: int, slide: int, kind: str) -> None:
        detached = False
        try:
            reply = gdb.wait_stop(self.timeout_s)
            stopped = time.monotonic()
            rip = gdb.rip()
            if rip != address:
                raise GdbRemoteError(f"the guest stopped at {rip:#x} ({reply}), not at {self.function} ({address:#x})")
            gdb.remove_breakpoint(address, kind)
            path = _copy_memory(self.vm, self.dest)
            elf_path = None
            if self.elf:
                elf_path = self.dest.with_name(self.dest.name + ".elf")
                self.vm.qmp().execute("dump-guest-memory", paging=False, protocol=f"file:{elf_path}")
            gdb.detach()
            detached = True
            held = time.monotonic() - stopped
            self._snapshot = KexecSnapshot(
                path, self.function, address, slide, rip, reply, kind, stopped, held, elf_path
            )
        except BaseException as exc:  # handed to result()
            self._error = exc
        finally:
            if not detached:
                with contextlib.suppress(Exception):
                    gdb.detach()
            gdb.close()

    def result(self, timeout: float | None = None) -> KexecSnapshot:
        """The snapshot, once taken; raises the capture's error, or :class:`TimeoutError`."""
        if self._thread is None:
            raise RuntimeError("the capture was never armed")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the guest has not reached {self.function} yet")
        if self._error is not None:
            raise self._error
        assert self._snapshot is not None
        return self._snapshot

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()


def short_socket_dir(prefix: str = "wbgdb-") -> Path:
    """A fresh private folder with a path short enough for unix sockets."""
    return Path(tempfile.mkdtemp(prefix=prefix))
