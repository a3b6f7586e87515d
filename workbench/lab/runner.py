"""What every target's cycle runner shares: events from the agent's ``WB-MARK`` lines, waiting for marks on a
:class:`LineSource` (a VM's serial console, an SSH channel), the agent's error, and the result every cycle
reports, built from the agent's state files. A target subclasses :class:`MarkRunner` and implements
:meth:`MarkRunner.execute`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from workbench.lab.diagnosis import diagnose_file
from workbench.lab.errors import (
    CycleCancelled,
    CycleFailed,
    CycleTimedOut,
    HandoverRefusedLive,
    PreflightRefused,
    ShareFileError,
    TargetLost,
)
from workbench.lab.params import CycleParams
from workbench.lab.protocol import Event, parse_mark, state_file
from workbench.lab.qemu import SerialLine
from workbench.lab.share_files import read_state_file
from workbench.lab.workload import Workload

__all__ = ["CycleEvent", "LineSource", "MarkRunner", "WAITING"]

#: what the host says it is waiting for in a phase, in timeout messages
WAITING = {"load": "loading the next kernel", "restore": "retrieving the session", "verify": "verifying"}


@dataclass(frozen=True)
class CycleEvent:
    """Something the host saw: ``phase`` events carry name and status (begin/end/failed), ``line`` a console
    line, ``state`` a coarse state (booting, running, paused, done, failed)."""

    kind: str
    name: str = ""
    status: str = ""
    seconds: float | None = None
    text: str = ""
    host_time: float = 0.0


class LineSource(Protocol):
    """Where a target's agent output arrives: a VM's serial console or an SSH channel."""

    lines: list[SerialLine]

    @property
    def running(self) -> bool: ...

    def wait_for(
        self,
        predicate: Callable[[SerialLine], bool],
        timeout: float,
        start: int = 0,
        cancel: threading.Event | None = None,
    ) -> tuple[int, SerialLine] | None: ...


def is_mark(line: SerialLine, events: tuple[str, ...]) -> bool:
    parsed = parse_mark(line.text)
    return parsed is not None and parsed[0] in events


class MarkRunner:
    """One cycle of ``workload`` on a target. Subclasses set ``source`` and implement ``execute()``, which returns
    the result dict."""

    log_name = "serial log"
    kexec_ends_at_agent = True  # the kexec phase ends at the agent's first line in the next kernel
    #: who prints the error marks, for the failure's message
    reporter = "the agent"

    def __init__(
        self,
        workload: Workload,
        params: CycleParams,
        run,
        on_event: Callable[[CycleEvent], None] | None,
        cancel: threading.Event | None,
    ):
        self.workload = workload
        self.p = params
        self.run = run
        self.on_event = on_event or (lambda e: None)
        self.cancel = cancel or threading.Event()
        self.workdir: Path = run.artifacts_dir
        self.results = self.workdir / "guest"
        self.results.mkdir(parents=True, exist_ok=True)
        self.marks: list[tuple[str, dict, float]] = []
        self._pos = 0  # lines before this index have been consumed by wait_mark
        self.phase = "boot"
        self.source: LineSource | None = None

    @property
    def log_path(self) -> Path | None:
        return None

    def fail(self, message: str, phase: str | None = None, kind: type[CycleFailed] = CycleFailed) -> CycleFailed:
        """The error to raise for a failure: ``message``, with what the target's log says went wrong (a refused
        handover, a panic and where) appended and kept as the error's ``diagnosis``."""
        diagnosis = diagnose_file(self.log_path) if self.log_path else None
        summary = diagnosis.summary() if diagnosis else None
        exc = kind(
            f"{message}: {summary}" if summary else message, phase or self.phase, self.log_path, log_name=self.log_name
        )
        exc.diagnosis = diagnosis.as_dict() if summary else None
        return exc

    def source_stopped(self, what: str) -> str:
        return f"the target stopped while {what}"

    def failure_details(self) -> dict[str, Any]:
        """Extra facts recorded with a failed run: the live preflight's verdict, when the agent got that far."""
        try:
            live = read_state_file(self.results, "prepare").get("preflight_live")
        except ShareFileError:
            return {}
        return {"preflight_live": live} if live else {}

    def execute(self) -> dict[str, Any]:
        raise NotImplementedError

    def emit(self, **kw) -> None:
        self.on_event(CycleEvent(**kw))

    def on_line(self, line: SerialLine) -> None:
        self.emit(kind="line", text=line.text, host_time=line.host_time)
        parsed = parse_mark(line.text)
        if parsed is None:
            return
        event, data = parsed
        self.marks.append((event, data, line.host_time))
        phase, seconds = data.get("phase"), data.get("s")
        if event in (Event.PHASE_BEGIN, Event.PHASE_END) and not isinstance(phase, str):
            return  # no phase name: the console is the target's, and a mark there is untrusted input
        if event == Event.PHASE_BEGIN:
            self.emit(kind="phase", name=phase, status="begin", host_time=line.host_time)
        elif event == Event.PHASE_END:
            seconds = seconds if isinstance(seconds, int | float) and not isinstance(seconds, bool) else None
            self.emit(kind="phase", name=phase, status="end", seconds=seconds, host_time=line.host_time)
        elif event == Event.KEXEC:
            self.emit(kind="phase", name="kexec", status="begin", host_time=line.host_time)
        elif event == Event.AGENT_START and data.get("phase") == "restore" and self.kexec_ends_at_agent:
            self.emit(kind="phase", name="kexec", status="end", host_time=line.host_time)

    # -- waiting ---------------------------------------------------------------------------------------------
    def wait_mark(self, events: tuple[str, ...], timeout: float, what: str) -> tuple[str, dict, float]:
        """Waits for the next mark of one of ``events``; the agent's error marks end the wait with
        :class:`CycleFailed`, the source stopping with :class:`TargetLost`, the timeout with :class:`CycleFailed`."""
        source = self.source
        assert source is not None
        start = self._pos
        deadline = time.monotonic() + timeout
        wanted = events + Event.FAILURES
        while True:
            if self.cancel.is_set():
                raise CycleCancelled()
            remaining = deadline - time.monotonic()
            scanned = len(source.lines)  # wait_for looks at least at these before it gives up
            stopped = not source.running  # checked before the scan: a last line may come as the source stops
            hit = source.wait_for(
                lambda ln: is_mark(ln, wanted),
                timeout=max(0.0, min(remaining, 0.5)),
                start=start,
                cancel=self.cancel,
            )
            if hit is not None:
                index, line = hit
                self._pos = index + 1
                event, data = parse_mark(line.text)  # type: ignore[misc]
                if event in Event.FAILURES:
                    phase = data.get("phase") or self.phase
                    detail = self.agent_error() or data.get("message") or data.get("text")
                    if data.get("type") == HandoverRefusedLive.__name__:
                        message = f"{data.get('message')} (--force runs it anyway)"
                        raise self.fail(message, "preflight", kind=PreflightRefused)
                    raise self.fail(f"{self.reporter} reported: {detail}", phase)
                return event, data, line.host_time
            if self.cancel.is_set():
                raise CycleCancelled()
            if stopped:
                raise self.fail(self.source_stopped(what), kind=TargetLost)
            if time.monotonic() >= deadline:
                raise self.fail(f"timed out after {timeout:.0f} s {what}", kind=CycleTimedOut)
            start = scanned  # not len(source.lines): a line that came after wait_for gave up is still unseen

    def wait_phases(self, phases: tuple[str, ...], pause_after: list[str], timeout: float) -> None:
        """Waits for the end of each of ``phases`` in turn, pausing after those in ``pause_after``."""
        for phase in phases:
            self.phase = phase
            self.wait_mark((Event.PHASE_END,), timeout, WAITING.get(phase, f"in phase {phase}"))
            if phase in pause_after:
                self.paused(phase, timeout)

    def paused(self, phase: str, timeout: float) -> None:
        raise NotImplementedError

    def read_state(self, phase: str) -> dict[str, Any]:
        """The agent's state file for ``phase`` (``prepare`` or ``restore``), checked as untrusted input
        (:func:`~workbench.lab.share_files.read_state_file`); one that cannot be used fails the cycle, naming the
        file and the field, with the :class:`~workbench.lab.errors.ShareFileError` as its cause."""
        try:
            return read_state_file(self.results, phase)
        except ShareFileError as exc:
            raise self.fail(f"the agent's {state_file(phase)} cannot be used: {exc}") from exc

    def agent_error(self) -> str | None:
        for phase in ("restore", "prepare"):
            try:
                err = read_state_file(self.results, phase).get("error")
            except ShareFileError:
                continue
            if isinstance(err, dict):
                return f"{err.get('type')}: {err.get('message')}"
        return None

    def phases_of(self, prepare: dict, restore: dict, kexec_s: float) -> dict[str, float]:
        """The guest's phase times in the workload's order, with the host's ``kexec`` between them."""
        guest = {**prepare.get("phases", {}), **restore.get("phases", {})}
        phases = {name: guest[name] for name in self.workload.phases_before_kexec if name in guest}
        phases["kexec"] = kexec_s
        for name in (*self.workload.phases_after_kexec, "finish"):
            if name in guest:
                phases[name] = guest[name]
        return phases

    def agent_result(self, prepare: dict, restore: dict, t_kexec: float, t_back: float) -> dict[str, Any]:
        """The result fields every cycle reports, from the agent's state files and the host's times of the kexec
        and of the target's return, then the workload's own (:meth:`Workload.summarize`)."""
        memfds = restore.get("memfds", [])
        result = {
            "verified": bool(restore.get("verified")) and bool(restore.get("finished")),
            "pages_checked": restore.get("pages_checked", 0),
            "session": prepare.get("session", self.p.session),
            "phases": self.phases_of(prepare, restore, t_back - t_kexec),
            "blackout_s": t_back - t_kexec,
            "kernel_release_before": prepare.get("kernel_release_before"),
            "kernel_release_after": restore.get("kernel_release_after"),
            "kernel_release": {
                "before": prepare.get("kernel_release_before"),
                "after": restore.get("kernel_release_after"),
            },
            "memfds": memfds,
            "differing_pages": {str(m["memfd"]): m.get("differing_pages", []) for m in memfds if m["differing_count"]},
            "hash": prepare.get("hash_impl"),
        }
        if prepare.get("preflight_live"):
            result["preflight_live"] = prepare["preflight_live"]
        if restore.get("events") or prepare.get("events"):
            result["events"] = prepare.get("events", []) + restore.get("events", [])
        return self.workload.summarize(result, prepare, restore, self.marks)
