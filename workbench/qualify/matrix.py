"""The cells of a qualification: every ordered pair of kernels (each into itself included) times every check.

A :class:`Cell` is plain data (it travels to Dask workers): the kernel that boots (``source``, the "from" of the
matrix), the kernel kexec'd into (``target``, the "to"), and the check's name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from workbench.qualify.errors import InvalidQualification

__all__ = ["Cell", "plan_cells", "pairs"]


@dataclass(frozen=True)
class Cell:
    """One cell: ``check`` run from ``source`` (a kernel name as :func:`~workbench.lab.kernel.resolve_kernel` takes
    it) into ``target``."""

    source: str
    target: str
    check: str

    @property
    def same_version(self) -> bool:
        """Whether the cell kexecs a kernel into itself."""
        return self.source == self.target

    @property
    def label(self) -> str:
        """``from → to: check``, for people."""
        return f"{self.source} → {self.target}: {self.check}"

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for a Dask worker (``Cell(**cell.as_dict())`` gives it back)."""
        return asdict(self)


def pairs(kernels: Sequence[str]) -> list[tuple[str, str]]:
    """Every ordered pair of ``kernels`` (from, to), each kernel into itself first, in the order given."""
    if not kernels:
        raise InvalidQualification("a qualification needs at least one kernel: give --kernels 7.2,7.3")
    duplicates = sorted({k for k in kernels if list(kernels).count(k) > 1})
    if duplicates:
        raise InvalidQualification(f"kernel {duplicates[0]!r} is named twice in --kernels")
    return [(a, b) for a in kernels for b in kernels]


def plan_cells(kernels: Sequence[str], checks: Sequence[str], same_version_only: Sequence[str] = ()) -> list[Cell]:
    """The cells of ``checks`` over every ordered pair of ``kernels``; the checks named in ``same_version_only``
    run only where a kernel kexecs into itself."""
    if not checks:
        raise InvalidQualification("a qualification needs at least one check")
    repeated = sorted({c for c in checks if list(checks).count(c) > 1})
    if repeated:
        raise InvalidQualification(f"check {repeated[0]!r} is named twice in --checks")
    return [
        Cell(source, target, check)
        for source, target in pairs(kernels)
        for check in checks
        if source == target or check not in same_version_only
    ]
