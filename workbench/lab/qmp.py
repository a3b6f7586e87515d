"""A client of QEMU's machine protocol (QMP) over a unix socket: the one the lab drives its VMs with and the
inspector asks a VM about its RAM with.

QEMU greets each client, waits for ``qmp_capabilities`` and then answers one JSON command per line. It serves one
client at a time: a second client is accepted but not greeted until the first one closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from typing import Any

from workbench.lab.errors import QMPError

__all__ = ["QMPClient"]


class QMPClient:
    """A minimal synchronous QMP session; commands may come from several threads.

    :param path: QEMU's QMP unix socket (``-qmp unix:PATH,server=on``)
    :param timeout: seconds each socket operation may take (connecting, the greeting, each reply)
    :raises OSError: the socket cannot be connected to (``FileNotFoundError``, ``ConnectionRefusedError``)
    :raises TimeoutError: no greeting within ``timeout``: another client holds the socket
    :raises QMPError: QEMU closed the connection or refused ``qmp_capabilities``
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buf = b""
        self._lock = threading.Lock()
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(os.fspath(path))
            self.greeting = self._read(f"QEMU closed QMP socket {path} without a greeting")
            self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    def _read(self, closed_message: str = "QEMU closed the QMP connection") -> dict:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QMPError(closed_message)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        """Runs ``command`` with ``arguments`` and returns its ``return`` value; events that arrive meanwhile are
        skipped. Raises :class:`QMPError` with QEMU's description when the command fails."""
        with self._lock:
            message: dict[str, Any] = {"execute": command}
            if arguments:
                message["arguments"] = arguments
            self.sock.sendall(json.dumps(message).encode() + b"\n")
            while True:
                reply = self._read()
                if "return" in reply:
                    return reply["return"]
                if "error" in reply:
                    raise QMPError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")

    def human_monitor(self, command_line: str) -> str:
        """The text output of a human monitor (HMP) command such as ``info registers``."""
        return str(self.execute("human-monitor-command", **{"command-line": command_line}))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
