"""Fault injection: what a cycle breaks on purpose, to prove that the workbench notices.

:class:`Faults` are the faults every memfd-preserving workload understands; a workload with faults of its own
(CRIU's, :class:`workbench.lab.workloads.criu.CriuFaults`) keeps them in its own parameters. Both travel to the
agent as the request's ``faults`` object."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from workbench.lab.errors import InvalidCycle

__all__ = ["PageRef", "Faults"]


@dataclass(frozen=True)
class PageRef:
    """Page ``page`` (0-based, 4 KiB) of the cycle's memfd number ``memfd`` (0-based)."""

    memfd: int = 0
    page: int = 0

    def to_request(self) -> dict[str, int]:
        return {"memfd": self.memfd, "page": self.page}


@dataclass(frozen=True)
class Faults:
    """``corrupt_page``: after the kexec, flip one bit of that page before verifying (the cycle must report it);
    ``modify_after_preserve``: after preservation, try to write that page through ``pwrite`` and through the
    mapping (the outcome is recorded); ``next_boot_hangs``: the next kernel's initramfs never starts the agent
    (a target that does not come back); ``crash_after``: panic the target at that point (one of
    :data:`~workbench.lab.kdump.CRASH_POINTS`) for its capture kernel to write a kdump (:mod:`workbench.lab.kdump`)."""

    corrupt_page: PageRef | None = None
    modify_after_preserve: PageRef | None = None
    next_boot_hangs: bool = False
    crash_after: str | None = None

    def __post_init__(self) -> None:
        if self.crash_after is not None:
            # imported here: an SSH host's copy of the agent (ssh/agent_files.py) has no kdump module
            from workbench.lab.kdump import crash_pause_point

            crash_pause_point(self.crash_after)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Faults:
        """From the request form (``{"corrupt_page": {"memfd": 1, "page": 77}}``); unknown names are an error."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidCycle(f"unknown fault {unknown[0]!r}: the faults are {', '.join(sorted(known))}")
        pages = {
            name: PageRef(**data[name]) if isinstance(data.get(name), dict) else data.get(name)
            for name in ("corrupt_page", "modify_after_preserve")
        }
        return cls(
            **pages, next_boot_hangs=bool(data.get("next_boot_hangs", False)), crash_after=data.get("crash_after")
        )

    def validate(self, memfds: int, pages_per_memfd: int) -> None:
        for name in ("corrupt_page", "modify_after_preserve"):
            ref = getattr(self, name)
            if ref is not None and not (0 <= ref.memfd < memfds and 0 <= ref.page < pages_per_memfd):
                raise InvalidCycle(
                    f"fault {name} names page {ref.page} of memfd {ref.memfd}, but the cycle has {memfds} memfds "
                    f"of {pages_per_memfd} pages"
                )

    def to_request(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("corrupt_page", "modify_after_preserve"):
            ref = getattr(self, name)
            if ref is not None:
                out[name] = ref.to_request()
        if self.next_boot_hangs:
            out["next_boot_hangs"] = True
        if self.crash_after is not None:
            out["crash_after"] = self.crash_after
        return out
