"""The kernel's VMCOREINFO: parsing it, reading the copy drgn got, and finding it in raw guest RAM.

VMCOREINFO is the ``KEY=value`` text a kernel publishes for dump tools: ``OSRELEASE``, ``BUILD-ID``,
``KERNELOFFSET``, ``SYMBOL(name)`` addresses, ``OFFSET(struct.member)``... drgn needs it to make sense of raw
memory. A dump or a QMP connection hands it over; guest RAM read from a file does not, so it is found by scanning
RAM for its text (:func:`vmcoreinfo_candidates`) and, when a kexec left an older kernel's copy behind, choosing
the running kernel's (:func:`running_vmcoreinfo`).
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import drgn

from workbench.inspect.errors import VmUnreachable
from workbench.lab.errors import QMPError

if TYPE_CHECKING:
    from workbench.abi.physmem import MemoryRange
    from workbench.lab.qmp import QMPClient

__all__ = ["parse_vmcoreinfo", "vmcoreinfo", "vmcoreinfo_candidates", "running_vmcoreinfo"]

_START_KERNEL_MAP = 0xFFFFFFFF80000000  # x86_64: where the kernel image is mapped, phys_base onwards
_NEW_UTS_LEN = 65  # bytes of each field of struct new_utsname


def parse_vmcoreinfo(text: str | bytes) -> dict[str, str]:
    """The ``KEY=value`` lines of a VMCOREINFO blob as a dict (``SYMBOL(x)`` keys kept as written).

    :param text: the blob; as bytes it ends at the first NUL
    """
    if isinstance(text, bytes):
        text = text.split(b"\0", 1)[0].decode("utf-8", "replace")
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def vmcoreinfo(prog: drgn.Program) -> dict[str, str]:
    """The kernel's VMCOREINFO (``OSRELEASE``, ``BUILD-ID``, ``KERNELOFFSET``, ...) as drgn got it; empty when
    drgn has none.

    :param prog: a Linux kernel program
    """
    try:
        raw = prog["VMCOREINFO"]
    except (KeyError, LookupError):
        return {}
    return parse_vmcoreinfo(raw.string_())


def vmcoreinfo_candidates(mm: mmap.mmap | bytes, limit: int = 64) -> list[str]:
    """Every distinct VMCOREINFO text in raw memory, in address order: NUL-terminated ASCII from ``OSRELEASE=``
    with the ``PAGESIZE``, ``KERNELOFFSET`` and ``SYMBOL(init_uts_ns)`` keys.

    :param mm: guest RAM (a RAM file or a dump, mapped)
    :param limit: stop after this many candidates
    """
    seen: dict[str, None] = {}
    pos = mm.find(b"OSRELEASE=")
    while pos >= 0 and len(seen) < limit:
        end = mm.find(b"\0", pos, pos + 4096)
        raw = mm[pos : end if end >= 0 else pos + 4096]
        with contextlib.suppress(UnicodeDecodeError):
            text = raw.decode("ascii")
            keys = parse_vmcoreinfo(text)
            if "PAGESIZE" in keys and "KERNELOFFSET" in keys and "SYMBOL(init_uts_ns)" in keys:
                seen.setdefault(text)
        pos = mm.find(b"OSRELEASE=", pos + 10)
    return list(seen)


def running_vmcoreinfo(
    candidates: list[str], qmp: QMPClient | None, mm: mmap.mmap | bytes, ranges: Sequence[MemoryRange]
) -> tuple[str, str]:
    """Chooses the VMCOREINFO of the kernel that runs now, as (text, why): after a kexec, the previous kernel's
    copy (another KASLR offset) may still be in RAM. With QMP, the CPU's page tables decide (``gva2gpa`` of
    ``init_uts_ns``); without, the copy whose ``init_uts_ns`` is where its own ``phys_base`` puts it.

    :param candidates: from :func:`vmcoreinfo_candidates` (at least one)
    :param qmp: a session with the running guest's QEMU, or ``None`` for a dump
    :param mm: the guest RAM the candidates were found in
    :param ranges: where each part of ``mm`` is in guest physical memory
    :raises VmUnreachable: no candidate is consistent
    """
    if len(candidates) == 1:
        return candidates[0], "one VMCOREINFO in guest RAM"
    if qmp is not None:
        for text in candidates:
            info = parse_vmcoreinfo(text)
            with contextlib.suppress(QMPError, ValueError):
                reply = qmp.human_monitor(f"gva2gpa 0x{info['SYMBOL(init_uts_ns)']}")
                if "gpa:" in reply:
                    return text, f"{len(candidates)} VMCOREINFO copies in guest RAM; chose the one the CPU maps"
    plausible = []
    for text in candidates:
        info = parse_vmcoreinfo(text)
        with contextlib.suppress(KeyError, ValueError):
            vaddr = int(info["SYMBOL(init_uts_ns)"], 16)
            phys_base = int(info.get("NUMBER(phys_base)", "0"), 0)
            phys = vaddr - _START_KERNEL_MAP + phys_base
            offset = int(info.get("OFFSET(uts_namespace.name)", "0"), 0) + _NEW_UTS_LEN  # new_utsname.release
            for r in ranges:
                if r.phys_start <= phys < r.phys_end:
                    at = r.file_offset + phys - r.phys_start + offset
                    if mm[at : at + _NEW_UTS_LEN].split(b"\0", 1)[0].decode(errors="replace") == info["OSRELEASE"]:
                        plausible.append(text)
    if plausible:
        return plausible[-1], f"{len(candidates)} VMCOREINFO copies in guest RAM, {len(plausible)} plausible"
    raise VmUnreachable(f"found {len(candidates)} VMCOREINFO copies in guest RAM and none is consistent")
