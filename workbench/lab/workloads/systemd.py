"""The ``systemd`` workload: a service in the Debian guest (the ``guest`` target) keeps memfds in its file
descriptor store, systemd hands the store to LUO across ``systemctl kexec``, and the restarted service gets them
back (``LISTEN_FDS``) and verifies every page.

How systemd 262 does it (``src/core/luo.c``, ``src/shared/luo-util.c``): at the kexec PID 1 serializes the fd
store of every service whose ``FileDescriptorStorePreserve=`` is ``yes`` (or ``on-success``) into a JSON
document it passes to ``systemd-shutdown`` (``$SYSTEMD_LUO_SERIALIZE_FD``) with the fds; ``systemd-shutdown`` opens
``/dev/liveupdate``, creates the session ``systemd``, preserves each fd with tokens 1, 2, ... and, at token 0, a
sealed memfd (``luo-mapping``) holding ``{"version", "state": {"kexecsCount"}, "units": {unit: {"fdstore":
[{"type": "fd", "name", "token"}]}}}``, and keeps the session open until ``reboot(LINUX_REBOOT_CMD_KEXEC)``. In the
next kernel PID 1 retrieves the session ``systemd``, reads the mapping, puts each fd back into its unit's store
(loading the unit) and finishes the session; the service starts with the fds as ``LISTEN_FDS`` and their names
as ``LISTEN_FDNAMES``. A unit without ``FileDescriptorStorePreserve=`` loses its store when it stops and is not
serialized: its fds do not come back.

The guest side is :mod:`workbench.lab.workloads.systemd_guest.service` (the guest's own ``python3``); the host
side is :class:`SystemdWorkload` and the ``guest`` target's runner (:mod:`workbench.lab.guest.runner`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults
from workbench.lab.workload import Workload, register
from workbench.lab.workloads.systemd_guest.service import OPERATOR_UNIT, SERVICE_UNIT

__all__ = ["SystemdWorkload", "DEFAULT_SIZES", "SHARE_MOUNT", "SERVICE_PROGRAM"]

#: the memfds' sizes unless given: one of 64 MiB and two smaller ones
DEFAULT_SIZES = (64 << 20, 16 << 20, 4 << 20)
#: where the guest's initramfs mounts the run's share (the guest's root is read-only; /mnt is empty in Debian)
SHARE_MOUNT = "/mnt"
#: the guest program's file name in the share
SERVICE_PROGRAM = "wb_fdstore_service.py"
_FAULTS = ("corrupt_page", "modify_after_preserve", "crash_after", "next_boot_hangs")


@register
@dataclass
class SystemdWorkload(Workload):
    """``sizes``: the memfds' sizes in bytes (whole 4 KiB pages; default 64 MiB, 16 MiB, 4 MiB); ``seed``: their
    contents; ``preserve``: the unit has ``FileDescriptorStorePreserve=yes`` (false: the failure path, whose fds
    must not come back); ``load_next_kernel``: the operator loads the next kernel before ``systemctl kexec`` (false:
    the failure path of an operator who did not, which systemd refuses)."""

    name = "systemd"
    agent = "workbench.lab.workloads.systemd_guest.service:main"
    phases_before_kexec = ("prepare", "store", "load")
    phases_after_kexec = ("restore", "verify")
    targets = ("guest",)
    base_memory_mb = 768

    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    seed: int = 0
    preserve: bool = True
    load_next_kernel: bool = True

    def validate(self) -> None:
        if not self.sizes:
            raise InvalidCycle("the systemd workload needs at least one memfd size")
        if len(self.sizes) > 64:
            raise InvalidCycle(f"{len(self.sizes)} memfds is more than the unit's FileDescriptorStoreMax=64")
        for size in self.sizes:
            self.check_pages("memfd size", size)

    def validate_faults(self, faults: Faults) -> None:
        for name in _FAULTS:
            if getattr(faults, name, None):
                raise InvalidCycle(f"the systemd workload takes no fault {name}: systemd, not the agent, hands over")

    def data_bytes(self) -> int:
        return sum(self.sizes)

    def request(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "seed": self.seed,
            "preserve": self.preserve,
            "load_next_kernel": self.load_next_kernel,
        }

    def unit_files(self) -> dict[str, str]:
        """The guest's units, by path under ``/etc`` (written into the guest's tmpfs copy of ``/etc`` at boot):
        the service, the operator that asks for the kexec before it (not after), both enabled. The service has no
        start timeout: the guest's Python took 35 s to start under TCG on a busy host, and the host times the cycle."""
        program = f"{SHARE_MOUNT}/{SERVICE_PROGRAM}"
        preserve = "FileDescriptorStorePreserve=yes\n" if self.preserve else ""
        service = (
            "[Unit]\nDescription=Workbench: memfds kept in the file descriptor store across a kexec\n\n"
            f"[Service]\nType=notify\nNotifyAccess=main\nExecStart=/usr/bin/python3 {program} serve {SHARE_MOUNT}\n"
            f"FileDescriptorStoreMax=64\n{preserve}TimeoutStartSec=infinity\n"
        )
        operator = (
            "[Unit]\nDescription=Workbench: the operator loads the next kernel and runs systemctl kexec\n"
            f"After={SERVICE_UNIT}\nRequires={SERVICE_UNIT}\nConditionKernelCommandLine=!wb.phase=restore\n\n"
            f"[Service]\nType=oneshot\nExecStart=/usr/bin/python3 {program} operate {SHARE_MOUNT}\n"
        )
        wants = "systemd/system/multi-user.target.wants"
        return {
            f"systemd/system/{SERVICE_UNIT}": service,
            f"systemd/system/{OPERATOR_UNIT}": operator,
            f"{wants}/{SERVICE_UNIT}": f"../{SERVICE_UNIT}",
            f"{wants}/{OPERATOR_UNIT}": f"../{OPERATOR_UNIT}",
        }

    def summarize(self, result, prepare, restore, marks) -> dict[str, Any]:
        fdstore = restore.get("fdstore", {})
        returned, expected = len(fdstore.get("returned", [])), len(fdstore.get("expected", []))
        result["fdstore"] = {
            "preserve": self.preserve,
            "names": fdstore.get("expected", []),
            "returned": fdstore.get("returned", []),
        }
        if returned < expected:
            result["outcome"] = "not_preserved"
            result["error"] = f"systemd gave back {returned} of {expected} memfds after the kexec" + (
                "" if self.preserve else ": the unit has no FileDescriptorStorePreserve=, so its store was dropped"
            )
        result["hash"] = prepare.get("hash_impl")
        return result
