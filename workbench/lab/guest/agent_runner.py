"""The ``guest`` target's runner for the workbench's own agent (:mod:`workbench.lab.agent`): a workload whose
``targets`` include ``guest`` (the ``criu`` workload) runs in the Debian guest with the guest's userspace (its
Python, numpy and CRIU) instead of the busybox initramfs over the host's root.

The repository is shared read-only on the guest's :data:`~workbench.lab.guest.boot.REPO_MOUNT`; the cycle's folder
on ``/mnt`` carries the request, the files the workload stages (its program), the next kernel and initramfs, and a
systemd unit (:func:`agent_unit`) that starts the agent once the guest is up, with the phase the kernel's command
line names. The agent kexecs itself (``reboot(LINUX_REBOOT_CMD_KEXEC)`` from the service): for systemd that is an
abrupt kexec, like ``systemctl kexec --force --force``, with no unit stopped; the agent has written its state to
the share before. In the next kernel systemd starts the same unit, which now runs ``--phase restore``.

The marks, the waits and the result are :class:`~workbench.lab.qemu_target.QemuRunner`'s; only the VM (the guest's,
:func:`~workbench.lab.guest.boot.guest_vm_config`) and the next kernel's first mark (the guest initramfs's
``guest-init``) differ. The cycle cannot pause (:class:`~workbench.lab.guest.target.GuestTarget` refuses it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from workbench.environment import REPO_ROOT
from workbench.lab.errors import InvalidCycle
from workbench.lab.guest.boot import REPO_MOUNT, GuestEvent, guest_vm_config
from workbench.lab.guest.cycle_vm import GuestCycle, link_or_copy
from workbench.lab.guest.image import GuestImage
from workbench.lab.protocol import Event, Request
from workbench.lab.qemu import QemuVM
from workbench.lab.qemu_target import QemuRunner

__all__ = ["AGENT_UNIT", "UNIT_STARTED", "GuestAgentRunner", "GuestAgentWorkload", "agent_unit", "stage_agent_share"]

#: the agent's unit in the guest: one name in both kernels, so that a process restored into the unit's cgroup
#: finds it again
AGENT_UNIT = "workbench-agent.service"
#: where the guest sees the cycle's folder
SHARE_MOUNT = "/mnt"
#: the unit's mark (text: the phase) the moment systemd starts it, before the agent's Python: it splits the time
#: to the agent's start into systemd's part and Python's
UNIT_STARTED = "agent-unit"


@runtime_checkable
class GuestAgentWorkload(Protocol):
    """What a workload that runs the workbench's agent in the Debian guest adds to
    :class:`~workbench.lab.workload.Workload`."""

    def guest_kernel_args(self) -> list[str]:
        """Its kernel arguments in the guest (instead of ``kernel_args()``)."""
        ...

    def guest_request(self, stage: Callable[[Path], str]) -> dict[str, Any]:
        """Its request fields in the guest; ``stage`` copies a host file into the guest's view and returns the
        guest's path of it."""
        ...


