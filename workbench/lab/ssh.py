"""The SSH target: the same preserve → kexec → restore cycle on a real host, driven over SSH with paramiko.

The host runs the very agent the lab VM runs (:mod:`workbench.lab.agent`, same ``request.json``, same ``WB-MARK``
lines, which arrive on the SSH channel's stdout and are timestamped here as they arrive). The cycle:

connect (key authentication; the host key must be in known_hosts unless the host says ``accept-new``) → check
(root, ``/dev/liveupdate``, ``kho=on`` and ``liveupdate=on`` on /proc/cmdline, kexec allowed, the next kernel and
its initrd readable, Python with numpy, the agent importable or copied over SFTP, a results folder on a file
system that survives the kexec, and not this very machine) → prepare, preserve, load (the agent, which then
waits for the host's go-ahead on stdin: a dropped connection makes it unload the kernel and close the session) →
kexec → reconnect until a command runs on a new boot id → restore, verify, finish (the agent again) → the
agent's files are copied back and the run recorded as ``lab.cycle`` with target ``ssh:NAME``.

Blackout over SSH: the host's clock from the agent's ``kexec`` mark (the go-ahead if the mark was lost with the
connection) to the first command that completed on the new boot.

:class:`SshdLabVM` is a lab VM whose init starts Debian's OpenSSH server (seen through the 9p root), for the
tests: the SSH target proven against a real sshd and a real kexec."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import posixpath
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import paramiko

from workbench.environment import REPO_ROOT, boot_id
from workbench.lab.cycle import (
    CycleCancelled,
    CycleEvent,
    CycleFailed,
    CycleParams,
    MarkRunner,
    _parse_mark,
    record_cycle,
)
from workbench.lab.inventory import Inventory, LabHost, resolve_hosts
from workbench.lab.qemu import SerialLine, pump_lines, wait_for_line
from workbench.records import RecordStore, open_store

__all__ = [
    "SshTargetError",
    "failure_result",
    "PreconditionFailed",
    "ThisMachineRefused",
    "SshChannelSource",
    "connect",
    "probe_host",
    "run_ssh_cycle",
    "run_ssh_cycles",
    "SshdLabVM",
    "AGENT_FILES",
]

logging.getLogger("paramiko").addHandler(logging.NullHandler())
# the reconnection attempts while a host kexecs fail by design: their transports log here, to nobody
_POLL_LOG = "workbench.lab.ssh.reconnect"
logging.getLogger(_POLL_LOG).addHandler(logging.NullHandler())
logging.getLogger(_POLL_LOG).propagate = False

#: what the agent needs on the host (copied over SFTP when the host has no workbench of its own)
AGENT_FILES = (
    "workbench/__init__.py",
    "workbench/lab/__init__.py",
    "workbench/lab/agent.py",
    "workbench/lab/liveupdate.py",
    "workbench/kernels/__init__.py",
    "workbench/kernels/pagehash.py",
)
AGENT_PROTOCOL = 2
_PKG_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the workbench package
#: the agent's files in the results folder (removed before a cycle that reuses a folder, copied back after)
RESULT_FILES = (
    "request.json",
    "prepare.json",
    "restore.json",
    "fingerprints-before.npy",
    "fingerprints-after.npy",
    "frames-before.npy",
    "frames-after.npy",
    "kho-out.fdt",
    "kho-in.fdt",
)
REQUIRED_CONFIG = ("CONFIG_KEXEC_FILE", "CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD")
VOLATILE_FS = ("tmpfs", "ramfs", "devtmpfs", "proc", "sysfs")


class SshTargetError(CycleFailed):
    """The host could not be reached or refused the login (phase ``connect``)."""


class PreconditionFailed(CycleFailed):
    """The host is not ready for a live-update cycle; ``missing`` names what is missing (phase ``check``)."""

    def __init__(self, message: str, missing: list[str], log: Path | None = None):
        super().__init__(message, "check", log, log_name="agent log")
        self.missing = missing


class ThisMachineRefused(PreconditionFailed):
    """The target is the machine the workbench runs on, and the user did not insist."""


class _Transient(Exception):
    """A connection attempt that may succeed later (nothing listening yet, no banner yet, reset)."""


# -- connecting ------------------------------------------------------------------------------------------------
class _RejectAndRemember(paramiko.MissingHostKeyPolicy):
    def __init__(self):
        self.key: paramiko.PKey | None = None

    def missing_host_key(self, client, hostname, key):
        self.key = key
        raise paramiko.SSHException(f"host key for {hostname} is not known")


def _fingerprint(key: paramiko.PKey) -> str:
    import base64

    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def _known_hosts_name(host: LabHost) -> str:
    return host.host if host.port == 22 else f"[{host.host}]:{host.port}"


def connect(
    host: LabHost, timeout: float | None = None, banner_timeout: float | None = None, quiet: bool = False
) -> paramiko.SSHClient:
    """An authenticated SSH client for ``host``. Raises :class:`SshTargetError` for what retrying cannot fix
    (unknown or changed host key, authentication refused, unreadable key) and :class:`_Transient` otherwise.
    ``quiet``: paramiko's own error logging of this connection is dropped (attempts expected to fail)."""
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
            raise _Transient(f"authentication with {host.address} timed out") from None
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
        raise _Transient(f"SSH handshake with {host.address} failed: {exc}") from None
    except (OSError, EOFError, TimeoutError) as exc:
        client.close()
        raise _Transient(f"cannot reach {host.address}: {exc}") from None
    return client


