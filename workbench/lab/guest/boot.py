"""Booting a Debian guest (:mod:`workbench.lab.guest.image`) in the lab VM with systemd as PID 1.

The guest's tree is shared read-only over 9p (tag ``guestroot``): the lab kernels are built without the block
layer (``CONFIG_BLOCK`` is off in the lean base), so a disk image cannot be their root, and 9p needs no copy of
the 250 MB tree per boot. A small busybox initramfs mounts the share, puts ``/etc`` and ``/var`` (about 9 MB) in
tmpfs copies and ``/tmp`` and ``/root`` in empty tmpfs (the cache stays unchanged whatever the guest writes; the
lab kernels have no overlayfs), and hands over to ``/sbin/init`` with ``switch_root``; a cycle's folder, when
shared, is mounted on ``/mnt`` and its ``etc/`` copied over ``/etc``; the workbench's repository, when shared
(tag ``wbrepo``, read-only), on ``/opt/workbench`` (in a tmpfs ``/opt``) for its agent. A unit in the guest prints a
``WB-MARK multi-user`` line once ``multi-user.target`` is active, with systemd's own timestamps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from workbench.lab.accel import AccelChoice, choose_accelerator
from workbench.lab.errors import LabError
from workbench.lab.guest.image import GuestImage
from workbench.lab.initramfs import BUSYBOX, busybox_initramfs
from workbench.lab.kernel import LabKernel
from workbench.lab.protocol import parse_mark
from workbench.lab.qemu import QemuVM, SerialLine, VMConfig
from workbench.lab.qemu_target import lab_kernel_args

__all__ = [
    "GuestEvent",
    "GUEST_INIT_SCRIPT",
    "GUEST_ROOT_TAG",
    "RUN_SHARE_TAG",
    "REPO_SHARE_TAG",
    "REPO_MOUNT",
    "GuestBootFailed",
    "GuestBoot",
    "build_guest_initramfs",
    "guest_kernel_args",
    "guest_vm_config",
    "boot_guest",
]

GUEST_ROOT_TAG = "guestroot"
RUN_SHARE_TAG = "wbresults"
#: the workbench's repository, shared read-only for its agent, and where the guest mounts it
REPO_SHARE_TAG = "wbrepo"
REPO_MOUNT = "/opt/workbench"


class GuestEvent:
    """The ``WB-MARK`` events of a guest boot: its initramfs prints ``guest-init`` (or ``guest-init-error`` with
    the reason), the guest's ``workbench-ready`` unit ``multi-user`` (``{"multi_user_us", "userspace_us",
    "systemd", "pid1"}``, microseconds on the guest's monotonic clock, which starts with the kernel)."""

    INIT = "guest-init"
    INIT_ERROR = "guest-init-error"
    MULTI_USER = "multi-user"


