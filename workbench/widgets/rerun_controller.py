"""The records browser's re-run: a recorded experiment run again in a worker thread, and its comparison."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from workbench.experiments import ExperimentError, RerunReport, experiment_for, rerun
from workbench.records import RecordStore, RecordStoreError, RunNotFound
from workbench.widgets.observable import Observable

__all__ = ["RerunController"]


class RerunController(Observable):
    """``start(run_id)`` re-runs that record in a worker (``state`` goes ``running`` → ``done`` or ``failed``);
    ``report`` then holds the :class:`~workbench.experiments.RerunReport` (``verdict``, the comparison) and
    ``error`` what went wrong. Observers are told ``state`` from the worker thread."""

    def __init__(self, store: RecordStore):
        super().__init__()
        self.store = store
        self.state = "idle"
        self.run_id: str | None = None
        self.report: RerunReport | None = None
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def can_rerun(self, run_id: str) -> str | None:
        """None when the record can be re-run, else why not (for a disabled button's tooltip)."""
        try:
            record = self.store.get(run_id)
            experiment_for(record.kind, record.params)
        except (ExperimentError, RunNotFound, RecordStoreError) as exc:
            return str(exc)
        return None

    def start(self, run_id: str, *, overrides: Mapping[str, Any] | None = None, repeats: int = 1) -> None:
        """Starts re-running ``run_id``; raises at once when another re-run is running or the record cannot be
        re-run."""
        with self._lock:
            if self.running:
                raise RuntimeError("a re-run is already running: wait for it")
            reason = self.can_rerun(run_id)
            if reason:
                raise ExperimentError(reason)
            self.state, self.run_id, self.report, self.error = "running", run_id, None, None
            self._thread = threading.Thread(
                target=self._work, args=(run_id, dict(overrides or {}), repeats), name="workbench-rerun", daemon=True
            )
            self._notify("state")  # before the worker can report its end
            self._thread.start()

    def wait(self, timeout: float | None = None) -> str:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    def _work(self, run_id: str, overrides: dict[str, Any], repeats: int) -> None:
        try:
            self.report = rerun(self.store, run_id, overrides=overrides, repeats=repeats)
            self.state = "done"
        except Exception as exc:  # noqa: BLE001 (shown in the panel, not lost in a thread)
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
        finally:
            self._notify("state")
