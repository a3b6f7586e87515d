"""What a qualification runs: :class:`QualifyParams`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from workbench.qualify.errors import InvalidQualification

__all__ = ["QualifyParams", "DEFAULT_SIZES", "DEFAULT_CHECKS"]

PAGE = 4096
#: the memfd cell's files: one of at least 256 MiB, and smaller ones down to one page (one not a power of two)
DEFAULT_SIZES = (256 << 20, 16 << 20, (1 << 20) + PAGE, PAGE)
#: the checks of a qualification unless others are named (see :mod:`workbench.qualify.checks`)
DEFAULT_CHECKS = ("memfd", "luo_kexec_simple", "luo_multi_session", "criu")


@dataclass
class QualifyParams:
    """``kernels``: the kernels to qualify against each other (names as
    :func:`~workbench.lab.kernel.resolve_kernel` takes them: ``7.2``, ``7.3``, ``7.2+luo-compat-mismatch``);
    ``checks``: the check names; ``sizes``: the memfd cell's files in one session (bytes, whole pages);
    ``small_files``/``small_file_size``: its second session of many small files; ``criu_size``: the CRIU cell's
    anonymous memory; ``preflight``/``force``: as for a cycle; ``cpus``: each VM's vCPUs."""

    kernels: list[str]
    checks: list[str] = field(default_factory=lambda: list(DEFAULT_CHECKS))
    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    small_files: int = 64
    small_file_size: int = PAGE
    criu_size: int = 32 << 20
    preflight: bool = True
    force: bool = False
    cpus: int = 1

    def validate(self) -> None:
        """Raises :class:`InvalidQualification` naming the first parameter that is wrong."""
        if not self.kernels:
            raise InvalidQualification("a qualification needs at least one kernel: give --kernels 7.2,7.3")
        for name, value in (("small_files", self.small_files), ("criu_size", self.criu_size)):
            if value < 0:
                raise InvalidQualification(f"{name} cannot be negative, not {value}")
        for size in [*self.sizes, self.small_file_size, self.criu_size]:
            if size % PAGE:
                raise InvalidQualification(f"size {size} is not a whole number of {PAGE}-byte pages")
        if self.cpus < 1:
            raise InvalidQualification("a VM needs at least one CPU")

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for the record and for Dask workers)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QualifyParams:
        """The parameters :meth:`as_dict` gave (keys it does not know are left out)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
