"""Where a report ran: the host (from an environment snapshot) and the lab VMs of its cycles and benchmarks (the
accelerator and the lab kernel release each record of the run noted in its environment)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workbench.records import RecordStore

__all__ = ["Machine", "machine_of", "LAB_KINDS"]

#: the record kinds whose environment may name the lab VM's accelerator and kernel (``bench.`` is a prefix)
LAB_KINDS = ("lab.cycle", "bench.")


@dataclass(frozen=True)
class Machine:
    """The facts the front page shows about where the report ran. ``accelerators`` and ``lab_kernels`` map each
    value to the number of records that ran with it."""

    hostname: str | None
    cpu_model: str | None
    cpu_count: int | None
    host_kernel: str | None
    git_commit: str | None
    git_dirty: bool | None
    accelerators: dict[str, int] = field(default_factory=dict)
    lab_kernels: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "cpu_model": self.cpu_model,
            "cpu_count": self.cpu_count,
            "host_kernel": self.host_kernel,
            "git_commit": self.git_commit,
            "git_dirty": self.git_dirty,
            "accelerators": dict(self.accelerators),
            "lab_kernels": dict(self.lab_kernels),
        }


def machine_of(
    environment: dict[str, Any] | None = None,
    store: RecordStore | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Machine:
    """The machine a report ran on.

    :param environment: an environment snapshot (a record's ``environment``, or
        :func:`workbench.environment.snapshot`); default: a snapshot of this process's host taken now
    :param store: the record store the report's notebooks wrote to; None leaves the lab VM facts empty
    :param since: only records started at or after this time (the start of the report's own run)
    :param until: only records started before this time; default: no limit
    """
    if environment is None:
        from workbench.environment import snapshot

        environment = snapshot()
    git = environment.get("git") or {}
    accelerators: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    if store is not None:
        for kind in LAB_KINDS:
            for record in store.runs(kind=kind):
                if (since is not None and record.started < since) or (until is not None and record.started >= until):
                    continue
                env = record.environment
                if env.get("accelerator"):
                    accelerators[str(env["accelerator"])] += 1
                if env.get("target_kernel_release"):
                    kernels[str(env["target_kernel_release"])] += 1
    return Machine(
        hostname=environment.get("hostname"),
        cpu_model=environment.get("cpu_model"),
        cpu_count=environment.get("cpu_count"),
        host_kernel=environment.get("host_kernel_release"),
        git_commit=git.get("commit"),
        git_dirty=git.get("dirty"),
        accelerators=dict(sorted(accelerators.items())),
        lab_kernels=dict(sorted(kernels.items())),
    )