GUEST_INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /rw /bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo "WB-MARK guest-init"
fail() { echo "WB-MARK guest-init-error $*"; sleep 1; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro,cache=loose guestroot /newroot \
  || fail "cannot mount the guest root over 9p"
[ -x /newroot/sbin/init ] || fail "the guest root has no /sbin/init"
for d in etc var; do
  mkdir -p /rw/$d && mount -t tmpfs -o mode=0755 tmpfs /rw/$d || fail "cannot mount a tmpfs for /$d"
  cp -a /newroot/$d/. /rw/$d/ || fail "cannot copy /$d into memory"
  mount --move /rw/$d /newroot/$d
done
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 wbresults /newroot/mnt 2>/dev/null; then
  [ -d /newroot/mnt/etc ] && { cp -a /newroot/mnt/etc/. /newroot/etc/ || fail "cannot add the run's files to /etc"; }
fi
mkdir -p /rw/repo
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro,cache=loose wbrepo /rw/repo 2>/dev/null; then
  { mount -t tmpfs -o mode=0755 tmpfs /newroot/opt && mkdir /newroot/opt/workbench \
    && mount --move /rw/repo /newroot/opt/workbench; } || fail "cannot mount the repository on /opt/workbench"
fi
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0700 tmpfs /newroot/root
mount --move /dev /newroot/dev
umount /sys /proc
exec switch_root /newroot /sbin/init
"""


class GuestBootFailed(LabError):
    """The guest did not reach ``multi-user.target``; ``serial_log`` is what its console printed."""

    def __init__(self, message: str, serial_log: Path):
        super().__init__(f"{message}; see {serial_log}")
        self.serial_log = serial_log


@dataclass(frozen=True)
class GuestBoot:
    """One boot of a guest to ``multi-user.target``: ``host_multi_user_s`` from QEMU's start to the marker on the
    host's clock; ``kernel_to_userspace_s`` (the kernel and the initramfs, until systemd started) and
    ``userspace_to_multi_user_s`` on systemd's; ``pid1`` the command name of the guest's PID 1."""

    guest: str
    guest_key: str
    kernel: str
    accelerator: str
    accelerator_reason: str
    host_init_s: float
    host_multi_user_s: float
    kernel_to_userspace_s: float
    userspace_to_multi_user_s: float
    systemd: str
    pid1: str
    serial_log: Path

    @property
    def kernel_to_multi_user_s(self) -> float:
        """Boot to ``multi-user.target`` as systemd reports it: from the kernel's start."""
        return self.kernel_to_userspace_s + self.userspace_to_multi_user_s

    def as_dict(self) -> dict[str, object]:
        return {
            "guest": self.guest,
            "guest_key": self.guest_key,
            "kernel": self.kernel,
            "accelerator": self.accelerator,
            "accelerator_reason": self.accelerator_reason,
            "host_init_s": self.host_init_s,
            "host_multi_user_s": self.host_multi_user_s,
            "kernel_to_userspace_s": self.kernel_to_userspace_s,
            "userspace_to_multi_user_s": self.userspace_to_multi_user_s,
            "kernel_to_multi_user_s": self.kernel_to_multi_user_s,
            "systemd": self.systemd,
            "pid1": self.pid1,
            "serial_log": str(self.serial_log),
        }


def build_guest_initramfs(busybox: Path = BUSYBOX) -> Path:
    """The cached initramfs that hands the guest's tree to systemd (for the current script and busybox binary)."""
    folders = ("dev", "proc", "sys", "newroot", "rw")
    return busybox_initramfs("guest-initramfs", GUEST_INIT_SCRIPT, folders, busybox, GuestBootFailed)


def guest_kernel_args(*, tcg: bool, live_update: bool = True) -> list[str]:
    """The lab VM's command line for a guest boot: the lab's (console, KHO/LUO), systemd's status on the console,
    and no first-boot questions (the guest's /etc is a fresh copy on every boot)."""
    return [
        *lab_kernel_args("guest", tcg=tcg, live_update=live_update),
        "systemd.firstboot=off",
        "systemd.show_status=1",
    ]


def guest_vm_config(
    kernel: LabKernel,
    guest: GuestImage,
    accel: AccelChoice,
    *,
    memory_mb: int = 1024,
    cpus: int = 2,
    tcg_threads: str = "single",
    kernel_args: str = "",
    extra_args: list[str] | None = None,
    run_share: Path | None = None,
    repo: Path | None = None,
) -> VMConfig:
    """The QEMU set-up that boots ``guest`` on ``kernel`` with ``accel``: the guest's tree as the read-only 9p
    share :data:`GUEST_ROOT_TAG`, :func:`build_guest_initramfs`, ``kernel_args`` added to the command line;
    ``run_share``: a cycle's folder, shared writable as :data:`RUN_SHARE_TAG` and mounted on the guest's ``/mnt``
    (its ``etc/`` is copied over the guest's ``/etc`` at boot: a workload's units); ``repo``: the workbench's
    repository, shared read-only as :data:`REPO_SHARE_TAG` and mounted on :data:`REPO_MOUNT`."""
    args = guest_kernel_args(tcg=accel.accel == "tcg") + kernel_args.split()
    return VMConfig(
        kernel=kernel.bzimage,
        initrd=build_guest_initramfs(),
        cmdline=" ".join(args),
        memory_mb=memory_mb,
        cpus=cpus,
        accel=accel.accel,
        tcg_threads=tcg_threads,
        shares={
            GUEST_ROOT_TAG: (guest.root, True),
            **({RUN_SHARE_TAG: (run_share, False)} if run_share else {}),
            **({REPO_SHARE_TAG: (repo, True)} if repo else {}),
        },
        extra_args=list(extra_args or []),
    )


def _wait_event(vm: QemuVM, events: tuple[str, ...], timeout: float, start: int) -> tuple[int, str, dict, float]:
    def marked(line: SerialLine) -> bool:
        mark = parse_mark(line.text)
        return mark is not None and mark[0] in (*events, GuestEvent.INIT_ERROR)

    found = vm.wait_for(marked, timeout, start)
    if found is None:
        state = "QEMU exited" if not vm.running else f"nothing in {timeout:.0f} s"
        raise GuestBootFailed(f"the guest did not print {' or '.join(events)} ({state})", vm.serial_log)
    index, line = found
    event, data = parse_mark(line.text)  # type: ignore[misc]
    if event == GuestEvent.INIT_ERROR:
        raise GuestBootFailed(f"the guest's initramfs failed: {data.get('text', '')}", vm.serial_log)
    return index, event, data, line.host_time


def boot_guest(
    kernel: LabKernel,
    guest: GuestImage,
    workdir: Path,
    *,
    accel: AccelChoice | None = None,
    memory_mb: int = 1024,
    cpus: int = 2,
    tcg_threads: str = "single",
    kernel_args: str = "",
    extra_args: list[str] | None = None,
    timeout_s: float = 600.0,
) -> GuestBoot:
    """Boots ``guest`` on ``kernel`` (a VM whose serial log goes into ``workdir``), waits until systemd reports
    ``multi-user.target`` active, stops the VM and returns the :class:`GuestBoot`. ``accel``: the accelerator
    (default: KVM where it boots Linux, else TCG); ``kernel_args``, ``extra_args``: more of the kernel's command
    line and of QEMU's arguments; ``timeout_s``: the limit for each of the two stages."""
    accel = accel or choose_accelerator(kernel.bzimage, build_guest_initramfs())
    config = guest_vm_config(
        kernel,
        guest,
        accel,
        memory_mb=memory_mb,
        cpus=cpus,
        tcg_threads=tcg_threads,
        kernel_args=kernel_args,
        extra_args=extra_args,
    )
    with QemuVM(config, workdir) as vm:
        t0 = vm.started_at or time.monotonic()
        index, _, _, t_init = _wait_event(vm, (GuestEvent.INIT,), timeout_s, 0)
        _, _, ready, t_ready = _wait_event(vm, (GuestEvent.MULTI_USER,), timeout_s, index)
    try:
        reached, userspace = int(ready["multi_user_us"]), int(ready["userspace_us"])
    except (KeyError, TypeError, ValueError):
        raise GuestBootFailed(f"the guest's multi-user mark is malformed: {ready}", vm.serial_log) from None
    return GuestBoot(
        guest=guest.name,
        guest_key=guest.key,
        kernel=kernel.name,
        accelerator=accel.accel,
        accelerator_reason=accel.reason,
        host_init_s=t_init - t0,
        host_multi_user_s=t_ready - t0,
        kernel_to_userspace_s=userspace / 1e6,
        userspace_to_multi_user_s=(reached - userspace) / 1e6,
        systemd=str(ready.get("systemd", "")),
        pid1=str(ready.get("pid1", "")),
        serial_log=vm.serial_log,
    )
