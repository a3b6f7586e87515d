"""The build tools this machine must have for what the workbench compiles on it (the liveupdate selftests, the
memfd-from-birth library): whether a tool is there, and its version, which keys the caches of what it built."""

from __future__ import annotations

import shutil
import subprocess

from workbench.lab.errors import LabError

__all__ = ["tool_version"]


def tool_version(tool: str, *, what: str, purpose: str, error: type[LabError]) -> str:
    """The first line of ``tool --version``.

    :param tool: the tool's name on ``PATH``, or its path
    :param what: what the tool is, for the message (``C compiler``, ``make``)
    :param purpose: what is compiled with it, for the message (``the liveupdate selftests``)
    :param error: the error to raise (the caller's package's)
    :raises error: the tool is missing, does not run, or prints no version"""
    if shutil.which(tool) is None:
        raise error(
            f"no {what}: {tool!r} is not on PATH; {purpose} are compiled on this machine, so install build-essential "
            "(workbench/lab/scripts/install-system-deps.sh does, as root)"
        )
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise error(f"the {what} {tool!r} does not run: {exc}") from None
    lines = (out.stdout or out.stderr).strip().splitlines()
    if out.returncode or not lines:
        raise error(f"the {what} {tool!r} does not run: `{tool} --version` exited {out.returncode}")
    return lines[0].strip()
