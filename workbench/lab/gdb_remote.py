"""A client of the GDB remote serial protocol, as much of it as stopping a QEMU guest at a kernel address takes:
reading memory and registers, setting and removing breakpoints, continuing, waiting for a stop, detaching.

QEMU serves it with ``-gdb unix:PATH,server=on,wait=off`` (see :func:`workbench.lab.capture.gdbstub_qemu_args`).
Packets are ``$payload#checksum`` and acknowledged both ways with ``+``/``-`` (no no-ack mode).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import time
from typing import Any

from workbench.lab.errors import LabError

__all__ = ["GdbRemote", "GdbRemoteError"]

_X86_64_RIP_OFFSET = 16 * 8  # 'g' packet: rax..r15, then rip
_MAX_READ = 2048  # bytes per 'm' packet (QEMU's packet buffer holds 4096 hex digits)
_STOP_REPLY = re.compile(r"[TS][0-9a-fA-F]{2}")


class GdbRemoteError(LabError):
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
        """Why the guest is stopped (``?``): a stop reply such as ``T05thread:01;``."""
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
        """Removes the breakpoint at ``addr`` that :meth:`insert_breakpoint` set with packet type ``kind``."""
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
