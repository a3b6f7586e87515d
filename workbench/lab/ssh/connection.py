"""Talking to a lab host over SSH with paramiko: connecting with key authentication and a known_hosts policy,
running a command to completion, and following a long-running command's output line by line.

Host keys: a host must be in its known_hosts file (:attr:`LabHost.known_hosts_path`) unless the inventory says
``host_key_policy = "accept-new"``, which trusts and remembers an unknown key; a changed key is refused always.
Passwords are never used: the key given for the host, else the keys in ``~/.ssh`` and the ssh-agent."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko

from workbench.lab.errors import SshTargetError
from workbench.lab.inventory import LabHost
from workbench.lab.qemu import SerialLine, pump_lines, wait_for_line

__all__ = ["TransientConnectError", "connect", "run_command", "SshChannelSource"]

logging.getLogger("paramiko").addHandler(logging.NullHandler())
# the reconnection attempts while a host kexecs fail by design: their transports log here, to nobody
_POLL_LOG = "workbench.lab.ssh.reconnect"
logging.getLogger(_POLL_LOG).addHandler(logging.NullHandler())
logging.getLogger(_POLL_LOG).propagate = False


class TransientConnectError(Exception):
    """A connection attempt that may succeed later (nothing listening yet, no banner yet, reset)."""


class _RejectAndRemember(paramiko.MissingHostKeyPolicy):
    """Refuses an unknown host key, and keeps it so that the error can show its fingerprint."""

    def __init__(self):
        self.key: paramiko.PKey | None = None

    def missing_host_key(self, client, hostname, key):
        self.key = key
        raise paramiko.SSHException(f"host key for {hostname} is not known")


def _fingerprint(key: paramiko.PKey) -> str:
    """``key`` as ssh-keygen shows it: its type and the base64 of its SHA-256."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def _known_hosts_name(host: LabHost) -> str:
    """How ``host`` is named in a known_hosts file: the bare host on port 22, ``[host]:port`` otherwise."""
    return host.host if host.port == 22 else f"[{host.host}]:{host.port}"