def _run(client: paramiko.SSHClient, command: str, timeout: float = 60.0, stdin: bytes | None = None):
    """Runs ``command``; returns (exit status, stdout, stderr)."""
    chan = client.get_transport().open_session(timeout=timeout)
    try:
        chan.settimeout(timeout)
        chan.exec_command(command)
        if stdin is not None:
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
    :meth:`MarkRunner.wait_mark`, like a VM's serial console. stderr is merged into stdout."""

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


# -- checking the host -----------------------------------------------------------------------------------------
_PROBE = r"""
import gzip, hashlib, json, os, socket, sys
cfg = json.loads(sys.argv[1])
def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None
u = os.uname()
out = {"uid": os.geteuid(), "python": sys.version.split()[0], "executable": sys.executable,
       "boot_id": read("/proc/sys/kernel/random/boot_id"),
       "machine_id": read("/etc/machine-id") or read("/var/lib/dbus/machine-id"),
       "hostname": socket.gethostname(), "release": u.release, "arch": u.machine,
       "cmdline": read("/proc/cmdline") or "", "liveupdate_device": os.path.exists("/dev/liveupdate"),
       "kexec_load_disabled": read("/proc/sys/kernel/kexec_load_disabled"),
       "lockdown": read("/sys/kernel/security/lockdown")}
config = None
try:
    with gzip.open("/proc/config.gz", "rt") as f:
        config = f.read()
except OSError:
    config = read("/boot/config-" + u.release)
if config is not None:
    opts = dict(l.split("=", 1) for l in config.splitlines() if l.startswith("CONFIG_") and "=" in l)
    out["config_missing"] = [o for o in cfg["required_config"] if opts.get(o) not in ("y", "m")]
kernel = (cfg["next_kernel"] or "/boot/vmlinuz-{release}").replace("{release}", u.release)
initrd = cfg["next_initrd"]
if initrd:
    initrd = initrd.replace("{release}", u.release)
elif not cfg["next_kernel"] and os.path.exists("/boot/initrd.img-" + u.release):
    initrd = "/boot/initrd.img-" + u.release
def file_state(path):
    if path is None:
        return None
    if not os.path.exists(path):
        return "missing"
    if not os.path.isfile(path):
        return "not a file"
    if not os.access(path, os.R_OK):
        return "not readable"
    return "ok"
out["next_kernel"], out["next_initrd"] = kernel, initrd
out["next_kernel_state"], out["next_initrd_state"] = file_state(kernel), file_state(initrd)
d = cfg["results_dir"]
probe = d
while not os.path.exists(probe) and probe not in ("/", ""):
    probe = os.path.dirname(probe)
real = os.path.realpath(probe)
best, fstype = "", None
for line in (read("/proc/self/mounts") or "").splitlines():
    parts = line.split()
    if len(parts) >= 3:
        mnt = parts[1].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
out["results_fs"], out["results_mount"] = fstype, best
out["results_writable"] = os.access(probe, os.W_OK)
try:
    import numpy
    out["numpy"] = numpy.__version__
except Exception as exc:
    out["numpy"] = None
    out["numpy_error"] = f"{type(exc).__name__}: {exc}"
try:
    import numba
    out["numba"] = numba.__version__
except Exception:
    out["numba"] = None
if cfg["pythonpath"]:
    sys.path.insert(0, cfg["pythonpath"])
if out["numpy"]:
    try:
        import workbench.lab.agent as agent
        import workbench.lab.liveupdate as lu
        out["agent"] = agent.__file__
        out["agent_protocol"] = getattr(agent, "PROTOCOL", 1)
        out["agent_sha256"] = {n: hashlib.sha256(open(m.__file__, "rb").read()).hexdigest()
                               for n, m in (("agent.py", agent), ("liveupdate.py", lu))}
    except Exception as exc:
        out["agent"] = None
        out["agent_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

_TRUE = ("on", "1", "y", "yes", "true")


def _cmdline_flag(cmdline: str, name: str) -> bool:
    for arg in cmdline.split():
        key, _, value = arg.partition("=")
        if key == name:
            return value.lower() in _TRUE
    return False


def _local_addresses() -> set[str]:
    import psutil

    out = {"127.0.0.1", "::1"}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(a.address.split("%")[0])
    return out


def _resolves_locally(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    local = _local_addresses()
    for info in infos:
        addr = info[4][0].split("%")[0]
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(addr).is_loopback or addr in local:
                return True
    return False


def _local_machine_id() -> str | None:
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            return Path(p).read_text().strip() or None
    return None


def this_machine(host: LabHost, facts: dict[str, Any]) -> dict[str, Any]:
    """Is ``host`` the machine the workbench runs on? The boot id decides: the same boot id is the same running
    kernel (a container on this machine included), which a kexec would replace. A matching machine-id or a local
    address alone is a VM or a port forward sharing this machine's files or network, noted but not refused; with
    no boot id to compare, either one counts as this machine."""
    local_boot = boot_id()
    same_boot = bool(facts.get("boot_id")) and facts.get("boot_id") == local_boot
    same_machine = bool(facts.get("machine_id")) and facts.get("machine_id") == _local_machine_id()
    local_addr = _resolves_locally(host.host)
    if same_boot:
        verdict = True
    elif not facts.get("boot_id") or not local_boot:
        verdict = same_machine or local_addr
    else:
        verdict = False
    return {
        "is_this_machine": verdict,
        "same_boot_id": same_boot,
        "same_machine_id": same_machine,
        "local_address": local_addr,
    }


def probe_host(client: paramiko.SSHClient, host: LabHost, pythonpath: str | None, results_dir: str, env: dict):
    """Runs the probe script with the host's Python; returns its facts (raises RuntimeError if Python fails)."""
    cfg = {
        "next_kernel": host.next_kernel,
        "next_initrd": host.next_initrd,
        "results_dir": results_dir,
        "pythonpath": pythonpath,
        "required_config": list(REQUIRED_CONFIG),
    }
    envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    cmd = f"cd / && env {envs} {shlex.quote(host.python)} - {shlex.quote(json.dumps(cfg))}"
    status, out, err = _run(client, cmd, timeout=max(120.0, host.connect_timeout_s), stdin=_PROBE.encode())
    if status != 0:
        if status == 127:
            raise RuntimeError(f"{host.python} was not found on {host.name} (set python = ... in the inventory)")
        raise RuntimeError(f"the probe with {host.python} failed on {host.name} (exit {status}): {err.strip()[-800:]}")
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"the probe printed no result on {host.name}: {out[-500:]} {err[-500:]}")


