"""Capturing a lab VM's physical memory at chosen moments, to decode the handover the real kernel wrote.

In Linux 7.2 the LUO sessions, their file lists and the FLB entries only exist in serialized form after
``liveupdate_reboot()`` has run inside ``kernel_kexec()``; a dump taken earlier shows the radix tree and the memfd
metadata but ``sessions_pa == 0``. The moment that shows the complete handover is the entry of
``machine_kexec()``: ``kernel_kexec()`` calls it after ``liveupdate_reboot()`` (sessions and FLBs serialized),
``kernel_restart_prepare()`` and ``machine_shutdown()`` (the other CPUs are stopped), and it is the last C
function before ``relocate_kernel`` jumps into the next kernel. Nothing changes the handover after that point.

:class:`KexecCapture` stops the guest there through QEMU's gdbstub (``-gdb unix:PATH,server=on,wait=off``, see
:func:`gdbstub_qemu_args`) with :class:`GdbRemote`, a small client of the GDB remote serial protocol: it finds the
kernel's KASLR slide from the IDT (:func:`kernel_slide`), sets a breakpoint at the slid address of
``machine_kexec`` (read from ``vmlinux``'s symbol table by :func:`elf_symbols`), lets the guest run, and when the
breakpoint hits copies guest RAM (:func:`snapshot_ram_file` for a ``memory-backend-file``, else QMP
``dump-guest-memory``) and detaches, which lets the kexec go on. :func:`snapshot_live` copies the RAM of a running
guest briefly stopped through QMP (for the pauses of a cycle).

Under TCG, QEMU implements gdbstub breakpoints (software and hardware alike) in its translator: guest memory is
never patched. Under KVM a hardware breakpoint is used, so that no ``int3`` is written into kernel text. The
breakpoint address is checked against the stopped CPU's ``rip``; the slide against three IDT gates.

:func:`compare_with_encoders` then re-encodes a decoded capture with the workbench's encoders and compares them
page by page with the kernel's bytes, translating only the u64 fields that hold addresses of metadata pages (the
encoders allocate their pages elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.abi.alloc import PageAllocator
from workbench.abi.block import BLOCK_HEADER_SIZE, read_block_list
from workbench.abi.errors import AbiError
from workbench.abi.fdt import encode_kho_fdt
from workbench.abi.handover import Handover, MemfdSpec, encode_handover
from workbench.abi.luo import FILE_SER_SIZE, SESSION_SER_SIZE
from workbench.abi.physmem import PAGE_SIZE, BufferMemory, ElfVmcore, PhysicalMemory, RawRamFile
from workbench.abi.radix import encode_radix_tree, read_radix_tree

__all__ = [
    "KEXEC_STOP_FUNCTION",
    "GdbRemote",
    "GdbRemoteError",
    "elf_symbols",
    "kernel_slide",
    "gdbstub_qemu_args",
    "short_socket_dir",
    "snapshot_ram_file",
    "snapshot_live",
    "open_snapshot",
    "KexecSnapshot",
    "KexecCapture",
    "compare_with_encoders",
]

KEXEC_STOP_FUNCTION = "machine_kexec"
# IDT vectors whose gates point at these entry stubs; each gives the same slide, which cross-checks it.
_IDT_PROBES = ((0, "asm_exc_divide_error"), (3, "asm_exc_int3"), (14, "asm_exc_page_fault"))
_KASLR_ALIGN = 0x200000  # CONFIG_PHYSICAL_ALIGN: the virtual slide is a multiple of it too
_X86_64_RIP_OFFSET = 16 * 8  # 'g' packet: rax..r15, then rip
_MAX_READ = 2048  # bytes per 'm' packet (QEMU's packet buffer holds 4096 hex digits)
_STOP_REPLY = re.compile(r"[TS][0-9a-fA-F]{2}")


class GdbRemoteError(RuntimeError):
    """The gdbstub refused a request, answered nonsense, or the connection broke."""


class GdbRemote:
    """A client of the GDB remote serial protocol, enough to stop a QEMU guest at a kernel address.

    ``address`` is a unix socket path or ``(host, port)``. QEMU stops the guest when a client connects; it runs
    again after :meth:`resume` or :meth:`detach`. Packets are acknowledged both ways (no no-ack mode).
    """

    def __init__(self, address: str | os.PathLike[str] | tuple[str, int], timeout: float = 30.0):
        if isinstance(address, tuple):
            self.sock = socket.create_connection(address, timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(str(address))
        self.timeout = timeout
        self._buf = b""

    # -- framing ---------------------------------------------------------------------------------------------
    @staticmethod
    def _frame(payload: str) -> bytes:
        body = payload.encode("latin-1")
        return b"$" + body + b"#" + f"{sum(body) % 256:02x}".encode()

    def _recv_byte(self, deadline: float) -> int:
        while not self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from the gdbstub")
            self.sock.settimeout(min(remaining, self.timeout))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise GdbRemoteError("the gdbstub closed the connection")
            self._buf += chunk
        byte, self._buf = self._buf[0], self._buf[1:]
        return byte

    def _send(self, payload: str) -> None:
        frame = self._frame(payload)
        for _ in range(5):
            self.sock.sendall(frame)
            deadline = time.monotonic() + self.timeout
            while True:
                byte = self._recv_byte(deadline)
                if byte == ord("+"):
                    return
                if byte == ord("-"):
                    break  # resend
                if byte == ord("$"):  # a packet before the ack: keep it for the reader
                    self._buf = b"$" + self._buf
                    return
        raise GdbRemoteError(f"the gdbstub kept rejecting packet {payload[:40]!r}")

    def _read_packet(self, timeout: float | None = None) -> str:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            byte = self._recv_byte(deadline)
            if byte != ord("$"):
                continue  # stray acks
            body = bytearray()
            while (byte := self._recv_byte(deadline)) != ord("#"):
                body.append(byte)
            checksum = bytes([self._recv_byte(deadline), self._recv_byte(deadline)])
            if int(checksum, 16) != sum(body) % 256:
                self.sock.sendall(b"-")
                continue
            self.sock.sendall(b"+")
            return _unescape(bytes(body)).decode("latin-1")

    def request(self, payload: str, timeout: float | None = None) -> str:
        """Sends one packet and returns the answer packet's payload. Stop replies arriving unasked (QEMU sends
        one when a client connects and the guest stops) are skipped: no answer to another request looks like
        one."""
        self._send(payload)
        while True:
            reply = self._read_packet(timeout)
            if payload != "?" and _STOP_REPLY.match(reply):
                continue
            return reply

    # -- commands --------------------------------------------------------------------------------------------
    def stop_reason(self) -> str:
        return self.request("?")

    def read_memory(self, addr: int, size: int) -> bytes:
        """``size`` bytes at guest virtual address ``addr`` (through the stopped CPU's page tables)."""
        out = bytearray()
        while len(out) < size:
            n = min(_MAX_READ, size - len(out))
            reply = self.request(f"m{addr + len(out):x},{n:x}")
            if not reply or reply.startswith("E") and len(reply) == 3:
                raise GdbRemoteError(f"cannot read {n} bytes at {addr + len(out):#x}: {reply or 'empty reply'}")
            try:
                out += bytes.fromhex(reply)
            except ValueError:
                raise GdbRemoteError(
                    f"unexpected answer to a memory read at {addr + len(out):#x}: {reply[:80]!r}"
                ) from None
        return bytes(out)

    def registers(self) -> bytes:
        """The ``g`` packet: the current CPU's registers in the target's layout."""
        reply = self.request("g")
        if not reply or reply.startswith("E") and len(reply) == 3:
            raise GdbRemoteError(f"cannot read registers: {reply or 'empty reply'}")
        return bytes.fromhex(reply.replace("x", "0"))

    def rip(self) -> int:
        """The x86_64 instruction pointer of the CPU that stopped last."""
        return struct.unpack_from("<Q", self.registers(), _X86_64_RIP_OFFSET)[0]

    def insert_breakpoint(self, addr: int, hardware: bool = True) -> str:
        """Sets a breakpoint (``Z1``, or ``Z0`` if the stub has no hardware ones); returns the packet type used."""
        kinds = ("1", "0") if hardware else ("0",)
        for kind in kinds:
            reply = self.request(f"Z{kind},{addr:x},1")
            if reply == "OK":
                return kind
            if reply:
                raise GdbRemoteError(f"breakpoint Z{kind} at {addr:#x} refused: {reply}")
        raise GdbRemoteError(f"the gdbstub supports no breakpoint at {addr:#x}")

    def remove_breakpoint(self, addr: int, kind: str) -> None:
        reply = self.request(f"z{kind},{addr:x},1")
        if reply != "OK":
            raise GdbRemoteError(f"removing breakpoint z{kind} at {addr:#x}: {reply or 'empty reply'}")

    def resume(self) -> None:
        """Lets the guest run; the stop reply comes later (:meth:`wait_stop`)."""
        self._send("c")

    def wait_stop(self, timeout: float) -> str:
        """The next stop reply (``T05thread:...;`` for a breakpoint); :class:`TimeoutError` after ``timeout``."""
        while True:
            reply = self._read_packet(timeout)
            if reply[:1] in ("T", "S", "W", "X"):
                if reply[:1] in ("W", "X"):
                    raise GdbRemoteError(f"the guest exited while waiting for a stop: {reply}")
                return reply
            if reply.startswith("O"):
                continue  # console output packet

    def interrupt(self, timeout: float | None = None) -> str:
        """Stops the guest (``^C``) and returns the stop reply."""
        self.sock.sendall(b"\x03")
        return self.wait_stop(self.timeout if timeout is None else timeout)

    def detach(self) -> None:
        """Removes every breakpoint and lets the guest run; the connection then closes."""
        reply = self.request("D")
        if reply != "OK":
            raise GdbRemoteError(f"detach: {reply or 'empty reply'}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> GdbRemote:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _unescape(body: bytes) -> bytes:
    """Undoes the protocol's ``}`` escaping and run-length encoding of a packet body."""
    if b"}" not in body and b"*" not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c == ord("}"):
            out.append(body[i + 1] ^ 0x20)
            i += 2
        elif c == ord("*") and out:
            out += bytes([out[-1]]) * (body[i + 1] - 29)
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


# -- the kernel's symbols ----------------------------------------------------------------------------------------
_SHT_SYMTAB = 2


def elf_symbols(path: str | os.PathLike[str], names: list[str] | tuple[str, ...] | None = None) -> dict[str, int]:
    """``{name: address}`` from the ``.symtab`` of a 64-bit little-endian ELF file (e.g. ``vmlinux``); only
    ``names`` when given (missing names are left out). The first definition of a name wins."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
        shoff = struct.unpack_from("<Q", ident, 0x28)[0]
        shentsize, shnum = struct.unpack_from("<HH", ident, 0x3A)
        f.seek(shoff)
        sections = f.read(shentsize * shnum)
        headers = [struct.unpack_from("<IIQQQQIIQQ", sections, i * shentsize) for i in range(shnum)]
        symtab = next((h for h in headers if h[1] == _SHT_SYMTAB), None)
        if symtab is None:
            raise ValueError(f"{path} has no symbol table")
        strtab = headers[symtab[6]]
        f.seek(symtab[4])
        raw = f.read(symtab[5])
        f.seek(strtab[4])
        strings = f.read(strtab[5])
    dtype = np.dtype(
        [("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"), ("value", "<u8"), ("size", "<u8")]
    )
    table = np.frombuffer(raw, dtype=dtype)
    wanted = set(names) if names is not None else None
    out: dict[str, int] = {}
    for offset, value, shndx in zip(
        table["name"].tolist(), table["value"].tolist(), table["shndx"].tolist(), strict=True
    ):
        if not offset or not shndx:
            continue
        end = strings.index(b"\0", offset)
        name = strings[offset:end].decode("latin-1")
        if (wanted is None or name in wanted) and name not in out:
            out[name] = value
    return out


def kernel_slide(qmp: Any, gdb: GdbRemote, symbols: dict[str, int]) -> int:
    """The running kernel's KASLR slide (0 without KASLR): the address of the IDT (from the monitor's ``info
    registers``) is read through the gdbstub and three of its gates are compared with the entry stubs' addresses
    in ``symbols`` (which must hold the names of ``_IDT_PROBES``). The guest must be stopped."""
    text = qmp.execute("human-monitor-command", **{"command-line": "info registers"})
    match = re.search(r"IDT=\s*([0-9a-fA-F]+)\s+([0-9a-fA-F]+)", str(text))
    if not match:
        raise GdbRemoteError(f"no IDT in the monitor's register dump: {str(text)[:300]!r}")
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


def snapshot_live(vm: Any, dest: str | os.PathLike[str], elf: str | os.PathLike[str] | None = None) -> Path:
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


def _copy_memory(vm: Any, dest: Path) -> Path:
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

    vm: Any  # workbench.lab.qemu.QemuVM
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
        names = [self.function, *(name for _, name in _IDT_PROBES)]
        symbols = elf_symbols(self.vmlinux, names)
        missing = [n for n in names if n not in symbols]
        if missing:
            raise ValueError(f"{self.vmlinux} does not define {', '.join(missing)}")
        gdb = GdbRemote(self.gdb_socket, timeout=30.0)
        try:
            gdb.stop_reason()
            slide = kernel_slide(self.vm.qmp(), gdb, symbols)
            address = symbols[self.function] + slide
            kind = gdb.insert_breakpoint(address, hardware=self.hardware)
            gdb.resume()
        except BaseException:
            with contextlib.suppress(Exception):
                gdb.detach()
            gdb.close()
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


# -- checking the encoders against what the kernel wrote ---------------------------------------------------------
_ENCODE_BASE = 0x100_0000_0000  # 1 TiB: far from any lab guest's RAM, so no encoded address equals a kernel one


@dataclass
class _Pair:
    what: str
    kernel_phys: int
    encoded_phys: int
    size: int = PAGE_SIZE
    pointers: tuple[int, ...] | None = ()  # byte offsets of u64 addresses; None: every nonzero word is one


def compare_with_encoders(kernel: Handover, mem: PhysicalMemory, release: str | None = None) -> pd.DataFrame:
    """Re-encodes a decoded handover with the workbench's encoders and compares, page by page, what they write
    with what the kernel wrote in ``mem``.

    The radix tree is re-encoded from the kernel's preserved folios (:func:`encode_radix_tree`); the rest (FDT,
    ``kexec-metadata``, every memfd, the LUO blob and its block lists) by :func:`encode_handover` from the
    decoded sessions. The encoders take their pages from their own area, so every physical address of a
    metadata page differs from the kernel's: before comparing, each u64 field that holds such an address (the
    ``pointers`` of each structure) is translated through the pairing of kernel pages with encoded pages. One row
    per compared page: ``what``, both addresses, ``bytes`` compared, ``pointer_words`` translated,
    ``raw_differing_bytes`` (before translation: the bytes that legitimately differ) and ``differing_bytes``
    (after: 0 means the encoder reproduces the kernel's bytes exactly, up to where pages are). The FDT is compared
    over its ``totalsize``, re-encoded with the kernel's own addresses (its u64 cells are not at fixed offsets).
    """
    if kernel.memory_map is None or kernel.luo is None or kernel.kexec_metadata is None:
        raise ValueError("the handover must be decoded completely (memory map, LUO, kexec-metadata)")
    tree = kernel.memory_map
    pfns, orders = tree.folios()
    order_of = dict(zip(pfns.tolist(), orders.tolist(), strict=True))
    metadata_pages = sum(len(m.metadata_pages()) for m in kernel.memfds.values()) + len(kernel.luo.metadata_pages())
    pages = 2 * tree.node_pages + 2 * metadata_pages + 64
    memory = BufferMemory(pages * PAGE_SIZE, base=_ENCODE_BASE)
    allocator = PageAllocator(memory)
    pairs: list[_Pair] = []

    # The radix tree, from the kernel's folios in the kernel's walk order.
    root = encode_radix_tree(pfns, orders, allocator)
    encoded_tree = read_radix_tree(memory, root)
    if encoded_tree.table_phys.size != tree.table_phys.size or encoded_tree.leaf_phys.size != tree.leaf_phys.size:
        raise AbiError(
            f"the re-encoded radix tree has {encoded_tree.table_phys.size} tables and {encoded_tree.leaf_phys.size} "
            f"leaves, the kernel's {tree.table_phys.size} and {tree.leaf_phys.size} (empty nodes left by "
            "unpreserved folios?)"
        )
    for k, e, level in zip(
        tree.table_phys.tolist(), encoded_tree.table_phys.tolist(), tree.table_levels.tolist(), strict=True
    ):
        pairs.append(_Pair(f"radix table (level {level})", k, e, pointers=None))
    for k, e in zip(tree.leaf_phys.tolist(), encoded_tree.leaf_phys.tolist(), strict=True):
        pairs.append(_Pair("radix leaf", k, e))

    # Everything else, from the decoded sessions.
    specs: dict[str, list[MemfdSpec]] = {}
    for session in kernel.luo.sessions:
        specs[session.name] = []
        for f in session.files:
            memfd = kernel.memfds[(session.name, f.token)]
            folio_pfns = memfd.folios["pfn"].to_numpy(dtype=np.uint64)
            spec = MemfdSpec(
                token=f.token,
                pfns=folio_pfns,
                orders=np.array([order_of.get(int(p), 0) for p in folio_pfns], dtype=np.uint8),
                indexes=memfd.folios["index"].to_numpy(dtype=np.uint64),
                size=memfd.ser.size,
                pos=memfd.ser.pos,
                seals=memfd.ser.seals,
            )
            specs[session.name].append(spec)
    encoded = encode_handover(
        allocator,
        specs,
        flbs=kernel.luo.flbs,
        release=release if release is not None else kernel.kexec_metadata.previous_release,
        kexec_count=kernel.kexec_metadata.kexec_count,
        liveupdate_num=kernel.luo.liveupdate_num,
    )
    pairs.append(_Pair("kexec-metadata", kernel.kexec_metadata.phys, encoded.kexec_metadata.phys))
    k_luo, e_luo = kernel.luo, encoded.luo
    pairs.append(_Pair("luo_ser", k_luo.phys, e_luo.phys, pointers=(16, 24)))
    pairs.append(_Pair("LUO FLB page", k_luo.flbs_pa, e_luo.flbs_pa))
    k_blocks = read_block_list(mem, k_luo.sessions_pa, SESSION_SER_SIZE)
    for block, e in zip(k_blocks.blocks, e_luo.session_block_pages, strict=False):
        offsets = (0, *(BLOCK_HEADER_SIZE + i * SESSION_SER_SIZE + 64 for i in range(block.count)))
        pairs.append(_Pair("LUO session block", block.phys, e, pointers=offsets))
    _check_count("LUO session blocks", len(k_blocks.blocks), len(e_luo.session_block_pages))
    for k_session, e_session in zip(k_luo.sessions, e_luo.sessions, strict=True):
        k_files = read_block_list(mem, k_session.files_phys, FILE_SER_SIZE)
        _check_count(f"file blocks of {k_session.name!r}", len(k_files.blocks), len(e_session.block_pages))
        for block, e in zip(k_files.blocks, e_session.block_pages, strict=False):
            offsets = (0, *(BLOCK_HEADER_SIZE + i * FILE_SER_SIZE + 48 for i in range(block.count)))
            pairs.append(_Pair("LUO file block", block.phys, e, pointers=offsets))
    for key, k_memfd in kernel.memfds.items():
        e_memfd = encoded.memfds[key]
        pairs.append(_Pair("memfd_luo_ser", k_memfd.phys, e_memfd.phys, pointers=(32,)))
        k_area, e_area = k_memfd.area, e_memfd.area
        if k_area is None or e_area is None:
            _check_count(f"folio array of memfd {key}", int(k_area is not None), int(e_area is not None))
            continue
        _check_count(f"vmalloc chunks of memfd {key}", len(k_area.chunk_phys), len(e_area.chunk_phys))
        _check_count(f"folio array pages of memfd {key}", k_area.page_phys.size, e_area.page_phys.size)
        for k, e in zip(k_area.chunk_phys, e_area.chunk_phys, strict=True):
            pairs.append(_Pair("kho_vmalloc chunk", k, e, pointers=None))
        for k, e in zip(k_area.page_phys.tolist(), e_area.page_phys.tolist(), strict=True):
            pairs.append(_Pair("memfd folio array page", k, e))

    mapping = {p.kernel_phys: p.encoded_phys for p in pairs}
    rows = [_compare_pair(p, mem, memory, mapping) for p in pairs]
    blob = encode_kho_fdt(
        kernel.fdt.memory_map_phys, [(s.name, s.data_phys, s.blob_size) for s in reversed(kernel.fdt.subtrees)]
    )
    fdt_bytes = np.frombuffer(kernel.fdt.blob, np.uint8)
    fdt_same = len(blob) == fdt_bytes.size
    differing = int(np.count_nonzero(np.frombuffer(blob, np.uint8) != fdt_bytes)) if fdt_same else fdt_bytes.size
    rows.append(
        {
            "what": "KHO FDT",
            "kernel_phys": kernel.fdt.phys if kernel.fdt.phys is not None else 0,
            "encoded_phys": encoded.fdt_phys,
            "bytes": int(fdt_bytes.size),
            "pointer_words": 0,
            "raw_differing_bytes": differing,
            "differing_bytes": differing,
        }
    )
    return pd.DataFrame(rows).astype({"kernel_phys": "uint64", "encoded_phys": "uint64"})


def _check_count(what: str, kernel: int, encoded: int) -> None:
    if kernel != encoded:
        raise AbiError(f"{what}: the kernel wrote {kernel}, the encoder {encoded}")


def _compare_pair(pair: _Pair, mem: PhysicalMemory, encoded: PhysicalMemory, mapping: dict[int, int]) -> dict:
    k_raw = np.frombuffer(mem.read(pair.kernel_phys, pair.size), dtype="<u8")
    e_raw = np.frombuffer(encoded.read(pair.encoded_phys, pair.size), dtype="<u8")
    translated = k_raw.copy()
    slots = np.flatnonzero(k_raw) if pair.pointers is None else np.array(pair.pointers, dtype=np.int64) // 8
    for slot in slots.tolist():
        value = int(k_raw[slot])
        if value:
            # An address with no counterpart stays as it is and shows up as differing.
            translated[slot] = mapping.get(value, value)
    raw = int(np.count_nonzero(k_raw.view(np.uint8) != e_raw.view(np.uint8)))
    after = int(np.count_nonzero(translated.view(np.uint8) != e_raw.view(np.uint8)))
    return {
        "what": pair.what,
        "kernel_phys": pair.kernel_phys,
        "encoded_phys": pair.encoded_phys,
        "bytes": pair.size,
        "pointer_words": int(np.count_nonzero(k_raw[slots])) if slots.size else 0,
        "raw_differing_bytes": raw,
        "differing_bytes": after,
    }
