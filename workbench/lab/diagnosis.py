"""What a failed cycle's serial log says went wrong: which subsystem refused which handover, and a panic's message
and location.

The next kernel states a refused handover in its own words: KHO ("KHO: setup: handover FDT (...) is incompatible
with 'kho-v4'"), LUO ("LUO state is incompatible with 'luo-v5'", after which 7.2's ``luo_restore_fail()`` panics),
a file handler ("No registered handler for compatible 'memfd-v2'"). A panic prints "Kernel panic - not syncing:"
with its message, and the call trace before it names where. :func:`diagnose` reads those lines, nothing else: a
log that has none of them gives no diagnosis rather than a guess."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Refusal", "Diagnosis", "diagnose", "diagnose_file"]

_REFUSALS = (
    ("KHO", re.compile(r"KHO: setup: handover FDT \(([^)]*)\) is incompatible with '([^']*)'")),
    ("KHO", re.compile(r"KHO: (?:broken KHO subnode '[^']*'|kexec-metadata version \d+ not supported)[^\n]*")),
    ("LUO", re.compile(r"LUO state is incompatible with '([^']*)'")),
    ("LUO file handler", re.compile(r"No registered handler for compatible '([^']*)'")),
)
_PANIC = re.compile(r"Kernel panic - not syncing: (.*?)\s*$")
_FRAME = re.compile(r"^\s*(\?\s+)?([A-Za-z_][A-Za-z0-9_.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
#: the serial log's host arrival stamp and the kernel's printk time, either or both
_TIMESTAMP = re.compile(r"^(?:\[\s*\d+\.\d+\]\s?)+")
_PANIC_HELPERS = {"dump_stack_lvl", "dump_stack", "panic", "vpanic", "show_stack", "__warn", "nmi_panic"}


@dataclass(frozen=True)
class Refusal:
    """One handover the kernel refused: the ``subsystem`` (KHO, LUO, LUO file handler), what it accepts or was
    offered (``compatible``, when the message names it) and the log ``line``."""

    subsystem: str
    compatible: str | None
    line: str


@dataclass
class Diagnosis:
    """``outcome``: ``panic``, ``refused`` (a refusal without a panic) or None; the refusals in log order; a
    panic's ``panic_message`` and ``panic_location`` (the first function of its call trace that is not the panic
    machinery itself)."""

    outcome: str | None = None
    refusals: list[Refusal] = field(default_factory=list)
    panic_message: str | None = None
    panic_location: str | None = None

    @property
    def subsystem(self) -> str | None:
        """The first subsystem that refused, which is where a failure began."""
        return self.refusals[0].subsystem if self.refusals else None

    def summary(self) -> str | None:
        """One sentence for people, or None when the log says nothing."""
        parts = []
        for refusal in self.refusals:
            what = (
                f" (it accepts '{refusal.compatible}')"
                if refusal.compatible and refusal.subsystem != "LUO file handler"
                else ""
            )
            offered = (
                f" '{refusal.compatible}'" if refusal.subsystem == "LUO file handler" and refusal.compatible else ""
            )
            parts.append(f"{refusal.subsystem} refused the handover{offered}{what}")
        if self.panic_message:
            where = f" in {self.panic_location}" if self.panic_location else ""
            parts.append(f"kernel panic{where}: {self.panic_message}")
        return "; ".join(parts) or None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "subsystem": self.subsystem, "summary": self.summary()}


def _text(line: str) -> str:
    return _TIMESTAMP.sub("", line.rstrip("\r\n"))


def _trace_after(lines: list[str], start: int) -> list[str]:
    """The function names of the first call trace at or after ``start``."""
    frames: list[str] = []
    for line in lines[start : start + 200]:
        if "Call Trace:" in line:
            frames = []
            continue
        frame = _FRAME.match(line)
        if frame:
            if not frame.group(1):  # "? name": a stale address on the stack, not a caller
                frames.append(frame.group(2))
        elif frames and not line.strip().startswith("<"):
            break
    return frames


def diagnose(lines: Iterable[str]) -> Diagnosis:
    """The diagnosis of a serial console log given as its lines."""
    text = [_text(line) for line in lines]
    diagnosis = Diagnosis()
    for index, line in enumerate(text):
        for subsystem, pattern in _REFUSALS:
            match = pattern.search(line)
            if match:
                compatible = match.groups()[-1] if match.groups() else None
                diagnosis.refusals.append(Refusal(subsystem, compatible, line.strip()))
                break
        panic = _PANIC.search(line)
        if panic and diagnosis.panic_message is None:
            diagnosis.panic_message = panic.group(1)
            frames = _trace_after(text, index + 1)
            diagnosis.panic_location = next((f for f in frames if f not in _PANIC_HELPERS), None)
    if diagnosis.panic_message is not None:
        diagnosis.outcome = "panic"
    elif diagnosis.refusals:
        diagnosis.outcome = "refused"
    return diagnosis


def diagnose_file(path: str | Path, *, limit: int = 16 << 20) -> Diagnosis:
    """The diagnosis of the serial log at ``path`` (its last ``limit`` bytes; a missing log gives none)."""
    path = Path(path)
    if not path.is_file():
        return Diagnosis()
    with path.open("rb") as log:
        size = log.seek(0, 2)
        log.seek(max(0, size - limit))
        data = log.read()
    return diagnose(data.decode("utf-8", "replace").splitlines())
