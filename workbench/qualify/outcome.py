"""What became of a cell: ``pass``, ``refused``, ``fail``, ``panic`` or ``hang`` (and ``error`` when the workbench
itself could not run it), the stage it ended in and what the target's log says.

``refused``: the preflight refused the pair, or the next kernel refused the handover without panicking;
``panic``: the target's serial log shows a kernel panic (the diagnosis gives its message and location);
``hang``: the target printed nothing the cycle waited for within its time; ``fail``: anything else that went wrong
in the target (a page that differs, a selftest that failed, the target stopping)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from workbench.lab.errors import CycleFailed, CycleTimedOut, PreflightRefused

__all__ = ["OUTCOMES", "Outcome", "outcome_of_result", "outcome_of_failure", "outcome_of_error", "worst"]

#: every outcome, from best to worst (the order of :func:`worst`)
OUTCOMES = ("pass", "refused", "fail", "hang", "panic", "error")


@dataclass
class Outcome:
    """``outcome`` (one of :data:`OUTCOMES`), the ``stage`` it ended in (a cycle phase, or ``preflight``), the
    ``diagnosis`` read from the target's log (one sentence, or None) and the error ``message``."""

    outcome: str
    stage: str | None = None
    diagnosis: str | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def outcome_of_result(result: dict[str, Any]) -> Outcome:
    """The outcome of a cycle that ran to its end: ``pass`` when it verified, else ``fail`` at ``verify``."""
    if result.get("verified"):
        return Outcome("pass")
    differing = sum(1 for m in result.get("memfds", []) if m.get("differing_count"))
    message = result.get("error") or (
        f"{differing} file(s) came back different" if differing else "the cycle did not verify"
    )
    return Outcome("fail", "verify", None, message)


def outcome_of_failure(exc: CycleFailed) -> Outcome:
    """The outcome of a cycle that raised ``exc``."""
    diagnosis = exc.diagnosis or {}
    summary = diagnosis.get("summary")
    message = str(exc.args[0]) if exc.args else str(exc)
    if isinstance(exc, PreflightRefused):
        return Outcome("refused", "preflight", summary, message)
    if diagnosis.get("outcome") == "panic":
        return Outcome("panic", exc.phase, summary, message)
    if diagnosis.get("outcome") == "refused":
        return Outcome("refused", exc.phase, summary, message)
    if isinstance(exc, CycleTimedOut):
        return Outcome("hang", exc.phase, summary, message)
    return Outcome("fail", exc.phase, summary, message)


def outcome_of_error(exc: BaseException, stage: str = "setup") -> Outcome:
    """The outcome of a cell the workbench could not run (a kernel that does not build, a tool that is missing)."""
    return Outcome("error", stage, None, f"{type(exc).__name__}: {exc}")


def worst(outcomes: list[str]) -> str | None:
    """The worst of ``outcomes`` in the order of :data:`OUTCOMES` (None for none)."""
    known = [o for o in outcomes if o in OUTCOMES]
    return max(known, key=OUTCOMES.index) if known else None
