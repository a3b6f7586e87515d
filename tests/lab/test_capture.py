"""Capturing guest memory, without a VM: QEMU's QMP monitor and gdbstub are served from threads, guest RAM is a
file, the vmlinux an ELF file with the symbols the capture looks up. (The capture of a real kexec is proven in
tests/abi/test_real_kernel.py, which needs the lab.)"""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.elf_builder import ElfSpec, Segment, build_elf
from tests.lab.fake_qemu import FakeGdbStub, FakeQmp, short_socket_path
from workbench.abi.physmem import ElfVmcore, RawRamFile
from workbench.elf import PT_LOAD
from workbench.lab.capture import (
    KexecCapture,
    gdbstub_qemu_args,
    kernel_slide,
    open_snapshot,
    short_socket_dir,
    snapshot_live,
    snapshot_ram_file,
)
from workbench.lab.gdb_remote import GdbRemoteError
from workbench.lab.qmp import QMPClient

IDT = 0xFFFFFE0000000000
SLIDE = 0x1E00000
SYMBOLS = {
    "machine_kexec": 0xFFFFFFFF81070000,
    "asm_exc_divide_error": 0xFFFFFFFF81C00010,
    "asm_exc_int3": 0xFFFFFFFF81C00200,
    "asm_exc_page_fault": 0xFFFFFFFF81C00A00,
}
REGISTERS = f"RAX=0000000000000000\nGDT=     fffffe0000001000 0000007f\nIDT=     {IDT:016x} 00000fff\nCR0=80050033\n"


def idt_bytes(slide: int, symbols: dict[str, int] = SYMBOLS) -> bytes:
    """The first 15 gates of an x86_64 IDT whose vectors 0, 3 and 14 point at the slid entry stubs."""
    table = bytearray(15 * 16)
    for vector, name in ((0, "asm_exc_divide_error"), (3, "asm_exc_int3"), (14, "asm_exc_page_fault")):
        handler = symbols[name] + slide
        struct.pack_into(
            "<HHHHII", table, vector * 16, handler & 0xFFFF, 0x10, 0x8E00, handler >> 16 & 0xFFFF, handler >> 32, 0
        )
    return bytes(table)


class FakeMonitor:
    """The part of a QMP session :func:`kernel_slide` uses."""

    def __init__(self, text: str = REGISTERS):
        self.text = text

    def human_monitor(self, command_line: str) -> str:
        assert command_line == "info registers"
        return self.text


class FakeMemory:
    """The part of a gdbstub session :func:`kernel_slide` uses: guest virtual memory holding the IDT."""

    def __init__(self, table: bytes):
        self.table = table

    def read_memory(self, addr: int, size: int) -> bytes:
        assert addr == IDT
        return self.table[:size]


class FakeVM:
    """The part of a :class:`~workbench.lab.qemu.QemuVM` the capture uses: its RAM file and one QMP session."""

    def __init__(self, qmp_socket: Path, ram_file: Path | None):
        self.config = SimpleNamespace(ram_file=ram_file)
        self._qmp_socket = qmp_socket
        self._qmp: QMPClient | None = None

    def qmp(self) -> QMPClient:
        if self._qmp is None:
            self._qmp = QMPClient(self._qmp_socket, timeout=5)
        return self._qmp

    def close(self) -> None:
        if self._qmp is not None:
            self._qmp.close()


def _dump_guest_memory(args: dict) -> dict:
    segment = Segment(PT_LOAD, b"dumped by QEMU".ljust(4096, b"\0"))
    Path(args["protocol"].removeprefix("file:")).write_bytes(build_elf(ElfSpec(segments=[segment])))
    return {}


@pytest.fixture
def ram_file(tmp_path) -> Path:
    """4 MiB of guest RAM: a marker in the first page, zeros, the end filled."""
    path = tmp_path / "guest-ram"
    data = np.zeros(4 << 20, dtype=np.uint8)
    data[:16] = np.frombuffer(b"guest RAM start!", dtype=np.uint8)
    data[-(1 << 20) :] = 0x5A
    path.write_bytes(data.tobytes())
    return path


# -- the kernel's slide -----------------------------------------------------------------------------------------
def test_kernel_slide_from_three_idt_gates():
    assert kernel_slide(FakeMonitor(), FakeMemory(idt_bytes(SLIDE)), SYMBOLS) == SLIDE
    assert kernel_slide(FakeMonitor(), FakeMemory(idt_bytes(0)), SYMBOLS) == 0


