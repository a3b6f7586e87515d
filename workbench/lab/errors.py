"""Exceptions raised by :mod:`workbench.lab`: one base class, :class:`LabError`, and one subclass per kind of
failure, so that a caller can catch every lab failure at once or one kind precisely.

The one exception outside the tree is :class:`CycleCancelled`: the user asked to stop, which is an interrupt
(a :class:`KeyboardInterrupt`), not a failure, and ``except Exception`` must not swallow it.

This module imports nothing from the workbench: the agent imports it on targets, and every lab module may import
it without a cycle."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "LabError",
    "InvalidCycle",
    "KernelBuildError",
    "KernelConfigError",
    "KernelWithoutLiveUpdate",
    "CycleFailed",
    "TargetLost",
    "CycleTimedOut",
    "PreflightRefused",
    "HandoverRefusedLive",
    "PreflightUnavailable",
    "CycleCancelled",
    "Unverified",
    "SshTargetError",
    "PreconditionFailed",
    "ThisMachineRefused",
    "InventoryError",
    "QMPError",
    "CriuUnavailable",
    "DumpFailed",
    "RestoreFailed",
    "SelftestBuildError",
    "SelftestFailed",
    "UnknownName",
    "ShareFileError",
    "ShareFileMalformed",
]


class LabError(RuntimeError):
    """Base class of every failure of :mod:`workbench.lab`."""


class InvalidCycle(LabError, ValueError):
    """A cycle's parameters are wrong (a size that is not whole pages, an option the target does not have, ...);
    nothing was started. The message names the parameter and what to give instead."""


class UnknownName(InvalidCycle, LookupError):
    """A workload or target name that no registered plugin answers to; the message lists the known names."""


class KernelBuildError(LabError):
    """The lab kernel could not be fetched, configured or built; the message says which step and where its log is."""


class KernelConfigError(KernelBuildError):
    """The kernel's configuration lacks an option the lab needs after ``olddefconfig``."""


class KernelWithoutLiveUpdate(LabError):
    """A kernel lacks KHO/LUO: no cycle can run on it."""


class CycleFailed(LabError):
    """A cycle did not complete. ``phase`` says where, ``serial_log`` what the target printed (the serial console
    of a VM; the agent's output over SSH, ``log_name`` says which), ``diagnosis`` what that log says went wrong
    (a refused handover, a panic)."""

    def __init__(
        self,
        message: str,
        phase: str,
        serial_log: Path | None,
        record_id: str | None = None,
        log_name: str = "serial log",
    ):
        super().__init__(message)
        self.phase = phase
        self.serial_log = serial_log
        self.record_id = record_id
        self.log_name = log_name
        #: what the target's log says went wrong (:meth:`workbench.lab.diagnosis.Diagnosis.as_dict`), if anything
        self.diagnosis: dict | None = None

    def __str__(self) -> str:
        where = f"; {self.log_name}: {self.serial_log}" if self.serial_log else ""
        return f"cycle failed in phase {self.phase}: {self.args[0]}{where}"


class CycleTimedOut(CycleFailed):
    """The target printed nothing that the cycle waited for within its time: hung, or far slower than expected."""


class PreflightUnavailable(LabError):
    """A target cannot run the preflight (the next kernel's files are not at hand); the message says why. The
    cycle records it and goes on."""


class HandoverRefusedLive(LabError):
    """Raised by the agent just before the kexec: what the running kernel hands over (read live) names a format
    the next kernel does not accept (:mod:`workbench.lab.handover_live`). The host reports it as
    :class:`PreflightRefused`."""


class PreflightRefused(CycleFailed):
    """The preflight found that the next kernel cannot accept what the running kernel hands over (the message
    names the subsystem): before anything booted (from the kernels' files), or in the target just before the kexec
    (the live check of what it hands over). ``--force`` runs the cycle anyway."""


class TargetLost(CycleFailed):
    """The target went away during the cycle: the VM stopped, or the host did not come back after the kexec."""


class CycleCancelled(KeyboardInterrupt):
    """The user cancelled the cycle; the target was torn down (a VM) or left as it was (an SSH host)."""


class Unverified(LabError):
    """A cycle completed but its data came back different (raised inside the record, so that it is recorded
    ``failed``; the caller gets the result with ``verified`` false and the differing pages)."""

    def __init__(self, result: dict):
        counts = {m["memfd"]: m["differing_count"] for m in result["memfds"] if m["differing_count"]}
        sizes = [m for m in result["memfds"] if m["size"] != m["expected_size"]]
        detail = f"differing pages per memfd: {counts}" if counts else ""
        if sizes:
            detail += f" memfds with the wrong size: {[m['memfd'] for m in sizes]}"
        super().__init__(f"verification failed: {detail or 'no memfd came back'}")
        self.result = result


class SshTargetError(CycleFailed):
    """The SSH host could not be reached or refused a step (authentication, host key, a command)."""


class PreconditionFailed(CycleFailed):
    """The SSH host lacks something the cycle needs; ``missing`` lists what, each with how to provide it."""

    def __init__(self, message: str, missing: list[str], log: Path | None = None):
        super().__init__(message, "check", log, log_name="agent log")
        self.missing = missing


class ThisMachineRefused(PreconditionFailed):
    """The SSH target is the machine the workbench runs on, which is never kexec'd without the explicit flag."""


class InventoryError(LabError, ValueError):
    """The lab-host inventory cannot be read, or names a host that is not in it."""


class QMPError(LabError):
    """QEMU's monitor refused a command, or the connection to it failed."""


class CriuUnavailable(LabError):
    """CRIU is missing, too old, or cannot run on this kernel; the message says what its check printed."""


class DumpFailed(LabError):
    """``criu dump`` failed; the message carries the errors from its log."""


class RestoreFailed(LabError):
    """``criu restore`` failed; the message carries the errors from its log."""


class SelftestBuildError(LabError):
    """A kernel's own liveupdate selftests could not be built from its source tree (no tree, no C compiler or
    ``make``, a failed header install or compile); the message says which step, its last lines of output, and what
    to do."""


class SelftestFailed(LabError):
    """A stage of a kernel liveupdate selftest (run by the ``selftest`` workload's agent) did not pass; the message
    names the selftest, the stage, its exit status and the selftest's own failure line."""


class ShareFileError(LabError, ValueError):
    """A file the agent left in the run's share cannot be trusted as it is: missing, larger than its limit, a
    symlink, not a regular file, or named outside the run folder. ``path`` is the file; the message says what is
    wrong with it and what the host expected. The cycle that needed it fails; nothing else is read."""

    def __init__(self, message: str, path: Path, field: str | None = None):
        super().__init__(message)
        self.path = path
        #: where in the file the problem is (``memfds[1].differing_count``), None for the file as a whole
        self.field = field


class ShareFileMalformed(ShareFileError):
    """An agent's file is not what the protocol says it holds: not JSON, not an object, or a field of the wrong
    type (``field`` names it)."""
