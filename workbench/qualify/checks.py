"""What a cell checks: the :class:`Check` protocol and the registry of checks by name.

A check turns a cell (from → to) into a cycle workload and may prepare host-side files once per kernel before any
cell runs (e.g. build the selftests from each kernel's sources). A new check is a subclass decorated with
:func:`register`. The built-in ones:

- ``memfd``: memfds of several sizes in one LUO session and many small files in a second (the ``sessions``
  workload), verified page by page;
- ``luo_kexec_simple``, ``luo_multi_session``: upstream's liveupdate selftests, stage 1 built from the ``from``
  kernel's sources and run there, stage 2 built from the ``to`` kernel's and run after the kexec;
- ``criu``: a process checkpointed by CRIU into LUO-preserved memory and restored, in same-version cells only."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from workbench.lab.kernel import LabKernel
from workbench.lab.selftests import build_selftests
from workbench.lab.workload import Workload, make_workload
from workbench.qualify.errors import InvalidQualification
from workbench.qualify.matrix import Cell
from workbench.qualify.params import QualifyParams

__all__ = ["Check", "register", "check_class", "check_names", "same_version_checks"]

_REGISTRY: dict[str, type[Check]] = {}


class Check:
    """Base class of the checks: ``name``, whether it runs only where a kernel kexecs into itself
    (``same_version_only``), and how a cell becomes a workload."""

    name: ClassVar[str] = ""
    same_version_only: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def workload(self, cell: Cell, params: QualifyParams) -> Workload:
        """The cycle workload of ``cell`` (from, to, check) under the qualification's ``params``."""
        raise NotImplementedError

    def prepare(self, kernels: dict[str, LabKernel], progress: Any = None) -> None:
        """Host-side work done once before any cell runs; ``kernels`` maps each name to its built kernel."""


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: makes ``cls`` known by ``cls.name``."""
    if not cls.name:
        raise TypeError(f"check class {cls.__name__} needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def check_names() -> list[str]:
    """Every registered check, in the order registered."""
    return list(_REGISTRY)


def check_class(name: str) -> type[Check]:
    """The check registered as ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidQualification(f"unknown check {name!r}: choose from {', '.join(check_names())}") from None


def same_version_checks(names: list[str]) -> list[str]:
    """Those of ``names`` that run only where a kernel kexecs into itself."""
    return [name for name in names if check_class(name).same_version_only]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@register
class MemfdCheck(Check):
    name = "memfd"
    description = "memfds of several sizes in one session and many small files in another, verified page by page"

    def workload(self, cell: Cell, params: QualifyParams) -> Workload:
        return make_workload(
            "sessions",
            sizes=list(params.sizes),
            small_files=params.small_files,
            small_file_size=params.small_file_size,
        )


class SelftestCheck(Check):
    """One of upstream's liveupdate selftests that span a kexec."""

    def workload(self, cell: Cell, params: QualifyParams) -> Workload:
        return make_workload("selftest", test=self.name, stage1_kernel=cell.source, stage2_kernel=cell.target)

    def prepare(self, kernels: dict[str, LabKernel], progress: Any = None) -> None:
        for kernel in kernels.values():
            build_selftests(kernel, progress=_say if progress else None)


@register
class LuoKexecSimple(SelftestCheck):
    name = "luo_kexec_simple"
    description = "upstream's luo_kexec_simple: one session, one memfd, across the kexec"


@register
class LuoMultiSession(SelftestCheck):
    name = "luo_multi_session"
    description = "upstream's luo_multi_session: several sessions, empty and with files, across the kexec"


@register
class CriuCheck(Check):
    name = "criu"
    same_version_only = True
    description = "a process checkpointed by CRIU into LUO-preserved memfds and restored after the kexec"

    def workload(self, cell: Cell, params: QualifyParams) -> Workload:
        return make_workload("criu", anon_size=params.criu_size)