def connect(
    host: LabHost, timeout: float | None = None, banner_timeout: float | None = None, quiet: bool = False
) -> paramiko.SSHClient:
    """An authenticated SSH client for ``host``. Raises :class:`SshTargetError` (phase ``connect``) for what
    retrying cannot fix (unknown or changed host key, authentication refused, unreadable key) and
    :class:`TransientConnectError` otherwise.

    ``host``: the inventory entry (address, user, key, known_hosts file and policy). ``timeout``: seconds for the
    TCP connection and each SSH step (the host's ``connect_timeout_s`` if not given). ``banner_timeout``: seconds
    to wait for the server's banner (``timeout`` if not given). ``quiet``: paramiko's own error logging of this
    connection is dropped (attempts expected to fail)."""
    timeout = timeout or host.connect_timeout_s
    client = paramiko.SSHClient()
    if quiet:
        client.set_log_channel(_POLL_LOG)
    known = host.known_hosts_path
    if host.host_key_policy == "accept-new":
        known.parent.mkdir(parents=True, exist_ok=True)
        known.touch(exist_ok=True)
    if known.exists():
        try:
            client.load_host_keys(str(known))
        except (OSError, paramiko.SSHException) as exc:
            raise SshTargetError(f"cannot read known_hosts file {known}: {exc}", "connect", None) from None
    reject = _RejectAndRemember()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy() if host.host_key_policy == "accept-new" else reject)
    if host.key is not None and not Path(host.key).exists():
        raise SshTargetError(f"the SSH key {host.key} for {host.name} does not exist", "connect", None)
    try:
        client.connect(
            host.host,
            port=host.port,
            username=host.user,
            key_filename=host.key,
            look_for_keys=host.key is None,
            allow_agent=host.key is None,
            timeout=timeout,
            banner_timeout=banner_timeout or timeout,
            auth_timeout=max(timeout, 30.0),
            channel_timeout=timeout,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise SshTargetError(
            f"the host key of {host.name} ({host.address}) CHANGED: it offered {_fingerprint(exc.key)} but "
            f"{known} has {_fingerprint(exc.expected_key)} for {_known_hosts_name(host)}. Refused: this may be "
            "another machine or a man in the middle. If the host was reinstalled, remove the old line from "
            f"{known} and add the new key after checking its fingerprint.",
            "connect",
            None,
        ) from None
    except paramiko.PasswordRequiredException:
        client.close()
        raise SshTargetError(
            f"the SSH key {host.key} is encrypted: load it into ssh-agent and leave key unset, or use an "
            "unencrypted lab key",
            "connect",
            None,
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        if "timeout" in str(exc).lower():
            raise TransientConnectError(f"authentication with {host.address} timed out") from None
        how = f"the key {host.key}" if host.key else "the keys in ~/.ssh and the ssh-agent"
        raise SshTargetError(
            f"authentication failed for {host.address} with {how}: {exc}. The host does not accept this key: "
            f"put its public key in ~{host.user}/.ssh/authorized_keys there (the workbench logs in with keys only, "
            "never a password)",
            "connect",
            None,
        ) from None
    except paramiko.SSHException as exc:
        client.close()
        if reject.key is not None:
            where = str(known) if known.exists() else f"{known} (which does not exist)"
            raise SshTargetError(
                f"the host key of {host.name} ({host.address}, {_fingerprint(reject.key)}) is not in {where}: "
                "refused (known-hosts checking is on). Check the fingerprint out of band, then add it, e.g. "
                f'ssh-keyscan -p {host.port} {host.host} >> {known}, or set host_key_policy = "accept-new" for '
                "this host in the inventory",
                "connect",
                None,
            ) from None
        raise TransientConnectError(f"SSH handshake with {host.address} failed: {exc}") from None
    except (OSError, EOFError, TimeoutError) as exc:
        client.close()
        raise TransientConnectError(f"cannot reach {host.address}: {exc}") from None
    return client


def run_command(
    client: paramiko.SSHClient, command: str, timeout: float = 60.0, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """Runs ``command`` (a shell command line) on ``client``'s host to completion; returns (exit status, stdout,
    stderr). ``timeout``: seconds for opening the channel and for each read. ``stdin``: bytes sent to the
    command's standard input, which is then closed (closed at once without it)."""
    chan = client.get_transport().open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        if stdin is not None:
            # a command that exits before reading all of its input (a missing program) closes the channel while
            # it is being sent: what it printed and its exit status still tell what happened
            with contextlib.suppress(OSError):
                chan.sendall(stdin)
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            data = chan.recv(65536)
            if not data:
                break
            out += data
        while True:
            data = chan.recv_stderr(65536)
            if not data:
                break
            err += data
        return chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")
    finally:
        chan.close()


class SshChannelSource:
    """A command's output over SSH, line by line with the host's arrival time: a :class:`LineSource` for
    :meth:`MarkRunner.wait_mark`, like a VM's serial console. stderr is merged into stdout.

    ``client``: a connected client; ``command``: the shell command line started at once; ``log``: a file the
    command line and every line are appended to, timed from ``t0`` (a :func:`time.monotonic` value, now if not
    given); ``on_line``: called with each line as it arrives, from the reading thread."""

    def __init__(
        self,
        client: paramiko.SSHClient,
        command: str,
        log: Path,
        on_line: Callable[[SerialLine], None] | None = None,
        t0: float | None = None,
    ):
        self.lines: list[SerialLine] = []
        self._cond = threading.Condition()
        self.on_line = on_line
        self.log = log
        self.t0 = t0 if t0 is not None else time.monotonic()
        self.chan = client.get_transport().open_session(timeout=60)
        self.chan.set_combine_stderr(True)
        self.chan.exec_command(command)
        with open(self.log, "a") as f:
            f.write(f"[{time.monotonic() - self.t0:10.3f}] $ {command}\n")
        self._reader = threading.Thread(target=self._read, daemon=True, name="ssh-channel")
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "a", buffering=1) as log:
            buf = pump_lines(
                lambda: self.chan.recv(65536),
                (OSError, EOFError, paramiko.SSHException),
                log,
                self.t0,
                self.lines,
                self._cond,
                self.on_line,
            )
            if buf:
                log.write(f"[{time.monotonic() - self.t0:10.3f}] {buf.decode(errors='replace')}\n")
        with self._cond:
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self._reader.is_alive()

    @property
    def exit_status(self) -> int | None:
        return self.chan.recv_exit_status() if self.chan.exit_status_ready() else None

    def send(self, text: str) -> None:
        self.chan.sendall(text.encode())

    def wait_exit(self, timeout: float) -> int | None:
        self._reader.join(timeout)
        deadline = time.monotonic() + 2
        while not self.chan.exit_status_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.exit_status

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.chan.close()

    def wait_for(
        self,
        predicate: Callable[[SerialLine], bool],
        timeout: float,
        start: int = 0,
        cancel: threading.Event | None = None,
    ) -> tuple[int, SerialLine] | None:
        return wait_for_line(self.lines, self._cond, predicate, timeout, start, cancel, alive=self._reader.is_alive)
