"""The facts about a lab host that decide whether it can run a live-update cycle, found out on the host itself.

This file runs ON the SSH host: :func:`workbench.lab.ssh.preconditions.probe_host` sends it to the host's Python
on standard input (``python3 - CONFIG``) and reads the one JSON object it prints, which
:func:`~workbench.lab.ssh.preconditions.missing_preconditions` then judges on this side. It therefore uses the
standard library only, and from the workbench only the host's own agent (found on ``pythonpath``), to check that
it imports and which protocol it speaks. It runs as a script as well::

    python3 probe.py '{"next_kernel": null, "next_initrd": null, "results_dir": "/var/tmp/workbench",
                       "pythonpath": null, "required_config": ["CONFIG_LIVEUPDATE"]}'

CONFIG is a JSON object: ``next_kernel`` and ``next_initrd``, the next kernel's files on the host (``{release}``
is replaced by the running kernel's release; null: ``/boot/vmlinuz-RELEASE`` and, if it exists,
``/boot/initrd.img-RELEASE``); ``results_dir``, the results folder the agent will use (it may not exist yet);
``pythonpath``, the folder that holds the host's ``workbench`` package (null: Python's own path);
``required_config``, the kernel options the running kernel must have (``y`` or ``m``); ``agent_files`` (optional),
the agent's files, relative to its folder, whose SHA-256 to report."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import os
import socket
import sys
from typing import Any

__all__ = [
    "read_text",
    "kernel_config",
    "missing_config",
    "file_state",
    "next_boot_files",
    "results_folder",
    "python_modules",
    "agent_facts",
    "collect",
    "main",
]


def read_text(path: str) -> str | None:
    """The contents of the file ``path`` without surrounding whitespace, or None if it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def kernel_config(release: str) -> str | None:
    """The running kernel's configuration (``/proc/config.gz``, else ``/boot/config-RELEASE``), or None.
    ``release``: the running kernel's release (``uname -r``)."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f.read()
    except OSError:
        return read_text("/boot/config-" + release)


def missing_config(config: str, required: list[str]) -> list[str]:
    """The options of ``required`` (``CONFIG_...`` names) that ``config`` (a kernel .config text) does not set to
    ``y`` or ``m``."""
    options = dict(line.split("=", 1) for line in config.splitlines() if line.startswith("CONFIG_") and "=" in line)
    return [name for name in required if options.get(name) not in ("y", "m")]


def file_state(path: str | None) -> str | None:
    """``ok`` if ``path`` is a readable file, else what is wrong with it (``missing``, ``not a file``, ``not
    readable``); None for no path."""
    if path is None:
        return None
    if not os.path.exists(path):
        return "missing"
    if not os.path.isfile(path):
        return "not a file"
    if not os.access(path, os.R_OK):
        return "not readable"
    return "ok"


def next_boot_files(next_kernel: str | None, next_initrd: str | None, release: str) -> tuple[str, str | None]:
    """The next kernel and its initrd (None for none) given the configured ``next_kernel`` and ``next_initrd``
    (paths with an optional ``{release}``, or None) and ``release``, the running kernel's release. Without a
    configured kernel, the running release's ``/boot/vmlinuz-RELEASE`` and, if it exists, its initrd."""
    kernel = (next_kernel or "/boot/vmlinuz-{release}").replace("{release}", release)
    initrd = next_initrd
    if initrd:
        initrd = initrd.replace("{release}", release)
    elif not next_kernel and os.path.exists("/boot/initrd.img-" + release):
        initrd = "/boot/initrd.img-" + release
    return kernel, initrd