def missing_preconditions(facts: dict[str, Any], agent_copied: bool) -> list[tuple[str, str]]:
    """[(short name, explanation)] for every precondition ``facts`` (from :func:`probe_host`) fail."""
    missing = []
    if facts["uid"] != 0:
        missing.append(("root", f"the agent must run as root (uid 0), the login has uid {facts['uid']}"))
    if not facts["liveupdate_device"]:
        missing.append(("/dev/liveupdate", "/dev/liveupdate does not exist: the running kernel has no LUO"))
    for flag in ("kho", "liveupdate"):
        if not _cmdline_flag(facts["cmdline"], flag):
            missing.append((f"{flag}=on", f"{flag}=on is not on the kernel command line (/proc/cmdline)"))
    for opt in facts.get("config_missing") or []:
        missing.append((opt, f"the running kernel was built without {opt}"))
    if facts.get("kexec_load_disabled") == "1":
        missing.append(("kexec", "kexec is disabled (/proc/sys/kernel/kexec_load_disabled is 1 until reboot)"))
    if facts["next_kernel_state"] != "ok":
        missing.append(
            ("next kernel", f"the next kernel {facts['next_kernel']} is {facts['next_kernel_state']} on the host")
        )
    if facts["next_initrd_state"] not in (None, "ok"):
        missing.append(
            ("next initrd", f"the next kernel's initrd {facts['next_initrd']} is {facts['next_initrd_state']}")
        )
    if facts.get("results_fs") in VOLATILE_FS:
        missing.append(
            (
                "persistent results folder",
                f"the results folder is on {facts['results_fs']} ({facts['results_mount']}), which does not "
                "survive the kexec: set results_dir to a folder on disk",
            )
        )
    elif not facts.get("results_writable"):
        missing.append(("writable results folder", "the results folder cannot be created (not writable)"))
    if not facts.get("numpy"):
        missing.append(("numpy", f"{facts['executable']} cannot import numpy ({facts.get('numpy_error')})"))
    elif not facts.get("agent"):
        where = "the copied agent" if agent_copied else "the workbench on the host"
        missing.append(("workbench", f"{where} cannot be imported: {facts.get('agent_error')}"))
    elif facts.get("agent_protocol", 1) < AGENT_PROTOCOL:
        missing.append(
            (
                "agent protocol",
                f"the agent at {facts['agent']} is too old (protocol {facts.get('agent_protocol')}, the SSH target "
                f"needs {AGENT_PROTOCOL}): update the workbench there, or leave workbench unset to copy the agent",
            )
        )
    return missing


