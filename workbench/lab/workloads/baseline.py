"""The ``baseline`` workload: a kexec that keeps nothing alive, the yardstick of every blackout.

The same guest, the same kernel, KHO and LUO on, but no session and no preserved page: load: ``kexec_file_load``
the next kernel; kexec. In the next kernel the agent says it is back (``restore``) and finishes. Its blackout is
the part of any cycle's blackout that preserving memory does not cause (see ``workbench bench blackout``).

:class:`BaselineWorkload` is the host side, :class:`BaselineAgent` runs on the target."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.lab.agent_core import Agent, mark
from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults
from workbench.lab.protocol import Event
from workbench.lab.workload import Workload, register

__all__ = ["BaselineWorkload", "BaselineAgent"]


@register
@dataclass
class BaselineWorkload(Workload):
    """Nothing preserved: a plain kexec into the next kernel. It has no parameters."""

    name = "baseline"
    agent = "workbench.lab.workloads.baseline:BaselineAgent"
    phases_before_kexec = ("load",)
    phases_after_kexec = ("restore",)
    targets = ("qemu",)

    def validate_faults(self, faults: Faults) -> None:
        for fault in ("corrupt_page", "modify_after_preserve"):
            if getattr(faults, fault) is not None:
                raise InvalidCycle(f"fault {fault} names a preserved page, but the baseline preserves none")

    def memory_copies(self) -> int:
        return 0


class BaselineAgent(Agent):
    """The target side: load the next kernel, kexec; in the next kernel, say so."""

    def prepare_and_kexec(self) -> None:
        self.kho_snapshot("out")
        self.save()
        self.load_next_kernel()
        self.kexec()

    def restore(self) -> None:
        with self.phase("restore"):
            self.kho_snapshot("in")
        self.state.update(verified=True, finished=True, pages_checked=0)
        self.save()
        mark(Event.DONE, {"verified": True, "pages_checked": 0})