def results_folder(results_dir: str) -> dict[str, Any]:
    """Where the results folder ``results_dir`` (a path, existing or not) would live: ``results_fs``, the file
    system type of the mount that holds it (None if none was found), ``results_mount``, that mount point, and
    ``results_writable``, whether its nearest existing ancestor is writable (so that it can be created)."""
    existing = results_dir
    while not os.path.exists(existing) and existing not in ("/", ""):
        existing = os.path.dirname(existing)
    real = os.path.realpath(existing)
    best, fstype = "", None
    for line in (read_text("/proc/self/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mount = parts[1].replace("\\040", " ")
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, fstype = mount, parts[2]
    return {"results_fs": fstype, "results_mount": best, "results_writable": os.access(existing, os.W_OK)}


def python_modules() -> dict[str, Any]:
    """The versions of numpy (the agent needs it; ``numpy_error`` says why it does not import) and numba (the
    fast page hash, optional) in this Python, None for a module that does not import."""
    out: dict[str, Any] = {}
    try:
        import numpy

        out["numpy"] = numpy.__version__
    except Exception as exc:  # noqa: BLE001 (any failure to import is reported, whatever it is)
        out["numpy"] = None
        out["numpy_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import numba

        out["numba"] = numba.__version__
    except Exception:  # noqa: BLE001
        out["numba"] = None
    return out


def agent_facts(pythonpath: str | None, files: tuple[str, ...] = ("agent.py", "liveupdate.py")) -> dict[str, Any]:
    """Whether the host's agent imports: ``agent``, the path of its ``agent.py`` (None if it does not import,
    ``agent_error`` says why), ``agent_protocol``, the protocol it speaks (the agent's ``PROTOCOL``, else that of
    ``workbench.lab.protocol`` beside it, else 1), and ``agent_sha256``, the SHA-256 of each of ``files`` (paths
    relative to the agent's folder) that exists. ``pythonpath``: the folder that holds the ``workbench`` package,
    put first on ``sys.path`` (None: Python's own path)."""
    if pythonpath:
        sys.path.insert(0, pythonpath)
    try:
        agent = importlib.import_module("workbench.lab.agent")
        importlib.import_module("workbench.lab.liveupdate")
        protocol = getattr(agent, "PROTOCOL", None)
        if protocol is None:
            try:
                protocol = importlib.import_module("workbench.lab.protocol").PROTOCOL
            except (ImportError, AttributeError):
                protocol = 1
        lab = os.path.dirname(agent.__file__)
        sha256 = {}
        for name in files:
            path = os.path.join(lab, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    sha256[name] = hashlib.sha256(f.read()).hexdigest()
    except Exception as exc:  # noqa: BLE001 (an agent that does not import is a fact to report)
        return {"agent": None, "agent_error": f"{type(exc).__name__}: {exc}"}
    return {"agent": agent.__file__, "agent_protocol": protocol, "agent_sha256": sha256}


def collect(config: dict[str, Any]) -> dict[str, Any]:
    """Every fact about this machine for ``config`` (the JSON object described in the module's docstring): who
    runs (``uid``), which Python (``python``, ``executable``), which boot and machine (``boot_id``,
    ``machine_id``, ``hostname``, ``release``, ``arch``), what the running kernel allows (``cmdline``,
    ``liveupdate_device``, ``kexec_load_disabled``, ``lockdown``, ``config_missing`` when its configuration can
    be read), the next kernel's files and their state, the results folder (:func:`results_folder`), the Python
    modules (:func:`python_modules`) and, when numpy imports, the agent (:func:`agent_facts`)."""
    uname = os.uname()
    out: dict[str, Any] = {
        "uid": os.geteuid(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "boot_id": read_text("/proc/sys/kernel/random/boot_id"),
        "machine_id": read_text("/etc/machine-id") or read_text("/var/lib/dbus/machine-id"),
        "hostname": socket.gethostname(),
        "release": uname.release,
        "arch": uname.machine,
        "cmdline": read_text("/proc/cmdline") or "",
        "liveupdate_device": os.path.exists("/dev/liveupdate"),
        "kexec_load_disabled": read_text("/proc/sys/kernel/kexec_load_disabled"),
        "lockdown": read_text("/sys/kernel/security/lockdown"),
    }
    kconfig = kernel_config(uname.release)
    if kconfig is not None:
        out["config_missing"] = missing_config(kconfig, config["required_config"])
    kernel, initrd = next_boot_files(config["next_kernel"], config["next_initrd"], uname.release)
    out["next_kernel"], out["next_initrd"] = kernel, initrd
    out["next_kernel_state"], out["next_initrd_state"] = file_state(kernel), file_state(initrd)
    out.update(results_folder(config["results_dir"]))
    out.update(python_modules())
    if out["numpy"]:
        files = tuple(config.get("agent_files", ("agent.py", "liveupdate.py")))
        out.update(agent_facts(config["pythonpath"], files))
    return out


def main(argv: list[str] | None = None) -> int:
    """Prints the facts (:func:`collect`) as one line of JSON. ``argv``: the arguments after the program name,
    one CONFIG JSON object (``sys.argv[1:]`` if not given)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: probe.py CONFIG (a JSON object, see the module's docstring)", file=sys.stderr)
        return 2
    print(json.dumps(collect(json.loads(args[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
