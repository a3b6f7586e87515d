"""Environment snapshots: what an experiment ran on, so that a run can be compared with another months later."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["snapshot", "git_state", "cpu_model", "boot_id", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent

_PACKAGES = (
    "live-update-workbench",
    "numpy",
    "numba",
    "pandas",
    "pyarrow",
    "drgn",
    "plotly",
    "ipywidgets",
    "jupyterlab",
    "papermill",
    "pylibfdt",
    "dask",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(path: Path = REPO_ROOT) -> dict[str, object]:
    """The commit of the checkout at ``path`` and whether its work tree differs from it."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def snapshot() -> dict[str, object]:
    """Everything about the host that may explain a difference between two runs."""
    return {
        "packages": package_versions(),
        "git": git_state(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "hostname": socket.gethostname(),
        "host_kernel_release": platform.release(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "boot_id": boot_id(),
    }
