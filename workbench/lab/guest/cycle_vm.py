"""What the ``guest`` target's two cycle runners share (the systemd workload's,
:mod:`workbench.lab.guest.runner`, and the workbench agent's, :mod:`workbench.lab.guest.agent_runner`): starting a
cycle in the Debian guest (its initramfs, the next kernel, the accelerator, the environment the record keeps),
waiting for the guest's marks, and staging files into the cycle's share."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from workbench.lab.accel import AccelChoice, choose_accelerator
from workbench.lab.guest.boot import GuestEvent, build_guest_initramfs
from workbench.lab.kernel import LabKernel
from workbench.lab.qemu import qemu_version

__all__ = ["GuestCycle", "link_or_copy"]


def link_or_copy(src: Path, dst: Path) -> None:
    """Puts ``src`` at ``dst`` (replacing it): a hard link where the file system allows it, else a copy with its
    mode."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copyfile(src, dst)
        shutil.copymode(src, dst)


class GuestCycle:
    """Mixed into a :class:`~workbench.lab.runner.MarkRunner` whose ``target`` is a
    :class:`~workbench.lab.guest.target.GuestTarget` and which sets ``kernel``, ``guest`` and ``vm``."""

    def source_stopped(self, what: str) -> str:
        return f"the guest VM stopped while {what} (QEMU exit {self.vm.proc.returncode})"

    def start_guest(self) -> tuple[Path, Path, AccelChoice]:
        """The guest's initramfs, the bzImage to kexec into and the accelerator; records the environment (the
        kernels, the accelerator, QEMU, the guest and its packages' versions)."""
        initrd = build_guest_initramfs()
        nxt = self.target.following
        next_kernel = nxt.bzimage if isinstance(nxt, LabKernel) else Path(nxt)
        accel = choose_accelerator(self.kernel.bzimage, initrd)
        self.run.update_environment(
            target_kernel_release=self.kernel.release,
            target_config_hash=self.kernel.config_hash,
            target_kernel_version=self.kernel.version,
            accelerator=accel.accel,
            accelerator_reason=accel.reason,
            qemu_version=qemu_version(),
            next_kernel_release=nxt.release if isinstance(nxt, LabKernel) else None,
            guest=self.guest.name,
            guest_key=self.guest.key,
            guest_systemd=self.guest.version_of("systemd"),
            guest_versions={name: self.guest.version_of(name) for name in self.guest.packages},
        )
        return initrd, next_kernel, accel

    def wait_guest(self, event: str, timeout: float, what: str) -> tuple[str, dict[str, Any], float]:
        """Waits for ``event``; the guest's initramfs failing (``guest-init-error``) fails the cycle with its reason."""
        found, data, when = self.wait_mark((event, GuestEvent.INIT_ERROR), timeout, what)
        if found == GuestEvent.INIT_ERROR:
            raise self.fail(f"the guest's initramfs failed: {data.get('text', '')}")
        return found, data, when
