"""QEMU's side of two protocols, served from a thread on a real unix socket, for tests without a VM: the QMP
monitor (:class:`FakeQmp`) and the gdbstub (:class:`FakeGdbStub`). Both record what they received."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FakeQmp", "QmpFailure", "FakeGdbStub", "short_socket_path", "frame"]


def short_socket_path(name: str) -> Path:
    """A socket path in a fresh folder under the temp dir (pytest's tmp_path can exceed the 107-byte limit)."""
    return Path(tempfile.mkdtemp(prefix="wbtest-")) / name


class QmpFailure:
    """A reply of :class:`FakeQmp` that is an error with this description."""

    def __init__(self, desc: str, error_class: str = "GenericError"):
        self.desc = desc
        self.error_class = error_class


class _Server:
    def __init__(self, path: Path):
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.listener.settimeout(0.1)
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True, name=type(self).__name__)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    self.serve(conn)
                except (OSError, ConnectionError):
                    pass
                except BaseException as exc:  # reported by close()
                    self.errors.append(exc)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.path.parent)
        if self.errors:
            raise self.errors[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FakeQmp(_Server):
    """A QMP monitor: greets each client (one at a time), then answers each command from ``replies``
    ({command: return value, a :class:`QmpFailure`, or a function of the arguments giving either}); a command
    not in ``replies`` fails as QEMU's unknown commands do. ``events`` sends an event before the reply to the
    commands it names; ``close_on`` closes the connection instead of answering that command; ``hang_up`` closes
    it before the greeting; ``greet=False`` accepts the connection and says nothing, like QEMU serving another
    client."""

    def __init__(
        self,
        path: Path,
        replies: dict[str, Any] | None = None,
        *,
        events: tuple[str, ...] = (),
        close_on: str | None = None,
        hang_up: bool = False,
        greet: bool = True,
    ):
        self.replies = {"qmp_capabilities": {}, **(replies or {})}
        self.events = events
        self.close_on = close_on
        self.hang_up = hang_up
        self.greet = greet
        self.received: list[dict] = []
        super().__init__(path)

    def serve(self, conn: socket.socket) -> None:
        if self.hang_up:
            return
        if not self.greet:
            while not self._stop.wait(0.05):
                pass
            return
        conn.sendall(b'{"QMP": {"version": {"qemu": {"major": 9, "minor": 0, "micro": 0}}, "capabilities": []}}\r\n')
        buf = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                message = json.loads(line)
                self.received.append(message)
                command = message["execute"]
                if command == self.close_on:
                    return
                if command in self.events:
                    conn.sendall(b'{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}\r\n')
                conn.sendall(json.dumps(self._reply(command, message.get("arguments", {}))).encode() + b"\r\n")

    def _reply(self, command: str, arguments: dict) -> dict:
        if command not in self.replies:
            return {"error": {"class": "CommandNotFound", "desc": f"The command {command} has not been found"}}
        value = self.replies[command]
        if callable(value):
            value = value(arguments)
        if isinstance(value, QmpFailure):
            return {"error": {"class": value.error_class, "desc": value.desc}}
        return {"return": value}

    @property
    def commands(self) -> list[str]:
        return [m["execute"] for m in self.received]


def frame(payload: bytes) -> bytes:
    """A GDB remote protocol packet: ``$payload#checksum``."""
    return b"$" + payload + b"#" + f"{sum(payload) % 256:02x}".encode()


class FakeGdbStub(_Server):
    """A gdbstub: acknowledges each packet with a valid checksum (``+``; ``-`` and no answer otherwise) and answers
    it with ``answer(payload)`` (``None``: no answer, as for ``c``). ``reject_first`` sends ``-`` to the first
    packet, so that the client sends it again; ``corrupt_first`` sends the first answer with a wrong checksum
    first; ``on_connect`` is sent when a client connects (QEMU sends a stop reply). The byte ``\\x03`` (interrupt)
    is answered with ``answer("\\x03")``."""

    def __init__(
        self,
        path: Path,
        answer: Callable[[str], str | None],
        *,
        reject_first: bool = False,
        corrupt_first: bool = False,
        on_connect: str | None = None,
    ):
        self.answer = answer
        self.reject_first = reject_first
        self.corrupt_first = corrupt_first
        self.on_connect = on_connect
        self.received: list[str] = []
        self.bad_checksums = 0
        self.acks: list[bytes] = []  # what the client sent in answer to our packets
        self.conn: socket.socket | None = None
        self._corrupted: bytes | None = None  # the answer sent with a wrong checksum, to send again on "-"
        super().__init__(path)

    def send_packet(self, payload: str) -> None:
        """Sends a packet unasked (e.g. a stop reply after ``c``)."""
        assert self.conn is not None
        self.conn.sendall(frame(payload.encode("latin-1")))

    def serve(self, conn: socket.socket) -> None:
        self.conn = conn
        if self.on_connect is not None:
            self.send_packet(self.on_connect)
        buf = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            while buf:
                if buf[:1] in (b"+", b"-"):
                    self.acks.append(buf[:1])
                    buf = buf[1:]
                    if self.acks[-1] == b"-" and self._corrupted is not None:
                        conn.sendall(frame(self._corrupted))
                        self._corrupted = None
                elif buf[:1] == b"\x03":
                    buf = buf[1:]
                    self._respond(conn, "\x03")
                elif buf[:1] == b"$":
                    end = buf.find(b"#")
                    if end < 0 or len(buf) < end + 3:
                        break
                    payload, checksum = buf[1:end], buf[end + 1 : end + 3]
                    buf = buf[end + 3 :]
                    if int(checksum, 16) != sum(payload) % 256:
                        self.bad_checksums += 1
                        conn.sendall(b"-")
                        continue
                    if self.reject_first:
                        self.reject_first = False
                        conn.sendall(b"-")
                        continue
                    conn.sendall(b"+")
                    text = payload.decode("latin-1")
                    self.received.append(text)
                    self._respond(conn, text)
                else:
                    raise AssertionError(f"the client sent {buf[:20]!r} outside a packet")

    def _respond(self, conn: socket.socket, payload: str) -> None:
        reply = self.answer(payload)
        if reply is None:
            return
        data = reply.encode("latin-1")
        if self.corrupt_first:
            self.corrupt_first = False
            conn.sendall(b"$" + data + b"#" + f"{(sum(data) + 1) % 256:02x}".encode())
            self._corrupted = data
            return
        conn.sendall(frame(data))
