"""What a lab host must offer before a live-update cycle may start on it, and whether it is this very machine.

:func:`probe_host` runs :mod:`workbench.lab.ssh.probe` with the host's Python and returns its facts;
:func:`missing_preconditions` names every precondition they fail (root, ``/dev/liveupdate``, ``kho=on`` and
``liveupdate=on`` on /proc/cmdline, the kernel options, kexec allowed, the next kernel and its initrd readable,
a results folder on a file system that survives the kexec, numpy, an agent that imports and speaks
:data:`AGENT_PROTOCOL`); :func:`this_machine` tells whether the host is the machine the workbench runs on."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shlex
import socket
from pathlib import Path
from typing import Any

import paramiko

from workbench.environment import boot_id
from workbench.lab.inventory import LabHost
from workbench.lab.ssh.agent_files import AGENT_SHA
from workbench.lab.ssh.connection import run_command

__all__ = [
    "AGENT_PROTOCOL",
    "REQUIRED_CONFIG",
    "VOLATILE_FS",
    "PROBE_SCRIPT",
    "this_machine",
    "probe_host",
    "missing_preconditions",
]

#: the agent protocol the SSH target speaks (an agent's ``PROTOCOL``; 1 for an agent without one)
AGENT_PROTOCOL = 2
#: the kernel options the running kernel must have for a cycle
REQUIRED_CONFIG = ("CONFIG_KEXEC_FILE", "CONFIG_KEXEC_HANDOVER", "CONFIG_LIVEUPDATE", "CONFIG_LIVEUPDATE_MEMFD")
#: file systems that do not survive a kexec: the results folder must not be on one
VOLATILE_FS = ("tmpfs", "ramfs", "devtmpfs", "proc", "sysfs")
#: the probe, sent to the host's Python on standard input
PROBE_SCRIPT = Path(__file__).with_name("probe.py")

_TRUE = ("on", "1", "y", "yes", "true")


def _cmdline_flag(cmdline: str, name: str) -> bool:
    """Whether ``cmdline`` (a kernel command line) turns ``name`` on (``name=on``, ``=1``, ``=y``, ...)."""
    for arg in cmdline.split():
        key, _, value = arg.partition("=")
        if key == name:
            return value.lower() in _TRUE
    return False


def _local_addresses() -> set[str]:
    """This machine's IP addresses, loopback included."""
    import psutil

    out = {"127.0.0.1", "::1"}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(a.address.split("%")[0])
    return out


def _resolves_locally(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves to a loopback or local address."""
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
    """This machine's machine-id, or None."""
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            return Path(p).read_text().strip() or None
    return None


def this_machine(host: LabHost, facts: dict[str, Any]) -> dict[str, Any]:
    """Is ``host`` the machine the workbench runs on? The boot id decides: the same boot id is the same running
    kernel (a container on this machine included), which a kexec would replace. A matching machine-id or a local
    address alone is a VM or a port forward sharing this machine's files or network, noted but not refused; with
    no boot id to compare, either one counts as this machine.

    ``host``: the inventory entry (its address); ``facts``: from :func:`probe_host` (``boot_id``,
    ``machine_id``). Returns ``is_this_machine`` and the evidence: ``same_boot_id``, ``same_machine_id``,
    ``local_address``."""
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


def probe_host(
    client: paramiko.SSHClient, host: LabHost, pythonpath: str | None, results_dir: str, env: dict[str, str]
) -> dict[str, Any]:
    """Runs :mod:`workbench.lab.ssh.probe` with the host's Python and returns its facts (raises RuntimeError if
    that Python is missing or fails). ``client``: connected to ``host``, the inventory entry (its Python and next
    kernel); ``pythonpath``: the host's folder that holds the ``workbench`` package (None: Python's own path);
    ``results_dir``: the results folder on the host; ``env``: environment variables for the host's Python."""
    cfg = {
        "next_kernel": host.next_kernel,
        "next_initrd": host.next_initrd,
        "results_dir": results_dir,
        "pythonpath": pythonpath,
        "required_config": list(REQUIRED_CONFIG),
        "agent_files": list(AGENT_SHA),
    }
    envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    cmd = f"cd / && env {envs} {shlex.quote(host.python)} - {shlex.quote(json.dumps(cfg))}"
    status, out, err = run_command(
        client, cmd, timeout=max(120.0, host.connect_timeout_s), stdin=PROBE_SCRIPT.read_bytes()
    )
    if status != 0:
        if status == 127:
            raise RuntimeError(f"{host.python} was not found on {host.name} (set python = ... in the inventory)")
        raise RuntimeError(f"the probe with {host.python} failed on {host.name} (exit {status}): {err.strip()[-800:]}")
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"the probe printed no result on {host.name}: {out[-500:]} {err[-500:]}")


def missing_preconditions(facts: dict[str, Any], agent_copied: bool) -> list[tuple[str, str]]:
    """[(short name, explanation)] for every precondition ``facts`` (from :func:`probe_host`) fail.
    ``agent_copied``: the agent was copied to the host (it has no workbench of its own), which the explanation
    of an agent that does not import names."""
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
