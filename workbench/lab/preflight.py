"""Preflight: before a kexec, can the next kernel accept what the running kernel will hand over?

Every handover subsystem names its format with a compatible string (``kho-v4``, ``luo-v5``, ``memfd-v2``...) or a
version, and the next kernel refuses state whose name it does not know: in 7.2 a refused LUO state ends in
``luo_restore_fail()``, a panic during boot. The preflight compares, subsystem by subsystem, the names the running
kernel writes with those the next kernel accepts, each read from the kernel's own ABI headers and confirmed in its
vmlinux (:mod:`workbench.inspect.abi_diff`). Equal names are necessary, not sufficient (7.3 rewrote the radix-tree
key code under the same ``kho-v4``): ``workbench abi diff`` compares the layouts and keys as well."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.abi.abi_headers import ABI_HEADER_DIR, read_abi_headers
from workbench.lab.kernel import LabKernel

__all__ = ["Preflight", "preflight", "accepted_strings", "PASS", "REFUSE"]

PASS = "pass"
REFUSE = "refuse"


@dataclass
class Preflight:
    """The verdict (``pass`` or ``refuse``) for a kexec from ``running`` into ``next``, with one check per
    subsystem (``subsystem``, ``running``: what the running kernel writes, ``next``: what the next accepts, ``ok``)
    and the ``reasons`` for a refusal, each naming its subsystem."""

    running: str
    next: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return REFUSE if self.reasons else PASS

    def message(self) -> str:
        if not self.reasons:
            return f"preflight: {self.next} accepts every handover format {self.running} writes"
        return f"preflight refuses the kexec from {self.running} into {self.next}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "running": self.running,
            "next": self.next,
            "checks": self.checks,
            "reasons": self.reasons,
        }


def preflight(running: LabKernel, next_kernel: LabKernel) -> Preflight:
    """Compares the handover formats ``running`` writes with those ``next_kernel`` accepts.

    :param running: the kernel that is booted and will hand over
    :param next_kernel: the kernel it will kexec into
    :raises FileNotFoundError: a kernel without its vmlinux or source tree
    """
    from workbench.inspect.abi_diff import compare_formats, kernel_abi_source  # drgn: only when a cycle checks

    a, b = kernel_abi_source(running), kernel_abi_source(next_kernel)
    headers_a, headers_b = read_abi_headers(a.source), read_abi_headers(b.source)

    names = (running.name, next_kernel.name)
    result = Preflight(*names)
    for c in compare_formats(a, b, headers_a, headers_b, names):
        reason = _refusal(c, names)
        result.checks.append(
            {"subsystem": c.subsystem, "format": c.macro, "running": c.a, "next": c.b, "ok": reason is None}
        )
        if reason:
            result.reasons.append(reason)
    return result


def _refusal(c, names: tuple[str, str]) -> str | None:
    """Why the next kernel would refuse what the running one writes in this format, or None. Only what the running
    kernel hands over can be refused: a format only the next kernel knows, or one the running kernel defines but
    does not build in, is no obstacle."""
    running, nxt = names
    if c.a is None:
        return None
    if c.kind == "string" and c.section_a is None:
        return None  # defined in the headers, not built into the running kernel: it writes nothing of it
    if c.b is None:
        return f"{c.subsystem}: {running} hands over {c.a!r} ({c.macro}), {nxt} has no such format"
    if c.a != c.b:
        return f"{c.subsystem}: {running} hands over {c.a!r}, {nxt} accepts only {c.b!r}"
    if c.kind == "string" and c.section_b is None:
        return f"{c.subsystem}: {running} hands over {c.a!r}, but {nxt} is built without {c.subsystem}"
    return None


def accepted_strings(kernel: LabKernel) -> list[str] | None:
    """The format names (compatible strings) ``kernel``'s handover ABI headers define: what it accepts, for the
    live check in the target just before the kexec (:mod:`workbench.lab.handover_live`). None when the kernel's
    source tree is not at hand.

    :param kernel: the kernel that will boot next
    """
    source = kernel.source_with(ABI_HEADER_DIR)
    if source is None:
        return None
    return sorted({c.value for c in read_abi_headers(source).constants if isinstance(c.value, str)})