def test_gates_that_disagree_about_the_slide():
    table = bytearray(idt_bytes(SLIDE))
    table[3 * 16 : 4 * 16] = idt_bytes(SLIDE + 0x200000)[3 * 16 : 4 * 16]
    with pytest.raises(GdbRemoteError, match="disagree"):
        kernel_slide(FakeMonitor(), FakeMemory(bytes(table)), SYMBOLS)


def test_an_implausible_slide_means_another_vmlinux():
    with pytest.raises(GdbRemoteError, match="implausible kernel slide 0x1000"):
        kernel_slide(FakeMonitor(), FakeMemory(idt_bytes(0x1000)), SYMBOLS)


def test_no_idt_in_the_register_dump():
    with pytest.raises(GdbRemoteError, match="no IDT"):
        kernel_slide(FakeMonitor("RAX=0\n"), FakeMemory(b""), SYMBOLS)


# -- QEMU arguments and socket folders ---------------------------------------------------------------------------
def test_gdbstub_arguments():
    assert gdbstub_qemu_args("/tmp/wbgdb-x/gdb") == ["-gdb", "unix:/tmp/wbgdb-x/gdb,server=on,wait=off"]
    with pytest.raises(ValueError, match="too long"):
        gdbstub_qemu_args("/" + "x" * 120)


def test_short_socket_dir_is_fresh_and_private():
    a, b = short_socket_dir(), short_socket_dir()
    try:
        assert a != b and a.is_dir() and len(str(a / "gdb")) < 100
        assert a.stat().st_mode & 0o077 == 0
    finally:
        a.rmdir()
        b.rmdir()


# -- copying guest memory ----------------------------------------------------------------------------------------
def test_a_ram_file_copy_is_equal_and_sparse(ram_file, tmp_path):
    copy = snapshot_ram_file(ram_file, tmp_path / "copy", chunk=1 << 20)
    assert copy.read_bytes() == ram_file.read_bytes()
    probe = tmp_path / "hole"
    with open(probe, "wb") as f:
        f.truncate(1 << 20)
    if probe.stat().st_blocks:
        pytest.skip("this filesystem has no holes: sparseness cannot be checked")
    # the 2 MiB of zeros between the first MiB and the last are not written
    assert copy.stat().st_blocks * 512 <= 2 << 20


def test_snapshots_open_as_raw_ram_or_elf(ram_file, tmp_path):
    with open_snapshot(ram_file, memory_mb=4) as mem:
        assert isinstance(mem, RawRamFile) and mem.read(0, 16) == b"guest RAM start!"
    elf = tmp_path / "dump.elf"
    _dump_guest_memory({"protocol": f"file:{elf}"})
    with open_snapshot(elf) as mem:
        assert isinstance(mem, ElfVmcore) and mem.read(0, 14) == b"dumped by QEMU"


def test_snapshot_live_stops_copies_and_continues(ram_file, tmp_path):
    socket_path = short_socket_path("qmp")
    replies = {"stop": {}, "cont": {}, "dump-guest-memory": _dump_guest_memory}
    with FakeQmp(socket_path, replies) as qemu:
        vm = FakeVM(socket_path, ram_file)
        try:
            copy = snapshot_live(vm, tmp_path / "ram-copy", elf=tmp_path / "ram-copy.elf")
        finally:
            vm.close()
    assert copy.read_bytes() == ram_file.read_bytes()
    assert (tmp_path / "ram-copy.elf").read_bytes()[:4] == b"\x7fELF"
    assert qemu.commands == ["qmp_capabilities", "stop", "dump-guest-memory", "cont"]


def test_snapshot_live_without_a_ram_file_dumps_through_qmp(tmp_path):
    socket_path = short_socket_path("qmp")
    replies = {"stop": {}, "cont": {}, "dump-guest-memory": _dump_guest_memory}
    with FakeQmp(socket_path, replies) as qemu:
        vm = FakeVM(socket_path, None)
        try:
            path = snapshot_live(vm, tmp_path / "ram-copy")
        finally:
            vm.close()
    assert path.read_bytes()[:4] == b"\x7fELF"
    assert qemu.received[2]["arguments"] == {"paging": False, "protocol": f"file:{tmp_path / 'ram-copy'}"}