# -- the cycle -------------------------------------------------------------------------------------------------
class _SshRunner(MarkRunner):
    log_name = "agent log"
    kexec_ends_at_agent = False  # over SSH the kexec ends at the first command on the new boot

    def __init__(
        self,
        params: CycleParams,
        host: LabHost,
        run,
        on_event,
        cancel,
        on_pause,
        dry_run: bool,
        allow_this_machine: bool,
    ):
        super().__init__(params, run, on_event, cancel)
        self.host = host
        self.on_pause = on_pause
        self.dry_run = dry_run
        self.allow_this_machine = allow_this_machine
        self.agent_log = self.workdir / "agent.log"
        self.agent_log.touch()
        self.t0 = time.monotonic()
        self.client: paramiko.SSHClient | None = None
        self.chan: SshChannelSource | None = None
        self.remote_dir = host.results_dir.replace("{record_id}", run.id)
        self.phase = "connect"
        self.facts: dict[str, Any] = {}
        self.confirmed = False
        self.info: dict[str, Any] = {}

    @property
    def log_path(self) -> Path | None:
        return self.agent_log

    def source_stopped(self, what: str) -> str:
        status = self.chan.exit_status if self.chan is not None else None
        tail = ""
        if self.chan is not None and self.chan.lines:
            tail = "; last output: " + " | ".join(ln.text for ln in self.chan.lines[-3:] if ln.text.strip())
        return f"the SSH channel to {self.host.name} closed while {what} (remote exit status {status}){tail}"

    def failure_details(self) -> dict[str, Any]:
        return {"host": self.host.name, "address": self.host.address, "remote_results": self.remote_dir, **self.info}

    def _agent_error(self) -> str | None:
        self._fetch_results(("prepare.json", "restore.json"))
        return super()._agent_error()

    def note(self, event: str, data: dict, t: float, table: bool = True) -> None:
        """A host-side mark (connected, kexec confirmed, back) in the agent log and the marks table."""
        if table:
            self.marks.append((event, data, t))
        with open(self.agent_log, "a") as f:
            f.write(f"[{t - self.t0:10.3f}] (host) {event} {json.dumps(data)}\n")

    def sh(self, command: str, timeout: float = 60.0, client: paramiko.SSHClient | None = None) -> str:
        status, out, err = _run(client or self.client, command, timeout)
        if status != 0:
            raise self.fail(f"{command!r} failed on {self.host.name} (exit {status}): {err.strip()[-500:]}")
        return out

    # -- steps -------------------------------------------------------------------------------------------------
    def connect_first(self) -> None:
        self.emit(kind="state", name="connecting", text=self.host.address)
        t = time.monotonic()
        self.emit(kind="phase", name="connect", status="begin", host_time=t)
        try:
            self.client = connect(self.host)
        except SshTargetError as exc:
            raise SshTargetError(exc.args[0], "connect", self.agent_log, log_name=self.log_name) from None
        except _Transient as exc:
            raise SshTargetError(
                f"{exc} (within {self.host.connect_timeout_s:.0f} s)", "connect", self.agent_log, log_name=self.log_name
            ) from None
        t_end = time.monotonic()
        self.info["connect_s"] = t_end - t
        self.note("ssh-connected", {"address": self.host.address}, t_end)
        self.emit(kind="phase", name="connect", status="end", seconds=t_end - t, host_time=t_end)

    def agent_env(self) -> tuple[str, dict[str, str]]:
        pythonpath = self.host.workbench or self.host.agent_dir
        env = {
            "PYTHONPATH": pythonpath,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            **self.host.env,
        }
        return pythonpath, env

    def install_agent(self) -> None:
        """Copies the agent's files into ``agent_dir`` over SFTP (when the host has no workbench of its own)."""
        dirs = sorted({posixpath.dirname(posixpath.join(self.host.agent_dir, rel)) for rel in AGENT_FILES})
        self.sh("mkdir -p " + " ".join(shlex.quote(d) for d in dirs))
        sftp = self.client.open_sftp()
        try:
            for rel in AGENT_FILES:
                sftp.put(str(_PKG_ROOT / rel), posixpath.join(self.host.agent_dir, rel))
        finally:
            sftp.close()
        self.info["agent_copied_to"] = self.host.agent_dir

    def check(self) -> None:
        self.phase = "check"
        t = time.monotonic()
        self.emit(kind="phase", name="check", status="begin", host_time=t)
        if self.host.workbench is None:
            self.install_agent()
        pythonpath, env = self.agent_env()
        try:
            facts = probe_host(self.client, self.host, pythonpath, self.remote_dir, env)
        except RuntimeError as exc:
            raise PreconditionFailed(
                f"{self.host.name} cannot run the agent: {exc}", ["python"], self.agent_log
            ) from None
        self.facts = facts
        self.run.update_environment(
            target_host=self.host.name,
            target_address=self.host.address,
            target_hostname=facts["hostname"],
            target_kernel_release=facts["release"],
            target_boot_id=facts["boot_id"],
            target_python=facts["python"],
            target_numpy=facts.get("numpy"),
            target_numba=facts.get("numba"),
        )
        me = this_machine(self.host, facts)
        self.info["this_machine"] = me
        missing = missing_preconditions(facts, self.host.workbench is None)
        if missing:
            lines = "\n".join(f"  - {why}" for _, why in missing)
            raise PreconditionFailed(
                f"{self.host.name} ({facts['hostname']}, {facts['release']}) is not ready for a live-update cycle; "
                f"missing: {', '.join(name for name, _ in missing)}\n{lines}",
                [name for name, _ in missing],
                self.agent_log,
            )
        if me["is_this_machine"] and not self.allow_this_machine and not self.dry_run:
            why = (
                "it has this machine's boot id"
                if me["same_boot_id"]
                else "it has no boot id to compare and shares this machine's machine-id or address"
            )
            raise ThisMachineRefused(
                f"{self.host.name} is the machine the workbench runs on ({why}): a cycle would kexec it. Refused; "
                "pass --i-really-want-to-kexec-this-machine if that is what you want (or --dry-run to stop before "
                "the kexec)",
                ["another machine"],
                self.agent_log,
            )
        local = {n: hashlib.sha256((_PKG_ROOT / "workbench/lab" / n).read_bytes()).hexdigest() for n in AGENT_SHA}
        self.info["agent_matches_local"] = facts.get("agent_sha256") == local
        t_end = time.monotonic()
        self.info["check_s"] = t_end - t
        self.emit(kind="phase", name="check", status="end", seconds=t_end - t, host_time=t_end)

    def start_agent(self, phase: str, client: paramiko.SSHClient) -> SshChannelSource:
        _, env = self.agent_env()
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        cmd = (
            f"cd / && exec env {envs} {shlex.quote(self.host.python)} -m workbench.lab.agent "
            f"--results {shlex.quote(self.remote_dir)} --phase {phase}"
        )
        self.chan = SshChannelSource(client, cmd, self.agent_log, on_line=self.on_line, t0=self.t0)
        self.source = self.chan
        self._pos = 0
        return self.chan

    def write_remote(self, name: str, text: str) -> None:
        sftp = self.client.open_sftp()
        try:
            with sftp.open(posixpath.join(self.remote_dir, name), "w") as f:
                f.write(text)
        finally:
            sftp.close()

    def _fetch_results(self, names=RESULT_FILES) -> None:
        if self.client is None or self.client.get_transport() is None or not self.client.get_transport().is_active():
            return
        with contextlib.suppress(Exception):
            sftp = self.client.open_sftp()
            sftp.get_channel().settimeout(30)
            try:
                for name in names:
                    with contextlib.suppress(OSError):
                        sftp.get(posixpath.join(self.remote_dir, name), str(self.results / name))
            finally:
                sftp.close()

    def paused(self, phase: str, timeout: float) -> None:
        self.wait_mark(("paused",), timeout, f"waiting for the pause after {phase}")
        self.emit(kind="state", name="paused", text=phase)
        try:
            if self.on_pause is not None:
                self.on_pause(phase, self)
        finally:
            self.write_remote(f"continue-{phase}", "go\n")
        self.emit(kind="state", name="running")

    def stand_down_agent(self) -> None:
        """After a failure before the kexec: tells the agent not to kexec (it unloads the kernel and closes the
        session when it gets there) and gives it a little time to do so."""
        chan = self.chan
        if chan is None or self.confirmed or not chan.running:
            return
        with contextlib.suppress(Exception):
            chan.send("abort\n")
            chan.wait_for(lambda ln: (m := _parse_mark(ln)) is not None and m[0] in ("aborted", "error"), 30)

    def await_return(self, old_boot: str, timeout: float) -> tuple[paramiko.SSHClient, float, float, str, int]:
        """Reconnects until a command runs on a new boot id; returns (client, authenticated at, command done at,
        boot id, attempts)."""
        deadline = time.monotonic() + timeout
        attempts, last = 0, "no attempt yet"
        banner = 3.0  # short while nothing answers, so that a new attempt starts soon after sshd listens
        while True:
            if self.cancel.is_set():
                raise CycleCancelled()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(
                    f"{self.host.name} did not come back within {timeout:.0f} s after the kexec (no SSH login on a "
                    f"new boot after {attempts} attempts; last: {last})",
                    "kexec",
                )
            attempts += 1
            t_try = time.monotonic()
            try:
                client = connect(self.host, timeout=min(3.0, max(1.0, remaining)), banner_timeout=banner, quiet=True)
            except SshTargetError as exc:
                raise self.fail(f"{self.host.name} came back but refused the login: {exc.args[0]}", "kexec") from None
            except _Transient as exc:
                if str(exc) != last:  # log changes only: a host that is down fails the same way many times
                    self.note("reconnect-failed", {"attempt": attempts, "error": str(exc)}, t_try, table=False)
                last = str(exc)
                if "banner" in last:  # something answered but said nothing yet: maybe a slow sshd, wait longer
                    banner = min(banner + 1.0, 15.0)
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            t_auth = time.monotonic()
            try:
                status, out, _ = _run(client, "cat /proc/sys/kernel/random/boot_id", timeout=30)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                client.close()
                last = f"connected but the first command failed: {exc}"
                continue
            t_done = time.monotonic()
            boot = out.strip().splitlines()[-1] if out.strip() else ""
            if status == 0 and boot and boot != old_boot:
                return client, t_auth, t_done, boot, attempts
            if boot == old_boot:
                last = "still the old boot"
                err = self._remote_error(client)
                client.close()
                if err:
                    raise self.fail(f"the kexec did not happen on {self.host.name}: {err}", "kexec")
                time.sleep(0.5)
            else:
                client.close()
                last = f"boot id command exit {status}"

    def _remote_error(self, client: paramiko.SSHClient) -> str | None:
        with contextlib.suppress(Exception):
            status, out, _ = _run(client, f"cat {shlex.quote(posixpath.join(self.remote_dir, 'prepare.json'))}", 30)
            if status == 0:
                err = json.loads(out).get("error")
                if err:
                    return f"{err['type']}: {err['message']}"
        return None

    def execute(self) -> dict[str, Any]:
        try:
            return self._execute()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.stand_down_agent()
            self._fetch_results()
            raise self.fail(
                f"talking to {self.host.name} failed in phase {self.phase}: {type(exc).__name__}: {exc}"
            ) from exc
        except BaseException:
            self.stand_down_agent()
            self._fetch_results()
            raise
        finally:
            if self.chan is not None:
                self.chan.close()
            if self.client is not None:
                self.client.close()

    def _execute(self) -> dict[str, Any]:
        p, host = self.p, self.host
        total_gib = p.memfds * p.memfd_size / (1 << 30)
        work_timeout = p.timeout_s or (120 + 240 * total_gib)
        start_timeout = p.timeout_s or 180
        return_timeout = p.return_timeout_s or host.return_timeout_s or 600
        self.connect_first()
        self.check()
        facts = self.facts
        request = {
            **p.agent_request(),
            "next_kernel": facts["next_kernel"],
            "next_initrd": facts["next_initrd"],
            "pause_after": sorted(set(p.pause_after)),
            "next_phase": "shell",
            "confirm_kexec": True,
            "dry_run": self.dry_run,
        }
        (self.results / "request.json").write_text(json.dumps(request, indent=1))
        q = shlex.quote(self.remote_dir)
        stale = " ".join(shlex.quote(n) for n in RESULT_FILES)
        status, _, err = _run(
            self.client,
            f"mkdir -p {q} && cd {q} && rm -f {stale} continue-* && cat > request.json",
            stdin=json.dumps(request, indent=1).encode(),
        )
        if status != 0:
            raise self.fail(f"cannot write {self.remote_dir}/request.json on {self.host.name}: {err.strip()[-500:]}")
        self.emit(kind="state", name="running", text=f"{facts['hostname']} {facts['release']}")
        self.phase = "prepare"
        self.start_agent("prepare", self.client)
        _, _, t_agent = self.wait_mark(("agent-start",), start_timeout, "waiting for the agent to start")
        for phase in p.phases_before_load():
            self.phase = phase
            self.wait_mark(("phase-end",), work_timeout, f"in phase {phase}")
            if phase in request["pause_after"]:
                self.paused(phase, work_timeout)
        self.phase = "load"
        self.wait_mark(("phase-end",), work_timeout, "loading the next kernel")
        event, data, _ = self.wait_mark(
            ("kexec-ready", "dry-run-done", "aborted"), work_timeout, "waiting for the agent to be ready to kexec"
        )
        if event != "kexec-ready":
            if event == "aborted" or not self.dry_run:
                raise self.fail(f"the agent stood down before the kexec: {data.get('reason')}")
            return self.dry_run_result(data)
        self.phase = "kexec"
        old_boot = facts["boot_id"]
        t_go = time.monotonic()
        self.chan.send("kexec\n")
        self.confirmed = True
        self.note("kexec-confirmed", {}, t_go)
        self.emit(kind="state", name="kexec", text="waiting for the host to come back")
        hit = self.chan.wait_for(
            lambda ln: (m := _parse_mark(ln)) is not None and m[0] in ("kexec", "error"), 30, start=self._pos
        )
        if hit is not None and _parse_mark(hit[1])[0] == "error":
            raise self.fail(f"the agent reported: {self._agent_error() or _parse_mark(hit[1])[1].get('message')}")
        t_kexec = hit[1].host_time if hit is not None else t_go
        if hit is None:
            self.emit(kind="phase", name="kexec", status="begin", host_time=t_go)
        self.info["kexec_mark_seen"] = hit is not None
        self.chan.close()
        self.client.close()
        self.client, t_auth, t_back, new_boot, attempts = self.await_return(old_boot, return_timeout)
        self.note("ssh-back", {"boot_id": new_boot, "attempts": attempts}, t_back)
        self.emit(kind="phase", name="kexec", status="end", seconds=t_back - t_kexec, host_time=t_back)
        self.phase = "restore"
        self.start_agent("restore", self.client)
        self.wait_mark(("agent-start",), start_timeout, "waiting for the agent in the next kernel")
        self.wait_mark(("phase-end",), work_timeout, "retrieving the session")
        if "restore" in request["pause_after"]:
            self.paused("restore", work_timeout)
        self.phase = "verify"
        self.wait_mark(("phase-end",), work_timeout, "verifying")
        self.phase = "finish"
        self.wait_mark(("done",), work_timeout, "finishing the session")
        self.chan.wait_exit(30)
        self._fetch_results()
        self.emit(kind="state", name="done")
        prepare = json.loads((self.results / "prepare.json").read_text())
        restore = json.loads((self.results / "restore.json").read_text())
        result = self.agent_result(prepare, restore, t_kexec, t_back)
        result.update(
            {
                "target": f"ssh:{host.name}",
                "host": host.name,
                "address": host.address,
                "hostname": facts["hostname"],
                "dry_run": False,
                "blackout_breakdown": {
                    "kexec_to_login_s": t_auth - t_kexec,
                    "login_to_command_s": t_back - t_auth,
                    "kexec_mark_seen": self.info["kexec_mark_seen"],
                    "reconnect_attempts": attempts,
                },
                # the controlling host's time.monotonic() at the kexec, the login and the first command, to line
                # up with other logs timed by the same clock (a lab VM's serial console)
                "host_times": {"kexec": t_kexec, "login": t_auth, "first_command": t_back},
                "boot_id_before": old_boot,
                "boot_id_after": new_boot,
                "agent_start_s": t_agent - self.t0,
                "connect_s": self.info["connect_s"],
                "check_s": self.info["check_s"],
                "next_kernel": facts["next_kernel"],
                "next_initrd": facts["next_initrd"],
                "this_machine": self.info["this_machine"],
                "agent_matches_local": self.info["agent_matches_local"],
                "remote_results": self.remote_dir,
                "agent_log": str(self.agent_log),
                "serial_log": str(self.agent_log),
                "run_dir": str(self.workdir),
            }
        )
        return result

    def dry_run_result(self, data: dict) -> dict[str, Any]:
        self.chan.wait_exit(30)
        self._fetch_results()
        prepare = json.loads((self.results / "prepare.json").read_text())
        before = ("prepare", "convert", "preserve", "load")
        phases = {n: prepare["phases"][n] for n in before if n in prepare.get("phases", {})}
        self.emit(kind="state", name="done", text="dry run: stopped before the kexec")
        return {
            "verified": None,
            "dry_run": True,
            "pages_checked": 0,
            "session": prepare.get("session", self.p.session),
            "phases": phases,
            "blackout_s": None,
            "kernel_release_before": prepare.get("kernel_release_before"),
            "kernel_release_after": None,
            "memfds": [],
            "hash": prepare.get("hash_impl"),
            "stood_down": prepare.get("stood_down") or data,
            "would_kexec": {
                "kernel": self.facts["next_kernel"],
                "initrd": self.facts["next_initrd"],
                "cmdline": prepare.get("next_cmdline"),
            },
            "target": f"ssh:{self.host.name}",
            "host": self.host.name,
            "address": self.host.address,
            "hostname": self.facts["hostname"],
            "this_machine": self.info["this_machine"],
            "agent_matches_local": self.info["agent_matches_local"],
            "remote_results": self.remote_dir,
            "agent_log": str(self.agent_log),
            "run_dir": str(self.workdir),
        }


