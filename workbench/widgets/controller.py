"""Controllers: the logic behind the widget panels, as plain classes testable without a browser.

A controller runs long work in a worker thread and exposes its state; observers (the widgets) are called on every
change, from the worker thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workbench.lab.cycle import PHASES, check, phases_of, run_cycle
from workbench.lab.errors import CycleCancelled, CycleFailed
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.runner import CycleEvent
from workbench.lab.target import Target
from workbench.lab.workload import Workload
from workbench.records import RecordStore, open_store
from workbench.widgets.observable import Observable

__all__ = ["CycleController", "PhaseState", "RecordsController"]


@dataclass
class PhaseState:
    status: str = "pending"  # pending | running | done | failed
    seconds: float | None = None
    started: float | None = None


@dataclass
class _Snapshot:
    state: str
    phases: dict[str, PhaseState]
    result: dict[str, Any] | None
    error: str | None
    record_id: str | None
    log_tail: list[str] = field(default_factory=list)


class CycleController(Observable):
    """Runs one cycle at a time in a worker thread. States: idle, running, done, failed, cancelled."""

    def __init__(
        self, store: RecordStore | None = None, runner: Callable[..., dict] = run_cycle, log_lines: int = 2000
    ):
        self.store = store or open_store()
        self._runner = runner
        self.state = "idle"
        self.phases: dict[str, PhaseState] = {p: PhaseState() for p in PHASES}
        self.log: deque[str] = deque(maxlen=log_lines)
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.record_id: str | None = None
        self.detail = ""
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        Observable.__init__(self)
        self._lock = threading.Lock()

    # -- observing: ``callback(controller, what)`` with what in state, phase, line ------------------------------
    def observer_failed(self, callback, exc: Exception) -> None:
        self.log.append(f"[observer error: {exc!r}]")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- commands --------------------------------------------------------------------------------------------
    def start(
        self, workload: Workload, params: CycleParams | None = None, *, target: Target | None = None, **run_kwargs
    ) -> None:
        """Checks the cycle (raising its :class:`~workbench.lab.errors.InvalidCycle` at once) and runs it in the
        worker: ``workload`` on ``target`` (default: the lab VM) with ``params``."""
        params = params or CycleParams()
        target = target or QemuTarget()
        with self._lock:
            if self.running:
                raise RuntimeError("a cycle is already running: cancel it or wait for it")
            check(workload, params, target)
            self._cancel = threading.Event()
            self.phases = {p: PhaseState() for p in phases_of(workload)}
            self.log.clear()
            self.result = self.error = self.record_id = None
            self.state = "running"
            self.detail = ""
            self._thread = threading.Thread(
                target=self._work,
                args=(workload, params, target, run_kwargs),
                name="workbench-cycle",
                daemon=True,
            )
            self._thread.start()
        self._notify("state")

    def cancel(self) -> None:
        """Asks the worker to stop; it tears the VM down and records the run ``interrupted``."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    # -- worker ----------------------------------------------------------------------------------------------
    def _work(self, workload: Workload, params: CycleParams, target: Target, run_kwargs: dict) -> None:
        try:
            self.result = self._runner(
                workload,
                params,
                target=target,
                store=self.store,
                on_event=self._on_event,
                cancel=self._cancel,
                **run_kwargs,
            )
            self.record_id = self.result.get("record_id")
            self.state = "done" if self.result.get("verified") else "failed"
            if not self.result.get("verified"):
                self.error = "verification failed: pages differ (see the result)"
        except CycleCancelled:
            self.state = "cancelled"
            self.error = "cancelled by the user; the VM was torn down"
        except CycleFailed as exc:
            self.state = "failed"
            self.error = str(exc)
            self.record_id = exc.record_id
            self._fail_running_phase()
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            self._fail_running_phase()
        finally:
            if self.record_id is None:
                latest = self.store.runs(kind="lab.cycle")
                self.record_id = latest[-1].id if latest else None
            self._notify("state")

    def _fail_running_phase(self) -> None:
        for phase in self.phases.values():
            if phase.status == "running":
                phase.status = "failed"
        self._notify("phase")

    def _on_event(self, event: CycleEvent) -> None:
        if event.kind == "line":
            self.log.append(event.text)
            self._notify("line")
        elif event.kind == "phase" and event.name in self.phases:
            phase = self.phases[event.name]
            if event.status == "begin":
                phase.status, phase.started = "running", time.monotonic()
            elif event.status == "end":
                phase.status = "done"
                phase.seconds = event.seconds if event.seconds is not None else time.monotonic() - (phase.started or 0)
            self._notify("phase")
        elif event.kind == "state":
            self.detail = f"{event.name}: {event.text}".rstrip(": ")
            self._notify("state")

    def snapshot(self) -> _Snapshot:
        return _Snapshot(self.state, dict(self.phases), self.result, self.error, self.record_id, list(self.log)[-50:])


class RecordsController:
    """Filtering and comparing experiment records."""

    def __init__(self, store: RecordStore | None = None):
        self.store = store or open_store()

    def kinds(self) -> list[str]:
        return sorted({r.kind for r in self.store.runs()})

    def runs(self, kind: str | None = None, status: str | None = None, **params: Any):
        return self.store.list(kind=kind or None, status=status or None, **params)

    def common_tables(self, run_ids: list[str]) -> list[str]:
        names = [set(self.store.get(i).table_names) for i in run_ids]
        return sorted(set.intersection(*names)) if names else []

    def compare(self, run_ids: list[str], table: str):
        return self.store.compare(run_ids, table)

    def compare_results(self, run_ids: list[str]):
        """Scalar results of several runs side by side, one column per run."""
        import pandas as pd

        columns = {}
        for run_id in run_ids:
            record = self.store.get(run_id)
            values = {k: v for k, v in record.result.items() if isinstance(v, int | float | str | bool)}
            values.update({f"param.{k}": str(v) for k, v in record.params.items()})
            columns[record.id] = values
        return pd.DataFrame(columns)