def test_the_guest_is_continued_when_the_copy_fails(tmp_path):
    socket_path = short_socket_path("qmp")
    with FakeQmp(socket_path, {"stop": {}, "cont": {}}) as qemu:
        vm = FakeVM(socket_path, tmp_path / "no-such-ram-file")
        try:
            with pytest.raises(FileNotFoundError):
                snapshot_live(vm, tmp_path / "ram-copy")
        finally:
            vm.close()
    assert qemu.commands == ["qmp_capabilities", "stop", "cont"]


# -- stopping at the kexec ---------------------------------------------------------------------------------------
@pytest.fixture
def vmlinux(tmp_path) -> Path:
    path = tmp_path / "vmlinux"
    path.write_bytes(build_elf(ElfSpec(symbols=SYMBOLS)))
    return path


def _stopped_guest(rip: int):
    """The gdbstub's answers for a guest stopped before the kexec, with its IDT, that stops at ``rip`` later."""
    table = idt_bytes(SLIDE)

    def answer(payload: str) -> str | None:
        if payload == "?":
            return "T02thread:01;"
        if payload.startswith("m"):
            addr, size = (int(x, 16) for x in payload[1:].split(","))
            return table[addr - IDT : addr - IDT + size].hex()
        if payload.startswith(("Z1", "z1", "D")):
            return "OK"
        if payload == "g":
            return (bytes(16 * 8) + struct.pack("<Q", rip)).hex()
        return None if payload == "c" else ""

    return answer


def test_kexec_capture_stops_at_machine_kexec_copies_and_lets_go(vmlinux, ram_file, tmp_path):
    address = SYMBOLS["machine_kexec"] + SLIDE
    gdb_socket, qmp_socket = short_socket_path("gdb"), short_socket_path("qmp")
    qmp_replies = {"human-monitor-command": REGISTERS, "dump-guest-memory": _dump_guest_memory}
    with FakeQmp(qmp_socket, qmp_replies), FakeGdbStub(gdb_socket, _stopped_guest(address)) as stub:
        vm = FakeVM(qmp_socket, ram_file)
        try:
            capture = KexecCapture(vm, vmlinux, gdb_socket, tmp_path / "ram-kexec", elf=True, timeout_s=10)
            capture.arm()
            assert not capture.done
            stub.send_packet("T05thread:01;")  # the guest reaches the breakpoint
            snap = capture.result(timeout=10)
        finally:
            vm.close()
    assert capture.done
    assert (snap.function, snap.address, snap.slide, snap.rip) == ("machine_kexec", address, SLIDE, address)
    assert (snap.stop_reply, snap.breakpoint_kind) == ("T05thread:01;", "1")
    assert snap.path.read_bytes() == ram_file.read_bytes()
    assert snap.elf_path == tmp_path / "ram-kexec.elf" and snap.elf_path.read_bytes()[:4] == b"\x7fELF"
    with snap.open(memory_mb=4) as mem:
        assert mem.read(0, 16) == b"guest RAM start!"
    assert stub.received == ["?", f"m{IDT:x},f0", f"Z1,{address:x},1", "c", "g", f"z1,{address:x},1", "D"]


def test_kexec_capture_at_the_wrong_address_fails_and_still_detaches(vmlinux, ram_file, tmp_path):
    gdb_socket, qmp_socket = short_socket_path("gdb"), short_socket_path("qmp")
    with (
        FakeQmp(qmp_socket, {"human-monitor-command": REGISTERS}),
        FakeGdbStub(gdb_socket, _stopped_guest(0x1234)) as stub,
    ):
        vm = FakeVM(qmp_socket, ram_file)
        try:
            capture = KexecCapture(vm, vmlinux, gdb_socket, tmp_path / "ram-kexec", timeout_s=10)
            capture.arm()
            stub.send_packet("T05thread:01;")
            with pytest.raises(GdbRemoteError, match="stopped at 0x1234"):
                capture.result(timeout=10)
        finally:
            vm.close()
    assert stub.received[-1] == "D"
    assert not (tmp_path / "ram-kexec").exists()


def test_kexec_capture_needs_the_symbols(tmp_path):
    stripped = tmp_path / "vmlinux"
    stripped.write_bytes(build_elf(ElfSpec(symbols={"machine_kexec": 1})))
    capture = KexecCapture(None, stripped, tmp_path / "gdb", tmp_path / "ram")
    with pytest.raises(GdbRemoteError, match="does not define asm_exc_divide_error"):
        capture.arm()
    with pytest.raises(RuntimeError, match="never armed"):
        capture.result()
