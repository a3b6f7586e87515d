"""Running CRIU inside the target: its version and ``criu check``, its environment (the nftables shim), its logs.

Guest side of the ``criu`` workload (:mod:`workbench.lab.workloads.criu`)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from workbench.lab.errors import CriuUnavailable

__all__ = ["CRIU_MIN_VERSION", "check_criu", "criu_env", "parse_version", "run_criu", "seize_offset", "log_errors"]

CRIU_MIN_VERSION = (3, 17)


def parse_version(text: str) -> tuple[int, ...]:
    """``Version: 3.17.1`` (``criu --version``) → (3, 17, 1)."""
    m = re.search(r"Version:\s*(\d+(?:\.\d+)*)", text)
    if not m:
        raise ValueError(f"no version in {text.strip()[:200]!r}")
    return tuple(int(x) for x in m.group(1).split("."))


def log_errors(log: str, limit: int = 8) -> list[str]:
    return [ln.strip() for ln in log.splitlines() if "Error" in ln or "error" in ln.split(")", 1)[-1][:40]][-limit:]


def criu_env(preload: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if preload:
        env["LD_PRELOAD"] = preload
    return env


def check_criu(
    path: str,
    minimum: tuple[int, ...] | None = CRIU_MIN_VERSION,
    preload: str | None = None,
    args: tuple[str, ...] = (),
) -> dict:
    """``criu --version`` (unless ``minimum`` is None) and ``criu check`` (``args`` narrow it, e.g. ``--feature
    mnt_id``); raises :class:`CriuUnavailable` with what is wrong and what to do. Checks that fail without stopping
    CRIU's kernel probe (a terminal device, tun, veth: nothing this workload uses) are recorded, not fatal."""
    if not Path(path).exists():
        raise CriuUnavailable(
            f"CRIU not found at {path}: install Debian's criu on the host (workbench/lab/scripts/"
            "install-system-deps.sh); the lab VM runs the host's binary over 9p"
        )
    shown = "?"
    if minimum is not None:
        shown = _version_at_least(path, minimum)
    t0 = time.monotonic()
    chk = subprocess.run([path, "check", *args], capture_output=True, text=True, timeout=300, env=criu_env(preload))
    text = (chk.stdout + chk.stderr).strip()
    info = {"path": path, "version": shown, "check": text, "check_rc": chk.returncode, "check_s": time.monotonic() - t0}
    info["preload"] = preload
    info["check_errors"] = log_errors(text, 50)
    if chk.returncode != 0 and ("Could not initialize kernel features detection" in text or not info["check_errors"]):
        hint = ""
        if "Unexpected rt vDSO area bounds" in text:
            hint = (
                " -- CRIU before 4.1 does not know the [vvar_vclock] mapping of the x86 vDSO (Linux 6.13 and later);"
                " boot the lab kernel with vdso=0 (the CRIU cycle does) or use CRIU 4.1+"
            )
        if "Can't create nftables table" in text:
            hint = (
                " -- CRIU before 4.0 stops when the kernel has no nf_tables; the lab preloads a shim that answers"
                " CRIU's probe (workbench.lab.workloads.criu.program.NFT_SHIM_SOURCE)"
            )
        errors = "; ".join(log_errors(text)) or text[-500:]
        raise CriuUnavailable(f"`criu check` failed with CRIU {shown} on Linux {os.uname().release}: {errors}{hint}")
    return info


def _version_at_least(path: str, minimum: tuple[int, ...]) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise CriuUnavailable(f"cannot run {path}: {exc}") from None
    try:
        version = parse_version(out.stdout + out.stderr)
    except ValueError:
        raise CriuUnavailable(f"{path} --version did not print a CRIU version: {out.stdout[:200]!r}") from None
    shown = ".".join(map(str, version))
    if version < tuple(minimum):
        raise CriuUnavailable(
            f"CRIU {shown} at {path} is too old: the workbench needs CRIU {'.'.join(map(str, minimum))} or newer"
        )
    return shown


def seize_offset(log: str) -> float | None:
    """Seconds from CRIU's start to the moment it began freezing the task (its log's own timestamps)."""
    m = re.search(r"^\((\d+\.\d+)\)\s+(?:Seized task|Freezing tasks|freezing processes)", log, re.M)
    return float(m.group(1)) if m else None


def run_criu(cmd: list[str], log: Path, preload: str | None = None, **kw) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=criu_env(preload), **kw)
    seconds = time.monotonic() - t0
    text = log.read_text(errors="replace") if log.exists() else ""
    return proc.returncode, seconds, text + proc.stdout + proc.stderr
