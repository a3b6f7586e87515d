"""What a cycle keeps alive across the kexec: the :class:`Workload` protocol and the registry of workloads by name.

A workload is one class (a dataclass whose fields are its parameters) that says how to check its parameters, what
to ask the agent for, how much guest memory it needs, which phases its agent reports and how to summarise the
agent's results; its agent-side code is a class named by ``agent`` (``"module:Class"``), imported on the target
only. The cycle (:mod:`workbench.lab.cycle`) and the targets use nothing else, so a new workload is one module:
a subclass of :class:`Workload` decorated with :func:`register`.

The built-in workloads are found by name without importing them all up front: ``memfd``
(:mod:`workbench.lab.workloads.memfd`), ``converted`` (:mod:`workbench.lab.workloads.converted`), ``criu``
(:mod:`workbench.lab.workloads.criu`), ``sessions`` (memfds of several sizes and a session of small files,
:mod:`workbench.lab.workloads.sessions`) and ``selftest`` (the kernel's own kexec-spanning liveupdate selftests,
stage 1 before the kexec and stage 2 after it, :mod:`workbench.lab.workloads.selftest`) and ``baseline`` (a kexec
that preserves nothing, :mod:`workbench.lab.workloads.baseline`)."""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, ClassVar

from workbench.lab.errors import InvalidCycle, UnknownName
from workbench.lab.faults import Faults

__all__ = ["Workload", "register", "workload_class", "workload_names", "make_workload", "agent_class"]

PAGE_SIZE = 4096

_BUILTIN = {
    "memfd": "workbench.lab.workloads.memfd",
    "converted": "workbench.lab.workloads.converted",
    "criu": "workbench.lab.workloads.criu",
    "selftest": "workbench.lab.workloads.selftest",
    "sessions": "workbench.lab.workloads.sessions",
    "baseline": "workbench.lab.workloads.baseline",
    "preload": "workbench.lab.workloads.preload",
    "systemd": "workbench.lab.workloads.systemd",
}
_REGISTRY: dict[str, type[Workload]] = {}


class Workload:
    """Base class of the workloads. Subclasses are dataclasses; they set the class attributes and override what
    differs from the defaults."""

    #: the name the CLI, the records and the agent's request use
    name: ClassVar[str] = ""
    #: the agent-side class, ``"module:Class"``: it runs on the target (see :mod:`workbench.lab.agent`)
    agent: ClassVar[str] = ""
    #: the agent's phases before the kexec and after it, in order, each ending with a ``phase-end`` mark
    phases_before_kexec: ClassVar[tuple[str, ...]] = ()
    phases_after_kexec: ClassVar[tuple[str, ...]] = ()
    #: the targets that can run it (names from :mod:`workbench.lab.target`)
    targets: ClassVar[tuple[str, ...]] = ("qemu", "ssh")
    #: the guest RAM a QEMU target gives it beyond what :meth:`memory_copies` of its data need, in MiB
    base_memory_mb: ClassVar[int] = 640
    #: the ``--crash-after`` points (:data:`workbench.lab.kdump.CRASH_POINTS`) where its agent stops and can panic
    #: the target for a kdump; none by default
    crash_points: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        """Raises :class:`~workbench.lab.errors.InvalidCycle` naming the parameter that is wrong."""

    def validate_session(self, session: str) -> None:
        """Raises :class:`~workbench.lab.errors.InvalidCycle` when the cycle's LUO session name ``session`` does not
        suit the workload (e.g. a workload that adds a suffix for a second session)."""

    def validate_faults(self, faults: Faults) -> None:
        """Raises :class:`~workbench.lab.errors.InvalidCycle` when ``faults`` name something the workload lacks."""

    def faults(self) -> dict[str, Any]:
        """The workload's own faults, merged into the request's ``faults``."""
        return {}

    def request(self) -> dict[str, Any]:
        """The workload's fields of ``request.json`` (beside the cycle's own, see :class:`protocol.Request`)."""
        return {}

    def data_bytes(self) -> int:
        """The bytes the workload keeps alive (for guest sizing and timeouts)."""
        return 0

    def timeout_bytes(self) -> int:
        """The bytes the agent's slowest phase handles: the host's timeouts grow with them."""
        return self.data_bytes()

    def memory_copies(self) -> int:
        """How many copies of its data exist in the guest at once (its memory and what it is copied into)."""
        return 2

    def memory_mb(self) -> int:
        """The guest RAM a VM needs for it: at least 1 GiB, rounded up to 256 MiB."""
        need = self.base_memory_mb + self.memory_copies() * self.data_bytes() / (1 << 20)
        return int(max(1024, math.ceil(need / 256) * 256))

    def kernel_args(self) -> list[str]:
        """Boot arguments the workload needs in the lab VM (e.g. ``vdso=0`` for an old CRIU)."""
        return []

    def summarize(
        self, result: dict[str, Any], prepare: dict, restore: dict, marks: list[tuple[str, dict, float]]
    ) -> dict[str, Any]:
        """The cycle's result: ``result`` (what every cycle reports, from :meth:`MarkRunner.agent_result`) with the
        workload's own fields added or replaced; ``prepare`` and ``restore`` are the agent's state files,
        ``marks`` the host-timestamped marks."""
        return result

    def record_params(self) -> dict[str, Any]:
        """The workload's parameters as they go into the ``lab.cycle`` record (flat; ``workload`` is the name)."""
        return {"workload": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    @staticmethod
    def check_pages(name: str, size: int, *, allow_zero: bool = False) -> None:
        """A size that must be a whole number of 4 KiB pages (positive unless ``allow_zero``)."""
        if size < 0 or (size == 0 and not allow_zero) or size % PAGE_SIZE:
            kind = "a multiple" if allow_zero else "a positive multiple"
            raise InvalidCycle(f"{name} {size} is not {kind} of the {PAGE_SIZE}-byte page size")


def register(cls: type[Workload]) -> type[Workload]:
    """Class decorator: makes ``cls`` known by ``cls.name`` (replacing an earlier class of that name)."""
    if not cls.name or not cls.agent:
        raise TypeError(f"workload class {cls.__name__} needs a name and an agent")
    _REGISTRY[cls.name] = cls
    return cls


def workload_names() -> list[str]:
    """Every workload that can be named: the built-in ones and those registered since."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def workload_class(name: str) -> type[Workload]:
    """The workload class registered as ``name``, importing a built-in one on first use."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownName(f"unknown workload {name!r}: choose from {', '.join(workload_names())}") from None


def make_workload(name: str, **params: Any) -> Workload:
    """An instance of the workload ``name`` with ``params``; a parameter it does not have is an error naming it."""
    cls = workload_class(name)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidCycle(f"the {name} workload has no parameter {unknown[0]!r}; it has {', '.join(sorted(known))}")
    return cls(**params)


def agent_class(name: str) -> type:
    """The agent-side class of the workload ``name`` (on the target)."""
    module, _, attr = workload_class(name).agent.partition(":")
    return getattr(importlib.import_module(module), attr)
