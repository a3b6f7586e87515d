"""The live half of the preflight: what the running kernel will actually hand over, read in the target just before
the kexec, against what the next kernel accepts.

:mod:`workbench.lab.preflight` compares the two kernels' formats from their sources and vmlinux before anything
boots. Here the agent reads the outgoing handover itself, as KHO shows it in debugfs (``kho/out/fdt``: the root
FDT, whose ``compatible`` is KHO's format; ``kho/out/sub_fdts/NAME``: each subsystem's blob, an FDT with its own
``compatible`` or, like LUO's ``struct luo_ser``, a structure that begins with its compatible string), and refuses
the kexec when one of those strings is not one the next kernel accepts. It imports only the standard library: the
agent imports it, and every import the agent makes before its first mark in the next kernel lengthens the blackout
(the full FDT decoder is :mod:`workbench.abi.fdt`)."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "KHO_OUT",
    "HandoverFormat",
    "blob_compatible",
    "fdt_root_compatible",
    "read_handover_formats",
    "live_preflight",
]

KHO_OUT = Path("/sys/kernel/debug/kho/out")
FDT_MAGIC = 0xD00DFEED
_FDT_MAGIC_BYTES = FDT_MAGIC.to_bytes(4, "big")
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP = 1, 2, 3, 4
#: the longest leading string taken for a structure's compatible (LUO's is 16 bytes; handlers' up to 48)
MAX_COMPATIBLE = 64
#: what a format name looks like (``kho-v4``, ``luo-v5``, ``memfd-v2``): a one-letter string is a number's byte
_COMPATIBLE = re.compile(r"[A-Za-z][A-Za-z0-9_.,+-]{2,63}")


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _c_string(blob: bytes, start: int, end: int) -> str | None:
    stop = blob.find(b"\0", start, end)
    return blob[start:stop].decode("ascii", "replace") if stop >= 0 else None


def fdt_root_compatible(blob: bytes) -> str | None:
    """The first string of the root node's ``compatible`` property of a flattened device tree, read with the
    standard library alone (the agent runs it just before the kexec); None when the bytes do not say (not an FDT,
    or cut short before the name or the value: 7.2's debugfs shows ``kho/out/fdt`` with the size the FDT had
    before the subsystems' nodes were added, which cuts off its strings block)."""
    if len(blob) < 40:
        return None
    magic, _, off_struct, off_strings, _, _, _, _, size_strings, _ = struct.unpack_from(">10I", blob)
    if magic != FDT_MAGIC:
        return None
    pos = off_struct
    if pos + 4 > len(blob) or struct.unpack_from(">I", blob, pos)[0] != FDT_BEGIN_NODE:
        return None
    name_end = blob.find(b"\0", pos + 4)
    if name_end < 0:
        return None
    pos = _align4(name_end + 1)
    while pos + 4 <= len(blob):
        token = struct.unpack_from(">I", blob, pos)[0]
        if token == FDT_NOP:
            pos += 4
            continue
        if token != FDT_PROP or pos + 12 > len(blob):
            return None
        length, name_off = struct.unpack_from(">II", blob, pos + 4)
        value = pos + 12
        if (
            name_off < size_strings
            and _c_string(blob, off_strings + name_off, off_strings + size_strings) == "compatible"
        ):
            return _c_string(blob, value, min(value + length, len(blob)))
        pos = _align4(value + length)
    return None


@dataclass(frozen=True)
class HandoverFormat:
    """One blob of the outgoing handover: ``subsystem`` (``KHO`` for the root FDT, else the sub-blob's name), its
    ``compatible`` string (None when it carries none or it cannot be read), ``kind`` (``fdt`` or ``struct``) and a
    ``note`` on why it could not be read."""

    subsystem: str
    compatible: str | None
    kind: str
    note: str | None = None


def blob_compatible(blob: bytes) -> tuple[str | None, str]:
    """The compatible string of a handover blob and its kind: an FDT's root ``compatible``, or the NUL-terminated
    format name a structure begins with (None when it begins with nothing that looks like one)."""
    if blob[:4] == _FDT_MAGIC_BYTES:
        name = fdt_root_compatible(blob)
        return (name if name and _COMPATIBLE.fullmatch(name) else None), "fdt"
    head = blob[:MAX_COMPATIBLE].split(b"\0", 1)
    if len(head) < 2:
        return None, "struct"
    text = head[0].decode("ascii", "replace")
    return (text if _COMPATIBLE.fullmatch(text) else None), "struct"


def _cut_short(blob: bytes) -> str | None:
    if blob[:4] != _FDT_MAGIC_BYTES or len(blob) < 8:
        return None
    total = struct.unpack_from(">I", blob, 4)[0]
    return f"debugfs shows {len(blob)} of the FDT's {total} bytes" if total > len(blob) else None


def read_handover_formats(out_dir: Path = KHO_OUT) -> list[HandoverFormat]:
    """Every blob the running kernel will hand over, from KHO's debugfs folder ``out_dir``. Raises ``OSError`` when
    there is no such folder (debugfs not mounted, or a kernel without KHO debugfs)."""
    paths = [("KHO", out_dir / "fdt")]
    subs = out_dir / "sub_fdts"
    paths += [(path.name, path) for path in (sorted(subs.iterdir()) if subs.is_dir() else [])]
    formats = []
    for name, path in paths:
        blob = path.read_bytes()
        compatible, kind = blob_compatible(blob)
        formats.append(HandoverFormat(name, compatible, kind, _cut_short(blob) if compatible is None else None))
    return formats


def live_preflight(
    formats: Iterable[HandoverFormat], accepted: Iterable[str], next_name: str = "the next kernel"
) -> dict[str, Any]:
    """The verdict on ``formats`` (:func:`read_handover_formats`) against the strings the next kernel
    (``next_name``) accepts: ``{"verdict": "pass"|"refuse", "formats": [...], "reasons": [...], "unchecked": [...]}``;
    a blob without a compatible string is listed as unchecked, not refused."""
    known = set(accepted)
    formats = list(formats)
    reasons = [
        f"{f.subsystem}: the running kernel hands over {f.compatible!r}, which {next_name} does not accept"
        for f in formats
        if f.compatible is not None and f.compatible not in known
    ]
    result: dict[str, Any] = {
        "verdict": "refuse" if reasons else "pass",
        "formats": [asdict(f) for f in formats],
        "reasons": reasons,
        "unchecked": [f.subsystem + (f" ({f.note})" if f.note else "") for f in formats if f.compatible is None],
    }
    return result
