"""The agent's files on an SSH host, moved over SFTP: the agent copied to a host without a workbench checkout of
its own (:data:`AGENT_FILES`), the hashes that tell whether a host's agent is this checkout's, and the files the
agent leaves in its results folder (:data:`RESULT_FILES`), copied back after a cycle."""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
from pathlib import Path

import paramiko

from workbench.lab import protocol

__all__ = [
    "AGENT_FILES",
    "AGENT_SHA",
    "RESULT_FILES",
    "agent_dirs",
    "copy_agent",
    "local_agent_sha256",
    "write_remote_file",
    "fetch_results",
]

#: what the agent needs on the host to run the memfd workload, the one an SSH host runs (copied over SFTP when
#: the host has no workbench of its own)
AGENT_FILES = (
    "workbench/__init__.py",
    "workbench/jsonfile.py",
    "workbench/lab/__init__.py",
    "workbench/lab/agent.py",
    "workbench/lab/agent_core.py",
    "workbench/lab/errors.py",
    "workbench/lab/faults.py",
    "workbench/lab/handover_live.py",
    "workbench/lab/liveupdate.py",
    "workbench/lab/protocol.py",
    "workbench/lab/workload.py",
    "workbench/lab/workloads/__init__.py",
    "workbench/lab/workloads/memfd.py",
    "workbench/lab/workloads/sessions.py",
    "workbench/kernels/__init__.py",
    "workbench/kernels/pagehash.py",
)
#: the agent's modules (in ``workbench/lab``) whose hashes tell whether the host's agent is this checkout's
AGENT_SHA = (
    "agent.py",
    "agent_core.py",
    "handover_live.py",
    "liveupdate.py",
    "protocol.py",
    "workload.py",
    "workloads/memfd.py",
    "workloads/sessions.py",
)
#: the agent's files in the results folder (removed before a cycle that reuses a folder, copied back after)
RESULT_FILES = protocol.RESULT_FILES
_PKG_ROOT = Path(__file__).resolve().parents[3]  # the folder that holds the workbench package


def agent_dirs(agent_dir: str) -> list[str]:
    """The folders on the host that :func:`copy_agent` puts files in, under ``agent_dir`` (a path on the host)."""
    return sorted({posixpath.dirname(posixpath.join(agent_dir, rel)) for rel in AGENT_FILES})


def copy_agent(client: paramiko.SSHClient, agent_dir: str) -> None:
    """Copies :data:`AGENT_FILES` from this checkout into ``agent_dir`` on ``client``'s host, whose
    :func:`agent_dirs` must exist; ``agent_dir`` then goes on the host's ``PYTHONPATH``."""
    sftp = client.open_sftp()
    try:
        for rel in AGENT_FILES:
            sftp.put(str(_PKG_ROOT / rel), posixpath.join(agent_dir, rel))
    finally:
        sftp.close()


def local_agent_sha256() -> dict[str, str]:
    """The SHA-256 of this checkout's :data:`AGENT_SHA` modules, by file name, as the probe reports a host's
    (``agent_sha256``)."""
    lab = _PKG_ROOT / "workbench/lab"
    return {n: hashlib.sha256((lab / n).read_bytes()).hexdigest() for n in AGENT_SHA if (lab / n).exists()}


def write_remote_file(client: paramiko.SSHClient, path: str, text: str) -> None:
    """Writes ``text`` into the file ``path`` on ``client``'s host, replacing it."""
    sftp = client.open_sftp()
    try:
        with sftp.open(path, "w") as f:
            f.write(text)
    finally:
        sftp.close()


def fetch_results(
    client: paramiko.SSHClient | None, remote_dir: str, local_dir: Path, names: tuple[str, ...] = RESULT_FILES
) -> None:
    """Copies the files ``names`` that exist in ``remote_dir`` on ``client``'s host into ``local_dir``. Never
    raises: called after failures too, when the connection may be gone (then nothing is copied)."""
    if client is None or client.get_transport() is None or not client.get_transport().is_active():
        return
    with contextlib.suppress(Exception):
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(30)
        try:
            for name in names:
                with contextlib.suppress(OSError):
                    sftp.get(posixpath.join(remote_dir, name), str(local_dir / name))
        finally:
            sftp.close()
