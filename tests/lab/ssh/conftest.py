"""Fixtures for the SSH target's tests: ``local_sshd``, an SSH server in this process (paramiko's server side,
running each command with ``sh -c`` on this machine), for the tests without a VM; ``sshd_vm`` and ``shared_vm``,
lab VMs running Debian's sshd (see :mod:`tests.lab.sshd_vm`), for the ``lab`` tests."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paramiko
import pytest

from tests.lab.sshd_vm import SshdLabVM
from workbench.lab.inventory import LabHost


class _Session(paramiko.ServerInterface):
    """One client's session: public-key authentication with ``client_key`` only, ``exec`` requests only."""

    def __init__(self, client_key: paramiko.PKey):
        self.client_key = client_key

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL if key == self.client_key else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(target=_execute, args=(channel, command.decode()), daemon=True).start()
        return True


def _execute(channel: paramiko.Channel, command: str) -> None:
    """Runs ``command`` with ``sh -c``: the channel's input to its stdin, its stdout and stderr to the channel as
    they come, then its exit status."""
    proc = subprocess.Popen(
        ["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )

    def feed() -> None:
        with contextlib.suppress(OSError, EOFError):
            while data := channel.recv(65536):
                proc.stdin.write(data)
                proc.stdin.flush()
        with contextlib.suppress(OSError):
            proc.stdin.close()

    def pump(stream, send) -> None:
        with contextlib.suppress(OSError, EOFError):
            while data := os.read(stream.fileno(), 65536):
                send(data)

    threading.Thread(target=feed, daemon=True).start()
    pumps = [
        threading.Thread(target=pump, args=(proc.stdout, channel.sendall), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, channel.sendall_stderr), daemon=True),
    ]
    for t in pumps:
        t.start()
    for t in pumps:
        t.join()
    status = proc.wait()
    with contextlib.suppress(OSError, EOFError):
        channel.send_exit_status(status)
        channel.close()


class LocalSshd:
    """An SSH server on a free loopback port, in this process, that runs commands on this machine as the current
    user. A fresh host key and client key per server; ``known_hosts`` has the host key. Use as a context
    manager."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.host_key = paramiko.ECDSAKey.generate()
        self.client_key = paramiko.ECDSAKey.generate()
        self.client_key_file = workdir / "client_ecdsa"
        self.client_key.write_private_key_file(str(self.client_key_file))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(
            f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n"
        )
        self.transports: list[paramiko.Transport] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True, name="local-sshd")

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            self.transports.append(transport)
            threading.Thread(target=self._serve, args=(transport,), daemon=True).start()

    def _serve(self, transport: paramiko.Transport) -> None:
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
            transport.start_server(server=_Session(self.client_key))

    def host(self, **changes: Any) -> LabHost:
        """This server as a :class:`LabHost`: the current user with the client key, the known_hosts file with the
        server's key, this Python."""
        base = LabHost(
            name="local",
            host="127.0.0.1",
            port=self.port,
            user=getpass.getuser(),
            key=str(self.client_key_file),
            known_hosts=str(self.known_hosts),
            python=sys.executable,
            connect_timeout_s=20.0,
        )
        return base.replace(**changes)

    def __enter__(self) -> LocalSshd:
        self._accepting.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
        for transport in self.transports:
            transport.close()


@pytest.fixture
def local_sshd(tmp_path):
    with LocalSshd(tmp_path / "sshd") as server:
        yield server


@pytest.fixture
def sshd_vm(lab_kernel, tmp_path):
    with SshdLabVM(tmp_path / "vm1", name="vm1", kernel=lab_kernel) as vm:
        yield vm


@pytest.fixture(scope="package")
def shared_vm(lab_kernel, tmp_path_factory):
    """One VM for the tests that never kexec it (login failures, refusals, the dry run), in every module here."""
    with SshdLabVM(tmp_path_factory.mktemp("shared") / "vm", name="shared", kernel=lab_kernel) as vm:
        yield vm