AGENT_SHA = ("agent.py", "liveupdate.py")


def _check_params(params: CycleParams) -> None:
    params.validate()
    if getattr(params, "workload", "memfd") != "memfd":
        raise ValueError(f"the {params.workload} workload runs on the qemu target only; over SSH the workload is memfd")
    if params.dump_after:
        raise ValueError("--dump-after needs the QEMU target (a vmcore is taken through QEMU); not over SSH")
    if params.ram_file or params.qemu_args:
        raise ValueError("ram_file and qemu_args are QEMU options; an SSH target has no VM")
    if params.kernel_args or params.kho_scratch:
        raise ValueError(
            "kernel_args and kho_scratch set the lab VM's command line; an SSH host boots with its own (the next "
            "kernel gets the running one's)"
        )


def failure_result(host_name: str, exc: CycleFailed) -> dict[str, Any]:
    """What ``--json`` prints for a host whose cycle failed: where, why, its record and agent log, and for a
    refused host the preconditions it misses."""
    out = {
        "host": host_name,
        "target": f"ssh:{host_name}",
        "verified": False,
        "error": str(exc),
        "failed_phase": exc.phase,
        "record_id": exc.record_id,
        "agent_log": str(exc.serial_log) if exc.serial_log else None,
    }
    if isinstance(exc, PreconditionFailed):
        out["missing"] = exc.missing
    return out


