"""Exceptions raised while opening a kernel for inspection or reading its KHO/LUO state.

Each one says what went wrong and what to do about it; the attributes carry the facts (paths, build ids, missing
symbols) for callers that want to react programmatically.
"""

from __future__ import annotations

from pathlib import Path

from workbench.lab.kernel import KernelWithoutLiveUpdate

__all__ = [
    "InspectError",
    "DebugInfoNotFound",
    "VmlinuxMismatch",
    "MissingKernelSupport",
    "NotRoot",
    "LiveKernelUnavailable",
    "TruncatedDump",
    "UnreadableDump",
    "VmUnreachable",
    "QmpBusy",
    "UnsupportedLayout",
]


class InspectError(RuntimeError):
    """Base class of every error of :mod:`workbench.inspect`."""


class DebugInfoNotFound(InspectError):
    """No usable kernel debug info: no vmlinux given or found, or the vmlinux has no DWARF."""

    def __init__(self, message: str, vmlinux: Path | None = None, build_id: str | None = None):
        super().__init__(message)
        self.vmlinux = vmlinux
        self.build_id = build_id


class VmlinuxMismatch(InspectError):
    """The vmlinux is not the one the kernel (or dump) was built from: build id or release differ."""

    def __init__(
        self,
        message: str,
        vmlinux: Path,
        expected_build_id: str | None,
        actual_build_id: str | None,
        release: str | None = None,
    ):
        super().__init__(message)
        self.vmlinux = vmlinux
        self.expected_build_id = expected_build_id
        self.actual_build_id = actual_build_id
        self.release = release


class MissingKernelSupport(InspectError, KernelWithoutLiveUpdate):
    """The kernel's debug info lacks the KHO or LUO globals: it was built without ``CONFIG_KEXEC_HANDOVER`` or
    ``CONFIG_LIVEUPDATE`` (``options`` lists which, ``missing`` the symbols that were looked up)."""

    def __init__(self, message: str, options: list[str], missing: list[str]):
        super().__init__(message)
        self.options = options
        self.missing = missing


class NotRoot(InspectError, PermissionError):
    """Reading the running kernel (``/proc/kcore``) needs root."""


class LiveKernelUnavailable(InspectError):
    """This system offers no way to read its own kernel (no ``/proc/kcore``)."""


class TruncatedDump(InspectError):
    """A vmcore is shorter than its headers say: it was cut off while being written or copied."""

    def __init__(self, message: str, path: Path, expected_size: int | None, actual_size: int):
        super().__init__(message)
        self.path = path
        self.expected_size = expected_size
        self.actual_size = actual_size


class UnreadableDump(InspectError):
    """A file that is not a kernel dump drgn can read (not ELF, kdump or flattened kdump, or damaged)."""


class VmUnreachable(InspectError):
    """A running VM could not be read: no QMP socket, QEMU gone, or neither QMP nor guest RAM usable."""


class QmpBusy(VmUnreachable):
    """QEMU's QMP socket serves one client at a time and another one holds it."""


class UnsupportedLayout(InspectError):
    """A kernel structure does not have the members these helpers know (a kernel older or newer than they
    support)."""
