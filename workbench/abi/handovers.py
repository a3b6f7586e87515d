"""Every KHO handover in a memory image, each labelled with its role, and the one to report.

In the next kernel, RAM holds two KHO FDTs: the one the previous kernel handed over (kept: its page stays
reserved) and the running kernel's own outgoing one. Their ``kexec-metadata`` blobs tell them apart: each kernel
writes the kexec count it was started with plus one, so the FDT with the highest count is the running kernel's
``outgoing`` handover, the one with one less the ``incoming`` handover it received, and any lower one ``older``.

An incoming (or older) handover's preserved-memory map was consumed at boot: its bits became memblock
reservations and its pages are free memory in the new kernel, so it is not walked and its references are not
checked against it. LUO frees the incoming ``luo_ser`` as soon as it has read it, so what hangs off it may be
gone: those handovers are decoded leniently, their errors listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.abi.errors import AbiError, AmbiguousHandover, HandoverNotFound
from workbench.abi.fdt import find_kho_fdts, read_fdt_blob, read_kho_fdt
from workbench.abi.handover import Handover, decode_handover
from workbench.abi.kexec_metadata import KHO_METADATA_NODE_NAME, decode_kexec_metadata
from workbench.abi.physmem import PhysicalMemory

__all__ = ["FdtRole", "HandoverSet", "fdt_roles", "fdt_address", "decode_handovers"]


@dataclass(frozen=True)
class FdtRole:
    """What one KHO FDT in memory is: its ``role`` (``outgoing``, ``incoming``, ``older`` or ``unknown``), the kexec
    count its metadata says (``None`` when it has none that decodes) and ``reason``, in words."""

    phys: int
    role: str
    kexec_count: int | None
    reason: str


@dataclass
class HandoverSet:
    """Every handover found (ascending FDT address), the one reported (``chosen``) and why it was chosen."""

    handovers: list[Handover]
    chosen: Handover
    why: str

    def labelled(self) -> list[dict]:
        """One JSON-ready entry per handover: its FDT address, role, why, whether it is the chosen one, and its
        summary."""
        return [
            {
                "fdt_phys": h.fdt.phys,
                "role": h.role,
                "role_reason": h.role_reason,
                "chosen": h is self.chosen,
                "summary": h.summary(),
            }
            for h in self.handovers
        ]


def _kexec_count(mem: PhysicalMemory, phys: int) -> int | None:
    try:
        sub = read_kho_fdt(mem, phys).subtree(KHO_METADATA_NODE_NAME)
        return None if sub is None else decode_kexec_metadata(mem, sub.data_phys, sub.blob_size).kexec_count
    except AbiError:
        return None


def fdt_roles(mem: PhysicalMemory, fdts: list[int]) -> list[FdtRole]:
    """The role of each KHO FDT at ``fdts``, from the kexec counts of their ``kexec-metadata`` (see the module's
    documentation).

    :param mem: the memory holding them
    :param fdts: their physical addresses
    """
    counts = {phys: _kexec_count(mem, phys) for phys in fdts}
    if len(fdts) == 1:
        (phys,) = fdts
        return [FdtRole(phys, "outgoing", counts[phys], "the only KHO FDT in memory: the running kernel's own")]
    known = [c for c in counts.values() if c is not None]
    top = max(known) if known else None
    roles = []
    for phys, count in counts.items():
        if count is None:
            roles.append(FdtRole(phys, "unknown", None, "its kexec-metadata is missing or does not decode"))
        elif count == top and known.count(top) > 1:
            roles.append(FdtRole(phys, "unknown", count, f"{known.count(top)} FDTs claim the same kexec count {count}"))
        elif count == top:
            roles.append(
                FdtRole(phys, "outgoing", count, f"kexec count {count}, the highest: the running kernel's own handover")
            )
        elif count == top - 1:
            roles.append(
                FdtRole(
                    phys,
                    "incoming",
                    count,
                    f"kexec count {count}, one less than the running kernel's {top}: "
                    "handed over by the previous kernel",
                )
            )
        else:
            roles.append(FdtRole(phys, "older", count, f"kexec count {count}, below the previous kernel's {top - 1}"))
    return roles


def fdt_address(mem: PhysicalMemory, blob: bytes) -> int | None:
    """The address of the KHO FDT in ``mem`` whose bytes are ``blob`` (e.g. a copy of debugfs ``kho/in/fdt``),
    ``None`` when none is.

    :param mem: the memory to look in
    :param blob: a complete FDT
    """
    for phys in find_kho_fdts(mem):
        try:
            if read_fdt_blob(mem, phys) == bytes(blob):
                return phys
        except AbiError:
            continue
    return None


def decode_handovers(
    mem: PhysicalMemory, fdt_phys: int | None = None, *, memory_map: bool = True, strict: bool = True
) -> HandoverSet:
    """Decodes every KHO FDT in ``mem`` (and ``fdt_phys``, when given) with its role, and chooses the one to
    report: ``fdt_phys`` when given; else the outgoing handover once it is serialized or when there is no incoming
    one; else the incoming one (the handover the running kernel is taking over).

    :param mem: guest physical memory
    :param fdt_phys: the FDT to report, when known
    :param memory_map: walk the outgoing handover's preserved-memory radix tree
    :param strict: let an :class:`AbiError` of the chosen handover propagate (unless it is the incoming one,
        whose ``luo_ser`` LUO frees once read). Every other FDT is decoded leniently, its errors in its
        :attr:`~workbench.abi.handover.Handover.errors`: a stale or garbled FDT beside it does not stop the report
    :raises HandoverNotFound: no KHO FDT in ``mem``
    :raises AmbiguousHandover: several FDTs whose kexec metadata does not tell which is the running kernel's
    """
    found = find_kho_fdts(mem)
    if fdt_phys is not None and fdt_phys not in found:
        found = sorted([*found, fdt_phys])
    if not found:
        raise HandoverNotFound(f"no kho-v4 FDT at any page start of {len(mem.ranges)} memory range(s)")
    roles = fdt_roles(mem, found)
    if fdt_phys is None and not any(r.role == "outgoing" for r in roles):
        raise AmbiguousHandover(
            f"{len(found)} kho-v4 FDTs found ({', '.join(f'{r.phys:#x} ({r.reason})' for r in roles)}) and their "
            "kexec metadata does not say which is the running kernel's: pass the one to decode",
            found,
        )
    handovers = []
    for r in roles:
        walked = r.role in ("outgoing", "unknown")
        h = decode_handover(mem, r.phys, memory_map=memory_map and walked, strict=False)
        h.role, h.role_reason, h.memory_map_consumed = r.role, r.reason, not walked
        handovers.append(h)
    chosen, why = _choose(handovers, fdt_phys)
    if strict and chosen.role != "incoming" and chosen.errors:
        raise chosen.errors[0]  # what a strict decode of it alone raises: the first part that failed
    return HandoverSet(handovers, chosen, why)


def _choose(handovers: list[Handover], fdt_phys: int | None) -> tuple[Handover, str]:
    """The handover to report and why (see :func:`decode_handovers`)."""
    by_role = {h.role: h for h in handovers}
    if fdt_phys is not None:
        return next(h for h in handovers if h.fdt.phys == fdt_phys), f"the FDT at {fdt_phys:#x} was asked for"
    own = by_role["outgoing"]
    if "incoming" not in by_role:
        return own, "the running kernel's own handover: " + (
            "the only one in memory" if len(handovers) == 1 else "no other FDT is the one it was handed"
        )
    if own.luo is not None and own.luo.sessions_pa:
        return own, "the running kernel's own handover, already serialized for the next kexec"
    state = "is not serialized" if own.luo is not None else "has no LUO state that decodes (see its errors)"
    return by_role["incoming"], (
        "the handover the running kernel was handed (the kexec metadata says which FDT is which); its own "
        f"outgoing one {state}"
    )