def run_ssh_cycle(
    host: LabHost | str,
    params: CycleParams | None = None,
    *,
    store: RecordStore | None = None,
    inventory: Inventory | None = None,
    on_event: Callable[[CycleEvent], None] | None = None,
    cancel: threading.Event | None = None,
    on_pause: Callable[[str, Any], None] | None = None,
    dry_run: bool = False,
    allow_this_machine: bool = False,
) -> dict[str, Any]:
    """Runs one cycle on ``host`` (a :class:`LabHost`, an inventory name or ``user@host:port``) over SSH and
    records it (kind ``lab.cycle``, params target ``ssh:NAME``). Returns the result dict; raises
    :class:`CycleFailed` (:class:`SshTargetError`, :class:`PreconditionFailed`, :class:`ThisMachineRefused` are
    kinds of it; recorded ``failed``) or :class:`CycleCancelled`. ``dry_run`` stops after the load: the kernel is
    unloaded and the session closed, nothing is kexeced; the record is ``ok`` with ``verified`` null."""
    params = params or CycleParams()
    _check_params(params)
    if isinstance(host, str):
        host = resolve_hosts([host], inventory)[0]
    if params.next_kernel:
        host = host.replace(next_kernel=params.next_kernel)
    store = store or open_store()
    record_params = {
        "target": f"ssh:{host.name}",
        **asdict(params),
        "dry_run": dry_run,
        "ssh": {
            "address": host.address,
            "results_dir": host.results_dir,
            "python": host.python,
            "workbench": host.workbench,
            "next_kernel": host.next_kernel,
            "next_initrd": host.next_initrd,
        },
    }
    return record_cycle(
        store,
        record_params,
        lambda run: _SshRunner(params, host, run, on_event, cancel, on_pause, dry_run, allow_this_machine),
    )


