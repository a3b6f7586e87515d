"""The ``guest`` target's cycle runner: boots the Debian guest with the cycle's folder shared on its ``/mnt`` and the
workload's units in its ``/etc``, and follows the ``WB-MARK`` lines that the guest's service and operator print on
the console through ``systemctl kexec`` and back (the ``systemd`` workload, :mod:`workbench.lab.workloads.systemd`).

Beside the workbench's phases the result keeps systemd's own timing: the service's ``ActiveEnterTimestamp`` in the
next boot (monotonic since that kernel started, and realtime against the operator's request: the guest's realtime
clock comes from the emulated RTC at boot, so that difference is good to about a second) and the blackout as the
service sees it (from its ``SIGTERM`` to its fds being back, on the host's clock)."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workbench.lab.capture import gdbstub_qemu_args, short_socket_dir
from workbench.lab.guest.boot import GuestEvent, guest_vm_config
from workbench.lab.guest.cycle_vm import GuestCycle, link_or_copy
from workbench.lab.guest.image import GuestImage
from workbench.lab.kernel import LabKernel
from workbench.lab.moment_dumps import KERNEL_ARGS, MomentDumps
from workbench.lab.params import CycleParams
from workbench.lab.protocol import Event, Request, read_json
from workbench.lab.qemu import QemuVM
from workbench.lab.runner import CycleEvent, MarkRunner
from workbench.lab.workload import Workload
from workbench.lab.workloads.systemd import SERVICE_PROGRAM, SHARE_MOUNT, SystemdWorkload
from workbench.lab.workloads.systemd_guest import service as guest_service

__all__ = ["GuestRunner", "SERVICE_STOPPING", "systemd_timing", "stage_run_share"]

#: the service's mark when systemd stops it for the kexec (its last moment before the blackout)
SERVICE_STOPPING = "service-stopping"


def stage_run_share(folder: Path, workload: SystemdWorkload, next_kernel: Path, next_initrd: Path) -> dict[str, str]:
    """Puts into ``folder`` (shared on the guest's ``/mnt``) what the guest needs: the service program, the
    units under ``etc/`` and the next kernel and initramfs under ``boot/``. Returns the guest's paths of the next
    kernel and initramfs.

    :param folder: the cycle's results folder
    :param workload: the workload whose units are written
    :param next_kernel: the bzImage to kexec into
    :param next_initrd: the initramfs it boots with"""
    shutil.copyfile(guest_service.__file__, folder / SERVICE_PROGRAM)
    for relative, text in workload.unit_files().items():
        path = folder / "etc" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative.endswith(".service") and "wants" in relative:
            path.unlink(missing_ok=True)
            path.symlink_to(text)
        else:
            path.write_text(text)
    link_or_copy(next_kernel, folder / "boot" / "bzImage")
    link_or_copy(next_initrd, folder / "boot" / "initrd")
    return {"next_kernel": f"{SHARE_MOUNT}/boot/bzImage", "next_initrd": f"{SHARE_MOUNT}/boot/initrd"}


def systemd_timing(times: dict[str, Any], request_realtime_us: int | None) -> dict[str, Any]:
    """systemd's own view of the cycle from the service's timestamps in the next boot (``times``: ``systemctl
    show`` properties) and the operator's request time (realtime microseconds, or None).

    :param times: ``UserspaceTimestampMonotonic`` (PID 1's), ``ExecMainStartTimestampMonotonic``,
        ``ActiveEnterTimestampMonotonic`` and ``ActiveEnterTimestamp`` (``--timestamp=us+utc`` text) of the service
        in the next boot, and ``manager``: PID 1's ``KExecCount``
    :param request_realtime_us: when the operator ran ``systemctl kexec``, on the guest's realtime clock"""

    def micros(name: str) -> int | None:
        try:
            return int(times[name])
        except (KeyError, TypeError, ValueError):
            return None

    ready, userspace = micros("ActiveEnterTimestampMonotonic"), micros("UserspaceTimestampMonotonic")
    started = micros("ExecMainStartTimestampMonotonic")
    out: dict[str, Any] = {
        "kernel_to_service_ready_s": ready / 1e6 if ready else None,
        "kernel_to_userspace_s": userspace / 1e6 if userspace else None,
        "userspace_to_service_ready_s": (ready - userspace) / 1e6 if ready and userspace else None,
        "service_start_to_ready_s": (ready - started) / 1e6 if ready and started else None,
        "request_to_service_ready_s": None,
    }
    manager = times.get("manager")
    if isinstance(manager, dict) and str(manager.get("KExecCount", "")).isdigit():
        out["kexec_count"] = int(manager["KExecCount"])
    stamp = times.get("ActiveEnterTimestamp")
    if request_realtime_us and isinstance(stamp, str) and stamp.strip():
        try:
            text = stamp.split(" ", 1)[1].removesuffix(" UTC")
            when = datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
            out["request_to_service_ready_s"] = when - request_realtime_us / 1e6
        except (IndexError, ValueError):
            pass
    return out


class GuestRunner(GuestCycle, MarkRunner):
    """One ``systemd`` cycle in the Debian guest: boot, the service's marks, the operator's kexec, the service's
    marks in the next boot."""

    kexec_ends_at_agent = True
    reporter = "the guest's service or operator"

    def __init__(
        self,
        target,
        workload: Workload,
        params: CycleParams,
        run,
        on_event: Callable[[CycleEvent], None] | None,
        cancel: threading.Event | None,
    ):
        super().__init__(workload, params, run, on_event, cancel)
        self.target = target
        self.kernel: LabKernel = target.kernel
        self.guest: GuestImage = target.guest
        self.vm: QemuVM | None = None
        self.dumper: MomentDumps | None = None
        self._sockets: Path | None = None

    def release_dumps(self) -> None:
        """Lets the guest go on from the moment dumps (breakpoints removed) and removes the gdbstub's socket."""
        if self.dumper is not None:
            self.dumper.finish()
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)

    def gdb_socket(self) -> Path:
        """The unix socket of QEMU's gdbstub when the cycle dumps at moments (a short private folder)."""
        if self._sockets is None:
            self._sockets = short_socket_dir()
        return self._sockets / "gdb"

    @property
    def log_path(self) -> Path | None:
        return self.vm.serial_log if self.vm is not None else None

    def execute(self) -> dict[str, Any]:
        p, t, w = self.p, self.target, self.workload
        assert isinstance(w, SystemdWorkload)
        initrd, next_kernel, accel = self.start_guest()
        tcg = accel.accel == "tcg"
        boot_timeout = 900 if tcg else 180
        work_timeout = (240 + 600 * w.timeout_bytes() / (1 << 30)) * (1 if tcg else 0.25)
        if p.timeout_s:
            boot_timeout = work_timeout = p.timeout_s
        paths = stage_run_share(self.results, w, next_kernel, initrd)
        Request(
            workload=w.name,
            session="systemd",
            next_kernel=paths["next_kernel"],
            next_initrd=paths["next_initrd"],
            workload_fields=w.request(),
        ).write(self.results)
        config = guest_vm_config(
            self.kernel,
            self.guest,
            accel,
            memory_mb=t.memory_for(w),
            cpus=t.cpus,
            tcg_threads=t.tcg_threads,
            kernel_args=" ".join([t.kernel_args, *w.kernel_args(), *([KERNEL_ARGS] if t.dump_at else [])]).strip(),
            extra_args=[*t.qemu_args, *(gdbstub_qemu_args(self.gdb_socket()) if t.dump_at else [])],
            run_share=self.results,
        )
        self.emit(kind="state", name="booting", text=f"{accel.accel}: {accel.reason}")
        self.vm = QemuVM(config, self.workdir, on_line=self.on_line)
        self.source = self.vm
        t_boot = time.monotonic()
        with self.vm, contextlib.ExitStack() as cleanup:
            cleanup.callback(self.release_dumps)
            self.emit(kind="phase", name="boot", status="begin", host_time=t_boot)
            self.wait_guest(GuestEvent.INIT, boot_timeout, "waiting for the guest's initramfs")
            _, _, t_agent = self.wait_guest(Event.AGENT_START, boot_timeout, "waiting for systemd to start the service")
            self.emit(kind="phase", name="boot", status="end", seconds=t_agent - t_boot, host_time=t_agent)
            if t.dump_at:
                self.dumper = MomentDumps(self.vm, self.kernel.vmlinux, self.gdb_socket(), self.results, t.dump_at)
                self.dumper.arm()
            self.emit(kind="state", name="running")
            self.wait_phases(w.phases_before_kexec, [], work_timeout)
            self.phase = "kexec"
            _, _, t_kexec = self.wait_mark((Event.KEXEC,), work_timeout, "waiting for the operator's systemctl kexec")
            back = p.return_timeout_s or boot_timeout
            _, _, t_init = self.wait_guest(GuestEvent.INIT, back, "waiting for the next kernel (it did not come back)")
            _, _, t_back = self.wait_guest(Event.AGENT_START, back, "waiting for systemd to start the service again")
            self.wait_phases(w.phases_after_kexec, [], work_timeout)
            self.phase = "finish"
            self.wait_mark((Event.DONE,), work_timeout, "waiting for the service's verdict")
            self.release_dumps()
            self.emit(kind="state", name="done")
        return self.collect(t_boot, t_agent, t_kexec, t_init, t_back, accel.accel, accel.reason)

    def collect(self, t_boot, t_agent, t_kexec, t_init, t_back, accel: str, reason: str) -> dict[str, Any]:
        prepare, restore = self.read_state("prepare"), self.read_state("restore")
        try:
            operator = read_json(self.results / "operator.json")
        except (OSError, ValueError):
            operator = {}
        prepare["phases"] = {**prepare.get("phases", {}), **operator.get("phases", {})}
        result = self.agent_result(prepare, restore, t_kexec, t_back)
        stopped = next((t for e, _, t in self.marks if e == SERVICE_STOPPING), None)
        retrieved = next(
            (t for e, d, t in self.marks if e == Event.PHASE_END and t >= t_back and d.get("phase") == "restore"), None
        )
        times = restore.get("systemd_times", {})
        result.update(
            {
                "guest": self.guest.name,
                "systemd_version": self.guest.version_of("systemd"),
                "systemd_timing": {
                    **systemd_timing(times if isinstance(times, dict) else {}, operator.get("request_realtime_us")),
                    "raw": times,
                },
                "service_blackout_s": (retrieved - stopped) if stopped is not None and retrieved is not None else None,
                "blackout_breakdown": {"kexec_to_init_s": t_init - t_kexec, "init_to_service_s": t_back - t_init},
                "boot_s": t_agent - t_boot,
                "accelerator": accel,
                "accelerator_reason": reason,
                "memory_mb": self.target.memory_for(self.workload),
                "serial_log": str(self.vm.serial_log),
                "run_dir": str(self.workdir),
            }
        )
        if self.dumper is not None:
            # the guest stood stopped for the dumps inside the blackout: the figures without that time beside
            held = self.dumper.held_between(t_kexec, retrieved if retrieved is not None else t_back)
            result["dumps_held_s"] = {m: held_s for m, (_, held_s) in self.dumper.stops.items()}
            result["blackout_without_dumps_s"] = result["blackout_s"] - held
            if result["service_blackout_s"] is not None:
                result["service_blackout_without_dumps_s"] = result["service_blackout_s"] - held
            result["vmcores"] = {m: str(p) for m, p in self.dumper.dumps.items()}
            result["vmlinux"] = str(self.kernel.vmlinux)
            result["dumps_missing"] = self.dumper.missing()
            if self.dumper.errors:
                result["dump_errors"] = self.dumper.errors
        return result
