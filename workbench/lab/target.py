"""Where a cycle runs: the :class:`Target` protocol and the registry of targets by name.

A target is one class (a dataclass whose fields are its options) that checks that it can run a workload with the
cycle's parameters, gets ready before the cycle's record opens (e.g. builds the lab kernel), and makes the runner
(a :class:`~workbench.lab.runner.MarkRunner`) that drives the agent on it. The built-in targets are ``qemu`` (the
lab VM on this machine, :mod:`workbench.lab.qemu_target`) and ``ssh`` (lab hosts,
:mod:`workbench.lab.ssh.target`). A target spec on the command line is ``NAME`` or ``NAME:REST``
(``ssh:HOST[,HOST...]``); :func:`parse_targets` turns it into target objects."""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from workbench.lab.errors import CycleFailed, InvalidCycle, PreflightUnavailable, UnknownName
from workbench.lab.params import CycleParams
from workbench.lab.runner import CycleEvent, MarkRunner
from workbench.lab.workload import Workload

if TYPE_CHECKING:
    from workbench.lab.preflight import Preflight

__all__ = ["Target", "register", "target_class", "target_names", "parse_targets"]

_BUILTIN = {
    "qemu": "workbench.lab.qemu_target",
    "ssh": "workbench.lab.ssh.target",
    "guest": "workbench.lab.guest.target",
}
_REGISTRY: dict[str, type[Target]] = {}


class Target:
    """Base class of the targets. Subclasses are dataclasses; they set ``name`` and implement :meth:`runner`."""

    name: ClassVar[str] = ""
    #: it can boot with a ``crashkernel=`` reservation and a capture kernel for ``--crash-after``
    #: (:mod:`workbench.lab.kdump`)
    supports_kdump: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """The target as records and results name it (``qemu``, ``ssh:HOST``)."""
        return self.name

    def validate(self, workload: Workload, params: CycleParams) -> None:
        """Raises :class:`InvalidCycle` when this target cannot run ``workload`` with ``params``."""
        if self.name not in workload.targets:
            raise InvalidCycle(
                f"the {workload.name} workload runs on the {' and '.join(workload.targets)} target"
                f"{'s' if len(workload.targets) > 1 else ''} only, not {self.name}"
            )

    def prepare(self, workload: Workload, params: CycleParams) -> None:
        """Work before the cycle's record opens (building a kernel, checking the next one)."""

    def record_params(self) -> dict[str, Any]:
        """The target's options as they go into the ``lab.cycle`` record (flat)."""
        return {}

    def preflight(self, params: CycleParams) -> Preflight:
        """After :meth:`prepare`: the :class:`~workbench.lab.preflight.Preflight` of the kexec this cycle will do;
        :class:`~workbench.lab.preflight.PreflightUnavailable` says why this target cannot tell."""
        raise PreflightUnavailable(f"the {self.name} target cannot read the next kernel's handover formats")

    def runner(
        self,
        workload: Workload,
        params: CycleParams,
        run,
        on_event: Callable[[CycleEvent], None] | None,
        cancel: threading.Event | None,
        on_pause: Callable[[str, Any], None] | None,
    ) -> MarkRunner:
        raise NotImplementedError

    def failure_result(self, exc: CycleFailed) -> dict[str, Any]:
        """What ``--json`` prints for a cycle on this target that failed."""
        return {
            "verified": False,
            "error": str(exc),
            "failed_phase": exc.phase,
            "diagnosis": exc.diagnosis,
            "serial_log": str(exc.serial_log) if exc.serial_log else None,
            "record_id": exc.record_id,
        }

    @classmethod
    def from_spec(cls, rest: str, options: dict[str, Any], *, data_dir: str | None = None) -> list[Target]:
        """The targets a command-line spec ``NAME[:REST]`` names, with ``options`` (the command line's target
        options that were given: each must be a field of this class); ``data_dir`` is the record folder (where a
        target may keep its own files, e.g. an inventory)."""
        cls.check_options(options)
        if rest:
            raise InvalidCycle(f"the {cls.name} target takes no ':{rest}'")
        return [cls(**options)]

    @classmethod
    def from_record(cls, params: dict[str, Any]) -> Target:
        """The target a ``lab.cycle`` record's parameters describe (its :meth:`record_params`, flat among the
        cycle's and the workload's), to run the cycle again."""
        return cls(**{name: params[name] for name in cls.option_names() if name in params})

    @classmethod
    def option_names(cls) -> set[str]:
        """The options :meth:`from_spec` takes (by default the class's fields)."""
        return {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        known = cls.option_names()
        foreign = sorted(set(options) - known)
        if foreign:
            raise InvalidCycle(
                f"the {cls.name} target has no option {', '.join(foreign)}; its options are {', '.join(sorted(known))}"
            )


def register(cls: type[Target]) -> type[Target]:
    """Class decorator: makes ``cls`` known by ``cls.name``."""
    if not cls.name:
        raise TypeError(f"target class {cls.__name__} needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def target_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def target_class(name: str) -> type[Target]:
    """The target class registered as ``name``, importing a built-in one on first use."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownName(f"unknown target {name!r}: use {' or '.join(target_names())}") from None


def parse_targets(spec: str, *, data_dir: str | None = None, **options: Any) -> list[Target]:
    """``qemu`` or ``ssh:HOST[,HOST...]`` (see each target's ``from_spec``) with the target ``options`` given."""
    name, _, rest = spec.partition(":")
    return target_class(name).from_spec(rest, options, data_dir=data_dir)