def run_ssh_cycles(
    hosts: list[LabHost],
    params: CycleParams | None = None,
    *,
    store: RecordStore | None = None,
    on_event: Callable[[str, CycleEvent], None] | None = None,
    cancel: threading.Event | None = None,
    dry_run: bool = False,
    allow_this_machine: bool = False,
) -> list[dict[str, Any]]:
    """Runs a cycle on every host at once (one thread each) and records each. Returns one entry per host, in
    order: the result, or ``{"host", "verified": False, "error", "failed_phase", "record_id", ...}``."""
    params = params or CycleParams()
    _check_params(params)
    store = store or open_store()
    cancel = cancel or threading.Event()

    def one(host: LabHost) -> dict[str, Any]:
        events = (lambda e: on_event(host.name, e)) if on_event else None
        try:
            return run_ssh_cycle(
                host,
                params,
                store=store,
                on_event=events,
                cancel=cancel,
                dry_run=dry_run,
                allow_this_machine=allow_this_machine,
            )
        except CycleFailed as exc:
            return failure_result(host.name, exc)
        except CycleCancelled:
            return {"host": host.name, "target": f"ssh:{host.name}", "verified": False, "error": "cancelled"}
        except Exception as exc:  # noqa: BLE001 (one host's bug must not hide the others' results)
            return {"host": host.name, "target": f"ssh:{host.name}", "verified": False, "error": repr(exc)}

    with ThreadPoolExecutor(max_workers=max(1, len(hosts)), thread_name_prefix="ssh-cycle") as pool:
        futures = [pool.submit(one, h) for h in hosts]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            cancel.set()
            for f in futures:
                with contextlib.suppress(BaseException):
                    f.result()
            raise


