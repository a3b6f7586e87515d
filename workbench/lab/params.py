"""What one cycle does whatever its target and workload: :class:`CycleParams`.

The workload's own parameters are the fields of its :class:`~workbench.lab.workload.Workload` class, the
target's those of its :class:`~workbench.lab.target.Target` class."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults
from workbench.lab.liveupdate import check_session_name

__all__ = ["CycleParams", "PAUSE_POINTS"]

#: the phases after which a cycle can pause (to inspect the target, or dump its memory)
PAUSE_POINTS = ("prepare", "preserve", "restore")


@dataclass
class CycleParams:
    """``session``: the LUO session's name (at most 63 bytes); ``next_kernel``: the kernel to kexec into (a path on
    the target; default: the one that boots), ``next_config`` its ``.config`` when it is not beside it;
    ``pause_after``: phases after which the agent waits for the host; ``faults``: what to break on purpose;
    ``timeout_s``: seconds to wait for any one step (default: by size and accelerator), ``return_timeout_s`` for
    the target after the kexec; ``preflight``: check first that the next kernel accepts the running kernel's
    handover formats (:mod:`workbench.lab.preflight`), refusing the cycle when it cannot unless ``force``."""

    session: str = "workbench"
    next_kernel: str | None = None
    next_config: str | None = None
    pause_after: list[str] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    timeout_s: float | None = None
    return_timeout_s: float | None = None
    preflight: bool = True
    force: bool = False

    def validate(self) -> None:
        try:
            check_session_name(self.session)
        except ValueError as exc:
            raise InvalidCycle(str(exc)) from None
        if isinstance(self.faults, dict):
            self.faults = Faults.from_dict(self.faults)
        for phase in self.pause_after:
            if phase not in PAUSE_POINTS:
                raise InvalidCycle(f"a cycle can pause after {', '.join(PAUSE_POINTS)}, not {phase!r}")
        for name in ("timeout_s", "return_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InvalidCycle(f"{name} must be positive seconds, not {value}")

    def record_params(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["faults"] = self.faults.to_request() if isinstance(self.faults, Faults) else dict(self.faults)
        return out
