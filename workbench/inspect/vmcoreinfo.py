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
import re
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
    """Every distinct VMCOREINFO text in raw memory, in address order: ASCII from ``OSRELEASE=`` to a NUL at most
    4 KiB further, with the ``PAGESIZE=``, ``KERNELOFFSET=`` and ``SYMBOL(init_uts_ns)=`` lines the kernel writes
    (an ``OSRELEASE=`` inside a candidate starts no other one).

    The work is linear in the size of ``mm`` whatever it holds (guest RAM is the guest's to fill): the next NUL,
    non-ASCII byte and key line are each searched for once for all candidates, and a text is copied out only when
    it is a candidate, after which the search goes on past it.

    :param mm: guest RAM (a RAM file or a dump, mapped)
    :param limit: stop after this many candidates
    """
    seen: dict[str, None] = {}
    nul = _NextMatch(mm, re.compile(rb"\x00"))
    not_ascii = _NextMatch(mm, re.compile(rb"[\x80-\xff]"))
    keys = [_NextMatch(mm, re.compile(re.escape(b"\n" + key.encode() + b"="))) for key in _REQUIRED_KEYS]
    pos = mm.find(b"OSRELEASE=")
    while pos >= 0 and len(seen) < limit:
        end = nul.at_or_after(pos)
        if (
            0 <= end < pos + 4096
            and not pos <= not_ascii.at_or_after(pos) < end
            and all(pos <= key.at_or_after(pos) < end for key in keys)
        ):
            seen.setdefault(mm[pos:end].decode("ascii"))
            pos = mm.find(b"OSRELEASE=", end)
        else:
            pos = mm.find(b"OSRELEASE=", pos + 10)
    return list(seen)


_REQUIRED_KEYS = ("PAGESIZE", "KERNELOFFSET", "SYMBOL(init_uts_ns)")


class _NextMatch:
    """Where ``pattern`` next matches in ``mm`` at or after a position, for positions that only grow: each search
    resumes where the last match was, so all of them together read ``mm`` once."""

    def __init__(self, mm: mmap.mmap | bytes, pattern: re.Pattern[bytes]):
        self._mm = mm
        self._pattern = pattern
        self._at = -2  # the last match found (-1: none is left, -2: not searched yet)

    def at_or_after(self, pos: int) -> int:
        if self._at == -1 or self._at >= pos:
            return self._at
        match = self._pattern.search(self._mm, pos)
        self._at = match.start() if match else -1
        return self._at


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
