"""The ``guest`` target: the lab VM of :class:`~workbench.lab.qemu_target.QemuTarget` booting a Debian guest
(:mod:`workbench.lab.guest.image`) with systemd as PID 1 instead of the busybox initramfs over the host's root.

The target spec is ``guest`` (the default guest, ``debian-sid``) or ``guest:NAME`` (``guest:debian-sid``). It
boots the guest to ``multi-user.target`` (:meth:`GuestTarget.boot`) and runs the ``systemd`` workload
(:mod:`workbench.lab.guest.runner`) and the workloads whose ``targets`` include ``guest`` with the workbench's agent
(:mod:`workbench.lab.guest.agent_runner`: the ``criu`` workload); the other workloads refuse it in their own target
check."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.lab.errors import InvalidCycle
from workbench.lab.guest.agent_runner import GuestAgentRunner, GuestAgentWorkload
from workbench.lab.guest.boot import GuestBoot, boot_guest
from workbench.lab.guest.image import GuestImage, GuestSpec, resolve_guest
from workbench.lab.guest.runner import GuestRunner
from workbench.lab.kernel import LabKernel, build_kernel, resolve_kernel
from workbench.lab.moment_dumps import MOMENT_STOPS, check_moments
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.runner import MarkRunner
from workbench.lab.target import register
from workbench.lab.workload import Workload

__all__ = ["GuestTarget", "DEFAULT_GUEST"]

DEFAULT_GUEST = GuestSpec().name


@register
@dataclass
class GuestTarget(QemuTarget):
    """:class:`QemuTarget`'s options, and ``guest``: the Debian guest to boot, a :class:`GuestImage` or a name
    (``debian-sid``), built on first use."""

    name = "guest"
    #: systemd drives this cycle: no capture kernel is loaded for --crash-after
    supports_kdump = False

    guest: GuestImage | str = DEFAULT_GUEST
    #: moments of :data:`~workbench.lab.moment_dumps.MOMENT_STOPS` at which the guest is dumped (``vmcore-<moment>.elf``
    #: in the run's folder): the guest boots with ``nokaslr`` and QEMU's gdbstub
    dump_at: list[str] = field(default_factory=list)

    @classmethod
    def from_spec(cls, rest: str, options: dict[str, Any], *, data_dir: str | None = None) -> list[GuestTarget]:
        """``guest`` or ``guest:NAME`` with the command line's target ``options``."""
        cls.check_options(options)
        return [cls(**options, **({"guest": rest} if rest else {}))]

    @property
    def guest_name(self) -> str:
        return self.guest.name if isinstance(self.guest, GuestImage) else self.guest

    def validate(self, workload: Workload, params: CycleParams) -> None:
        super().validate(workload, params)
        if params.pause_after or self.dump_after:
            raise InvalidCycle(
                f"a cycle in the {self.guest_name} guest cannot pause (systemd drives it): dump it at a moment with "
                f"--dump-at {','.join(MOMENT_STOPS)}"
            )
        check_moments(self.dump_at)

    def prepare(self, workload: Workload, params: CycleParams) -> None:
        super().prepare(workload, params)
        self.guest = resolve_guest(self.guest)

    def record_params(self) -> dict[str, Any]:
        params = {**super().record_params(), "guest": self.guest_name, "dump_at": list(self.dump_at)}
        if isinstance(self.guest, GuestImage):
            params["guest_key"] = self.guest.key
        return params

    def runner(self, workload, params, run, on_event, cancel, on_pause) -> MarkRunner:
        if workload.name == "systemd":
            return GuestRunner(self, workload, params, run, on_event, cancel)
        if self.name in workload.targets and isinstance(workload, GuestAgentWorkload):
            return GuestAgentRunner(self, workload, params, run, on_event, cancel)
        raise InvalidCycle(
            f"only the systemd workload and the agent's workloads for the guest run in the {self.guest_name} guest, "
            f"not {workload.name}"
        )

    def boot(self, workdir: Path, *, timeout_s: float = 600.0) -> GuestBoot:
        """Boots the guest on this target's kernel, CPUs, memory (1 GiB unless set), TCG threads, command line and
        QEMU arguments, to ``multi-user.target``; building the kernel and the guest first if they are not cached."""
        if isinstance(self.kernel, str):
            self.kernel = resolve_kernel(self.kernel)
        kernel: LabKernel = self.kernel or build_kernel()
        self.kernel = kernel
        self.guest = resolve_guest(self.guest)
        return boot_guest(
            kernel,
            self.guest,
            workdir,
            memory_mb=self.memory_mb or 1024,
            cpus=self.cpus,
            tcg_threads=self.tcg_threads,
            kernel_args=self.kernel_args,
            extra_args=self.qemu_args,
            timeout_s=timeout_s,
        )