# -- a lab VM with sshd, for the tests -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SSHD_CONFIG = """\
Port 22
HostKey {guest}/ssh_host_ed25519_key
AuthorizedKeysFile {guest}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile /run/sshd.pid
UseDNS no
PrintMotd no
PrintLastLog no
Subsystem sftp /usr/lib/openssh/sftp-server
"""


class SshdLabVM:
    """The lab kernel in QEMU running Debian's OpenSSH server (the host's ``/usr/sbin/sshd`` through the 9p root),
    started by the guest's init with ``wb.sshd=`` and ``wb.phase=shell``, reachable on a free loopback port.

    Per VM: a fresh ed25519 host key and sshd_config in its results share (the guest's ``/tmp/wb-results``, which
    survives the kexec), a client key pair and a known_hosts file in ``workdir``. Use as a context manager: the VM
    is stopped on leaving, whatever happened. :meth:`host` is the :class:`LabHost` to run cycles against."""

    GUEST_DIR = "/tmp/wb-results"

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "vm",
        kernel=None,
        live_update: bool = True,
        memory_mb: int = 1024,
        cpus: int = 2,
        boot_timeout_s: float = 300.0,
        boot_attempts: int = 3,
    ):
        self.workdir = Path(workdir)
        self.name = name
        self.kernel = kernel
        self.live_update = live_update
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.boot_timeout_s = boot_timeout_s
        self.boot_attempts = boot_attempts
        self.failed_boots: list[str] = []  # serial tails of boots that died before init (retried)
        self.guest = self.workdir / "guest"
        self.client_key = self.workdir / "client_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.port: int | None = None
        self.vm = None
        self.initrd: Path | None = None
        self.accel = None

    def _keygen(self, path: Path, comment: str) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> SshdLabVM:
        from workbench.lab.accel import choose_accelerator
        from workbench.lab.initramfs import build_initramfs
        from workbench.lab.kernel import build_kernel, cache_root
        from workbench.lab.qemu import QemuVM, VMConfig

        self.kernel = self.kernel or build_kernel()
        self.initrd = build_initramfs()
        self.guest.mkdir(parents=True, exist_ok=True)
        host_key = self.guest / "ssh_host_ed25519_key"
        if not host_key.exists():
            self._keygen(host_key, f"workbench-{self.name}-host")
        if not self.client_key.exists():
            self._keygen(self.client_key, f"workbench-{self.name}-client")
        (self.guest / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        (self.guest / "sshd_config").write_text(SSHD_CONFIG.format(guest=self.GUEST_DIR))
        self.port = free_port()
        kind, b64 = host_key.with_suffix(".pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {kind} {b64}\n")
        # no_timer_check: a TCG guest on a busy host can fail the IO-APIC timer check and panic at boot
        args = ["console=ttyS0", "panic=-1", "loglevel=6", "no_timer_check", "wb.phase=shell"]
        if self.live_update:
            args += ["kho=on", "liveupdate=on"]
        args += [f"wb.python={sys.executable}", f"wb.repo={REPO_ROOT}", "wb.sshd=/usr/sbin/sshd"]
        guest_cache = cache_root() / "guest-cache"
        (guest_cache / "numba").mkdir(parents=True, exist_ok=True)
        self.accel = choose_accelerator(self.kernel.bzimage, self.initrd)
        config = VMConfig(
            kernel=self.kernel.bzimage,
            initrd=self.initrd,
            cmdline=" ".join(args),
            memory_mb=self.memory_mb,
            cpus=self.cpus,
            accel=self.accel.accel,
            shares={
                "hostroot": (Path("/"), True),
                "wbresults": (self.guest, False),
                "wbcache": (guest_cache, False),
            },
            ssh_port=self.port,
        )
        for attempt in range(1, self.boot_attempts + 1):
            self.vm = QemuVM(config, self.workdir / ("vm" if attempt == 1 else f"vm-boot{attempt}"))
            try:
                self.vm.start()
                hit = self.vm.wait_for(
                    lambda ln: any(m in ln.text for m in ("WB-MARK ready", "WB-MARK init-error", "Kernel panic")),
                    self.boot_timeout_s,
                )
                if hit is not None and "WB-MARK ready" in hit[1].text:
                    break
                if hit is not None and "init-error" in hit[1].text:
                    raise RuntimeError(f"the sshd lab VM {self.name} failed in init: {self.vm.serial_text()[-1500:]}")
                # the guest kernel died while booting (under TCG on a loaded host, e.g. "IO-APIC + timer doesn't
                # work"): that is not what a test is about, boot again
                self.vm.stop()
                self.failed_boots.append(self.vm.serial_text()[-3000:])
                if attempt == self.boot_attempts:
                    raise RuntimeError(
                        f"the sshd lab VM {self.name} did not come up in {attempt} boots: {self.failed_boots[-1]}"
                    )
            except BaseException:
                self.stop()
                raise
        if "WB-MARK sshd-started" not in self.vm.serial_text():
            self.stop()
            log = self.guest / "sshd.log"
            raise RuntimeError(f"sshd did not start in {self.name}: {log.read_text() if log.exists() else ''}")
        return self

    def host(self, **changes: Any) -> LabHost:
        """This VM as a :class:`LabHost`: root with the client key, the per-run known_hosts, the host's Python and
        checkout (seen through 9p), the results share, and the lab kernel and initramfs as the next kernel."""
        base = LabHost(
            name=self.name,
            host="127.0.0.1",
            port=self.port,
            user="root",
            key=str(self.client_key),
            known_hosts=str(self.known_hosts),
            python=sys.executable,
            workbench=str(REPO_ROOT),
            results_dir=self.GUEST_DIR,
            next_kernel=str(self.kernel.bzimage),
            next_initrd=str(self.initrd),
            env={"NUMBA_CACHE_DIR": "/tmp/wb-cache/numba"},
            connect_timeout_s=60.0,
        )
        return dataclasses.replace(base, **changes)

    def marks(self) -> list[tuple[str, float]]:
        """The WB-MARK lines of the serial console (init's marks) with their host times."""
        return [(ln.text.split("WB-MARK ", 1)[1], ln.host_time) for ln in self.vm.lines if "WB-MARK " in ln.text]

    def stop(self) -> None:
        if self.vm is not None:
            self.vm.stop()

    def __enter__(self) -> SshdLabVM:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
