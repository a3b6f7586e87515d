"""The inspector's logic, as a plain class testable without a browser: pick a running lab VM (its QMP socket) or a
vmcore and its vmlinux, read the kernel's KHO/LUO state in a worker thread, and expose the summaries and figures.

What it reads and records is what ``workbench inspect`` does (:mod:`workbench.cli.inspect`): one
:func:`~workbench.inspect.snapshot.snapshot`, recorded as an experiment of kind ``inspect`` with its tables.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Any

from workbench.records import RecordStore, open_store
from workbench.widgets.observable import Observable

__all__ = ["InspectorController", "METHODS", "SOURCES", "STATES", "default_vmlinux"]

#: Where the kernel comes from: a running VM read over QMP (or its RAM file), or a dump.
SOURCES = ("vm", "vmcore")
STATES = ("idle", "opening", "ready", "failed")
METHODS = ("auto", "qmp", "ram-file")


def default_vmlinux() -> Path | None:
    """The cached lab kernel's vmlinux, or ``None`` when no lab kernel is built (then the inspector searches for the
    vmlinux by the kernel's build id)."""
    from workbench.lab.kernel import cached_kernel

    kernel = cached_kernel()
    return kernel.vmlinux if kernel is not None and kernel.vmlinux.is_file() else None


class InspectorController(Observable):
    """Opens one kernel at a time in a worker thread. States: idle, opening, ready, failed.

    Set the inputs (``source``, ``qmp_socket`` or ``vmcore``, ``vmlinux``, ``method``, ``memory``) or pass them to
    :meth:`open`; :meth:`refresh` reads the same source again (a running VM changes). Observers registered with
    :meth:`observe` are called as ``callback(controller, "state")`` on every change, from the worker thread.

    When ready: ``snapshot`` (:class:`~workbench.inspect.snapshot.Snapshot`), ``kho_summary`` and ``luo_summary``
    (DataFrames), ``memory_figure`` and ``sessions_figure`` (plotly figures, ``None`` when their table could not
    be read), ``errors`` (parts of the kernel state that could not be read) and ``record_id``. When failed:
    ``error`` (``"VmlinuxMismatch: ..."``, as the CLI prints it) and ``error_type``.
    """

    def __init__(
        self,
        store: RecordStore | None = None,
        *,
        record: bool = True,
        vmlinux: str | Path | None = None,
        source: str = "vmcore",
    ):
        self.store = (store or open_store()) if record else None
        self.source = source
        self.qmp_socket = ""
        self.vmcore = ""
        default = vmlinux if vmlinux is not None else default_vmlinux()
        self.vmlinux = str(default) if default else ""
        self.method = "auto"
        self.memory = True
        self._reset()
        self.status = "idle"
        self._thread: threading.Thread | None = None
        Observable.__init__(self)
        self.observer_errors: list[str] = []
        self._lock = threading.Lock()

    def _reset(self) -> None:
        self.error: str | None = None
        self.error_type: str | None = None
        self.snapshot = None
        self.kho_summary = None
        self.luo_summary = None
        self.memory_figure = None
        self.sessions_figure = None
        self.errors: dict[str, str] = {}
        self.record_id: str | None = None
        self.seconds: float | None = None

    # -- observing: ``callback(controller, "state")`` -------------------------------------------------------
    def observer_failed(self, callback, exc: Exception) -> None:
        self.observer_errors.append(f"{callback!r}: {type(exc).__name__}: {exc}")

    @property
    def running(self) -> bool:
        return self.status == "opening"

    @property
    def target(self) -> str:
        """What is (or will be) opened, in words."""
        if self.source == "vm":
            return f"VM {self.qmp_socket or '(no QMP socket)'}"
        return f"vmcore {self.vmcore or '(no file)'}"

    @staticmethod
    def running_vms() -> list[tuple[str, str]]:
        """The lab VMs running on this machine as (label, QMP socket), newest first."""
        import datetime

        from workbench.lab.qemu import running_vms

        choices = []
        for vm in running_vms():
            started = datetime.datetime.fromtimestamp(vm["started"]).strftime("%H:%M:%S")
            phase = next((a.partition("=")[2] for a in vm["cmdline"].split() if a.startswith("wb.phase=")), "")
            label = f"pid {vm['pid']}, started {started}, {vm['memory_mb']} MiB" + (f", {phase}" if phase else "")
            choices.append((label, vm["qmp"]))
        return choices

    def params(self) -> dict[str, Any]:
        """The record's parameters, the same keys as ``workbench inspect`` records."""
        vm = self.source == "vm"
        return {
            "qmp": self.qmp_socket if vm else None,
            "vmcore": None if vm else self.vmcore,
            "live": False,
            "vmlinux": self.vmlinux or None,
            "method": self.method,
        }

    # -- commands --------------------------------------------------------------------------------------------
    def open(
        self,
        source: str | None = None,
        *,
        qmp_socket: str | Path | None = None,
        vmcore: str | Path | None = None,
        vmlinux: str | Path | None = None,
        method: str | None = None,
        memory: bool | None = None,
    ) -> None:
        """Starts reading the chosen kernel in a worker thread and returns at once. Inputs that cannot work (no
        path given, an unknown source) end in state ``failed`` with the reason in ``error``, like every other
        failure. Raises ``RuntimeError`` while an inspection is already running."""
        with self._lock:
            if self.running:
                raise RuntimeError("an inspection is already running: wait for it")
            if source is not None:
                self.source = source
            if qmp_socket is not None:
                self.qmp_socket = str(qmp_socket).strip()
            if vmcore is not None:
                self.vmcore = str(vmcore).strip()
            if vmlinux is not None:
                self.vmlinux = str(vmlinux).strip()
            if method is not None:
                self.method = method
            if memory is not None:
                self.memory = bool(memory)
            self._reset()
            problem = self._check_inputs()
            if problem is not None:
                self.status, self.error, self.error_type = "failed", problem, "ValueError"
                thread = None
            else:
                self.status = "opening"
                thread = self._thread = threading.Thread(target=self._work, name="workbench-inspect", daemon=True)
        self._notify("state")  # observers see "opening" before the worker can report its end
        if thread is not None:
            thread.start()

    def refresh(self) -> None:
        """Reads the same source again."""
        self.open()

    def wait(self, timeout: float | None = None) -> str:
        """Blocks until the worker ends (tests, headless notebooks); returns the status."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status

    def _check_inputs(self) -> str | None:
        if self.source not in SOURCES:
            return f"source is one of {', '.join(SOURCES)}, not {self.source!r}"
        if self.method not in METHODS:
            return f"method is one of {', '.join(METHODS)}, not {self.method!r}"
        if self.source == "vm" and not self.qmp_socket:
            return "no QMP socket given: the path of a running lab VM's QMP socket (vm.qmp_sock)"
        if self.source == "vmcore" and not self.vmcore:
            return "no vmcore given: the path of a dump (e.g. vmcore-preserve.elf of a cycle with dump_after)"
        return None

    # -- worker ----------------------------------------------------------------------------------------------
    def _open_program(self):
        from workbench.inspect.program import open_vm, open_vmcore

        vmlinux = self.vmlinux or None
        if self.source == "vm":
            return open_vm(self.qmp_socket, vmlinux, method=self.method)
        return open_vmcore(self.vmcore, vmlinux)

    def _read(self):
        from workbench.inspect.snapshot import snapshot

        prog = self._open_program()
        try:
            return snapshot(prog, memory=self.memory)
        finally:
            # a program opened over QMP holds QEMU's only QMP connection until it is freed
            del prog
            gc.collect()

    def _work(self) -> None:
        t0 = time.monotonic()
        try:
            if self.store is not None:
                with self.store.run("inspect", self.params()) as run:
                    self.record_id = run.id
                    snap = self._read()
                    for name, frame in snap.tables.items():
                        run.add_table(name, frame)
                    run.update_result(**snap.summary())
            else:
                snap = self._read()
            self._show(snap)
            self.status = "ready"
        except Exception as exc:
            # the inspect errors (workbench.inspect.errors) and FileNotFoundError say what is wrong and what to do,
            # as the CLI prints them; anything else still ends the worker in a state the panel can show
            self.status, self.error, self.error_type = "failed", f"{type(exc).__name__}: {exc}", type(exc).__name__
        finally:
            gc.collect()  # a failed open_vm may leave a drgn program (and its QMP connection) in a traceback cycle
            self.seconds = time.monotonic() - t0
            self._notify("state")

    def _show(self, snap) -> None:
        from workbench.inspect.plots import memory_map_figure, sessions_sunburst

        self.snapshot = snap
        self.errors = dict(snap.errors)
        self.kho_summary = snap.tables.get("kho_summary")
        self.luo_summary = snap.tables.get("luo_summary")
        release = snap.source.get("release") or "unknown release"
        where = "live" if snap.source.get("live") else "dump"
        memory_map = snap.tables.get("memory_map")
        if memory_map is not None and len(memory_map):
            self.memory_figure = memory_map_figure(memory_map, title=f"Physical memory ({release}, {where})")
        files = snap.tables.get("files")
        if files is not None:
            self.sessions_figure = sessions_sunburst(
                files, snap.tables.get("memfd_folios"), title=f"LUO sessions → files → folios ({release}, {where})"
            )

    # -- digest ----------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """One line about the current state (the panel's status line, in plain text)."""
        if self.status == "idle":
            return "idle: choose a running VM or a vmcore and open it"
        if self.status == "opening":
            return f"opening {self.target}"
        if self.status == "failed":
            return f"failed: {self.error}"
        source = self.snapshot.source if self.snapshot is not None else {}
        parts = [
            f"ready: {source.get('target')} {source.get('path')}",
            f"release {source.get('release')}",
            f"vmlinux {source.get('vmlinux')}",
        ]
        moment = self.snapshot.moment if self.snapshot is not None else {}
        if moment.get("moment"):
            parts.append(f"moment {moment['moment']}" + ("" if moment.get("moment_certain", True) else " (uncertain)"))
        if self.seconds is not None:
            parts.append(f"read in {self.seconds:.1f} s")
        if self.record_id:
            parts.append(f"record {self.record_id}")
        if self.errors:
            parts.append("not read: " + "; ".join(f"{k}: {v}" for k, v in self.errors.items()))
        return ", ".join(parts)
