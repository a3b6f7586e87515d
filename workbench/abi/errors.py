"""Exceptions raised by the handover ABI decoders: one base class, one subclass per kind of damage.

Every message names what was being read and the physical address where the problem was found, so that a failed
decode of a guest memory dump points straight at the bytes to look at.
"""

from __future__ import annotations

__all__ = [
    "AbiError",
    "AddressNotInMemory",
    "IncompatibleFormat",
    "LoopDetected",
    "CountMismatch",
    "TruncatedData",
    "MalformedData",
    "AmbiguousHandover",
    "HandoverNotFound",
]


class AbiError(Exception):
    """Base class: the bytes in physical memory do not form a valid 7.2 KHO/LUO handover structure.

    ``phys`` is the physical address the problem was found at (``None`` when it is not about one address).
    """

    def __init__(self, message: str, phys: int | None = None):
        super().__init__(message)
        self.phys = phys


class AddressNotInMemory(AbiError):
    """A read (or a pointer about to be followed) falls outside the physical memory that is available."""


class IncompatibleFormat(AbiError):
    """A magic number or ``compatible`` string is not the one the 7.2 ABI writes (e.g. not ``kho-v4``)."""


class LoopDetected(AbiError):
    """A linked structure (kho_block list, kho_vmalloc chunk list, radix tree) reaches a node a second time."""


class CountMismatch(AbiError):
    """Two counts that must agree do not (e.g. ``luo_file_set_ser.count`` against the entries in its blocks)."""


class TruncatedData(AbiError):
    """Fewer bytes are present than a header or size field says there are."""


class MalformedData(AbiError):
    """Any other invalid value: a zero or misaligned pointer, an impossible order, an entry count of zero."""


class AmbiguousHandover(AbiError):
    """More than one KHO FDT was found while scanning and no address was given to choose between them."""

    def __init__(self, message: str, candidates: list[int]):
        super().__init__(message, candidates[0] if candidates else None)
        self.candidates = candidates


class HandoverNotFound(AbiError):
    """No KHO FDT was found in the memory that was scanned."""