def agent_unit(results: str = SHARE_MOUNT, repo: str = REPO_MOUNT) -> str:
    """The text of :data:`AGENT_UNIT`: the :data:`UNIT_STARTED` mark, then the agent under the guest's Python with
    the repository on its path, its ``WB-MARK`` lines straight on the console (no journal in between: the host
    timestamps them), ``--phase restore`` when the kernel's command line has ``wb.phase=restore`` (the agent puts it
    there for the next kernel), else ``prepare``. The repository is read-only: Python keeps the modules it compiles
    in the cycle's folder, so that the agent in the next kernel, inside the blackout, does not compile them again.

    :param results: the guest's path of the cycle's folder
    :param repo: the guest's path of the repository"""
    agent = f"/usr/bin/python3 -m workbench.lab.agent --results {results}"
    # "$$" is systemd's escape for the shell's "$"
    command = (
        f"phase=prepare; grep -qw wb.phase=restore /proc/cmdline && phase=restore; echo; echo WB-MARK {UNIT_STARTED} "
        f"$$phase; exec {agent} --phase $$phase"
    )
    return (
        "[Unit]\nDescription=Workbench: the agent of a live update cycle\n\n"
        "[Service]\nType=simple\n"
        f"Environment=PYTHONPATH={repo} PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX={results}/pycache\n"
        f"ExecStart=/bin/sh -c '{command}'\n"
        "StandardOutput=tty\nStandardError=tty\nTTYPath=/dev/console\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def stage_agent_share(folder: Path, next_kernel: Path, next_initrd: Path) -> Callable[[Path], str]:
    """Puts into ``folder`` (the guest's ``/mnt``) the agent's unit, enabled, under ``etc/`` and the next kernel
    and initramfs under ``boot/``. Returns the function that stages a workload's file under ``bin/`` and gives its
    guest path.

    :param folder: the cycle's results folder
    :param next_kernel: the bzImage to kexec into
    :param next_initrd: the initramfs it boots with (the guest's)"""
    units = folder / "etc" / "systemd" / "system"
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (units / AGENT_UNIT).write_text(agent_unit())
    wanted = units / "multi-user.target.wants" / AGENT_UNIT
    wanted.unlink(missing_ok=True)
    wanted.symlink_to(f"../{AGENT_UNIT}")
    link_or_copy(next_kernel, folder / "boot" / "bzImage")
    link_or_copy(next_initrd, folder / "boot" / "initrd")

    def stage(path: Path) -> str:
        link_or_copy(path, folder / "bin" / path.name)
        return f"{SHARE_MOUNT}/bin/{path.name}"

    return stage


class GuestAgentRunner(GuestCycle, QemuRunner):
    """One cycle of an agent workload in the Debian guest: boot to the agent's unit, its marks through its own
    kexec, the unit again in the next kernel, :class:`QemuRunner`'s result with the guest's name and versions."""

    def __init__(self, target, workload, params, run, on_event, cancel):
        if target.dump_at:
            raise InvalidCycle(f"--dump-at is for the systemd workload in the guest, not {workload.name}")
        super().__init__(target, workload, params, run, on_event, cancel, None)
        self.guest: GuestImage = target.guest

    def execute(self) -> dict[str, Any]:
        p, t, w = self.p, self.target, self.workload
        assert isinstance(w, GuestAgentWorkload)
        initrd, next_kernel, accel = self.start_guest()
        tcg = accel.accel == "tcg"
        boot_timeout = 900 if tcg else 180
        work_timeout = (240 + 240 * w.timeout_bytes() / (1 << 30)) * (1 if tcg else 0.25)
        if p.timeout_s:
            boot_timeout = work_timeout = p.timeout_s
        stage = stage_agent_share(self.results, next_kernel, initrd)
        Request(
            workload=w.name,
            session=p.session,
            next_kernel=f"{SHARE_MOUNT}/boot/bzImage",
            next_initrd=f"{SHARE_MOUNT}/boot/initrd",
            faults={**p.faults.to_request(), **w.faults()},
            workload_fields=w.guest_request(stage),
            preflight_accepts=self.live_preflight_accepts(),
        ).write(self.results)
        config = guest_vm_config(
            self.kernel,
            self.guest,
            accel,
            memory_mb=t.memory_for(w),
            cpus=t.cpus,
            tcg_threads=t.tcg_threads,
            kernel_args=" ".join([t.kernel_args, *w.guest_kernel_args()]).strip(),
            extra_args=list(t.qemu_args),
            run_share=self.results,
            repo=REPO_ROOT,
        )
        self.emit(kind="state", name="booting", text=f"{accel.accel}: {accel.reason}")
        self.vm = QemuVM(config, self.workdir, on_line=self.on_line)
        self.source = self.vm
        t_boot = time.monotonic()
        with self.vm:
            self.emit(kind="phase", name="boot", status="begin", host_time=t_boot)
            self.wait_guest(GuestEvent.INIT, boot_timeout, "waiting for the guest's initramfs")
            _, _, t_agent = self.wait_guest(Event.AGENT_START, boot_timeout, "waiting for systemd to start the agent")
            self.emit(kind="phase", name="boot", status="end", seconds=t_agent - t_boot, host_time=t_agent)
            self.emit(kind="state", name="running")
            self.wait_phases(w.phases_before_kexec, [], work_timeout)
            self.phase = "kexec"
            _, _, t_kexec = self.wait_mark((Event.KEXEC,), work_timeout, "waiting for the kexec")
            back = p.return_timeout_s or boot_timeout
            _, _, t_init = self.wait_guest(GuestEvent.INIT, back, "waiting for the next kernel (it did not come back)")
            _, _, t_back = self.wait_guest(Event.AGENT_START, back, "waiting for systemd to start the agent again")
            self.wait_phases(w.phases_after_kexec, [], work_timeout)
            self.phase = "finish"
            self.wait_mark((Event.DONE,), work_timeout, "finishing the session")
            self.emit(kind="state", name="done")
        result = self.collect(t_boot, t_agent, t_kexec, t_init, t_back, accel)
        t_unit = next((t for e, _, t in self.marks if e == UNIT_STARTED and t_init <= t <= t_back), None)
        if t_unit is not None:
            result["blackout_breakdown"].update(init_to_unit_s=t_unit - t_init, unit_to_agent_s=t_back - t_unit)
        result["guest"] = self.guest.name
        result["guest_key"] = self.guest.key
        return result
