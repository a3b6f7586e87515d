"""One preserve → kexec → restore cycle: a workload on a target, recorded.

The cycle knows neither which workload (:mod:`workbench.lab.workload`) nor which target
(:mod:`workbench.lab.target`): it checks them, lets the target get ready, opens a ``lab.cycle`` record and has the
target's runner drive the agent. Progress arrives as ``WB-MARK`` lines (:mod:`workbench.lab.protocol`), each
timestamped on arrival with the host's monotonic clock. The guest's clocks restart at the kexec, the host's does
not: the blackout is the host time from the ``kexec`` mark (printed just before ``reboot(LINUX_REBOOT_CMD_KEXEC)``)
to the agent's first line in the new kernel."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from workbench.lab.errors import CycleCancelled, CycleFailed, PreflightRefused, PreflightUnavailable, Unverified
from workbench.lab.kdump import TargetCrashed, check_crash
from workbench.lab.params import PAUSE_POINTS, CycleParams
from workbench.lab.preflight import REFUSE
from workbench.lab.runner import CycleEvent, MarkRunner
from workbench.lab.target import Target, target_class
from workbench.lab.workload import Workload, make_workload, workload_class
from workbench.records import RecordStore, open_store

__all__ = [
    "CycleParams",
    "CycleEvent",
    "PAUSE_POINTS",
    "PHASES",
    "check",
    "phases_of",
    "run_cycle",
    "run_cycles",
    "record_cycle",
    "cycle_from_record",
]

#: the phases of the memfd workloads as a panel shows them
PHASES = ("boot", "prepare", "convert", "preserve", "load", "kexec", "restore", "verify", "finish")


def phases_of(workload: Workload) -> tuple[str, ...]:
    """Every phase a cycle of ``workload`` goes through, in order, as the host reports them."""
    return ("boot", *workload.phases_before_kexec, "kexec", *workload.phases_after_kexec, "finish")


def run_cycle(
    workload: Workload | None = None,
    params: CycleParams | None = None,
    *,
    target: Target | None = None,
    store: RecordStore | None = None,
    on_event: Callable[[CycleEvent], None] | None = None,
    cancel: threading.Event | None = None,
    on_pause: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Runs one cycle of ``workload`` (default: two 64 MiB memfds) on ``target`` (default: the lab VM) and records
    it (kind ``lab.cycle``). Returns the result dict (see the CLI's ``--json``); raises
    :class:`~workbench.lab.errors.InvalidCycle` before anything starts, :class:`CycleFailed` (recorded ``failed``,
    the target's log kept) or :class:`CycleCancelled` (recorded ``interrupted``). ``on_pause(phase, handle)`` runs
    at each pause (``params.pause_after``) with the target's handle (a :class:`~workbench.lab.qemu.QemuVM`)."""
    workload = workload if workload is not None else workload_class("memfd")()
    params = params or CycleParams()
    target = target if target is not None else target_class("qemu")()
    check(workload, params, target)
    target.prepare(workload, params)
    store = store or open_store()
    record_params = {
        "target": target.label,
        **params.record_params(),
        **workload.record_params(),
        **target.record_params(),
    }
    verdict = _preflight(target, params, store, record_params)
    return record_cycle(
        store,
        record_params,
        lambda run: target.runner(workload, params, run, on_event, cancel, on_pause),
        {"preflight": verdict},
    )


def _preflight(target: Target, params: CycleParams, store: RecordStore, record_params: dict[str, Any]) -> dict:
    """The preflight's verdict for the record; a refusal (unless ``params.force``) is recorded as a failed cycle
    that never booted, and raised as :class:`PreflightRefused`."""
    if not params.preflight:
        return {"verdict": "skipped"}
    try:
        found = target.preflight(params)
    except PreflightUnavailable as exc:
        return {"verdict": "unavailable", "reason": str(exc)}
    verdict = {**found.as_dict(), "forced": params.force and found.verdict == REFUSE}
    if found.verdict == REFUSE and not params.force:
        with store.run("lab.cycle", record_params) as run:
            run.update_result(verified=False, preflight=verdict, failed_phase="preflight", outcome="refused")
            refused = PreflightRefused(f"{found.message()} (--force runs it anyway)", "preflight", None, run.id)
            raise refused
    return verdict


def cycle_from_record(params: dict[str, Any]) -> tuple[Workload, CycleParams, Target]:
    """The workload, cycle parameters and target of a ``lab.cycle`` record's ``params`` (flat, as
    :func:`run_cycle` records them), to run the same cycle again. A kernel recorded by name is built again if the
    cache no longer has it, when the target gets ready."""
    name = params.get("workload", "memfd")
    fields = {f.name for f in dataclasses.fields(workload_class(name))}  # type: ignore[arg-type]
    workload = make_workload(name, **{k: v for k, v in params.items() if k in fields})
    cycle_fields = {f.name for f in dataclasses.fields(CycleParams)}
    cycle = CycleParams(**{k: v for k, v in params.items() if k in cycle_fields})
    target = target_class(str(params.get("target", "qemu")).partition(":")[0]).from_record(params)
    return workload, cycle, target


def check(workload: Workload, params: CycleParams, target: Target) -> None:
    """Every check that runs before a cycle starts: the cycle's, the workload's and the target's."""
    params.validate()
    workload.validate()
    workload.validate_session(params.session)
    workload.validate_faults(params.faults)
    target.validate(workload, params)
    check_crash(params.faults.crash_after, workload, target)


def run_cycles(
    targets: list[Target],
    workload: Workload | None = None,
    params: CycleParams | None = None,
    *,
    store: RecordStore | None = None,
    on_event: Callable[[str, CycleEvent], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """Runs the same cycle on every target at once (one thread each), each recorded. Returns one entry per target,
    in order: the result, or the target's :meth:`~Target.failure_result` (``verified`` false, ``error``,
    ``failed_phase``, ``record_id``...). ``on_event(label, event)`` gets every target's events."""
    workload = workload if workload is not None else workload_class("memfd")()
    params = params or CycleParams()
    for target in targets:
        check(workload, params, target)
    store = store or open_store()
    cancel = cancel or threading.Event()

    def one(target: Target) -> dict[str, Any]:
        events = (lambda e: on_event(target.label, e)) if on_event else None
        try:
            return run_cycle(workload, params, target=target, store=store, on_event=events, cancel=cancel)
        except CycleFailed as exc:
            return target.failure_result(exc)
        except CycleCancelled:
            return {"target": target.label, "verified": False, "error": "cancelled"}
        except Exception as exc:  # noqa: BLE001 (one target's bug must not hide the others' results)
            return {"target": target.label, "verified": False, "error": repr(exc)}

    with ThreadPoolExecutor(max_workers=max(1, len(targets)), thread_name_prefix="cycle") as pool:
        futures = [pool.submit(one, t) for t in targets]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            cancel.set()
            for f in futures:
                with contextlib.suppress(BaseException):
                    f.result()
            raise


def _tables(result: dict[str, Any], marks: list[tuple[str, dict, float]]) -> dict[str, pd.DataFrame]:
    t0 = marks[0][2] if marks else 0.0
    tables = {
        "phases": pd.DataFrame({"phase": list(result["phases"]), "seconds": list(result["phases"].values())}),
        "memfds": pd.DataFrame(
            [{k: v for k, v in m.items() if k != "differing_pages"} for m in result["memfds"]],
            columns=["memfd", "token", "size", "expected_size", "pages", "differing_count"],
        ),
        "marks": pd.DataFrame(
            [{"event": e, "detail": json.dumps(d), "host_s": t - t0} for e, d, t in marks],
            columns=["event", "detail", "host_s"],
        ),
    }
    if result.get("blackout_timeline"):  # the blackout's named phases, seconds after the kexec mark
        tables["blackout_phases"] = pd.DataFrame(
            result["blackout_timeline"], columns=["phase", "start_s", "end_s", "seconds"]
        )
    return tables


def record_cycle(
    store: RecordStore,
    record_params: dict[str, Any],
    make_runner: Callable[[Any], MarkRunner],
    known: dict[str, Any] | None = None,
) -> dict:
    """Runs ``make_runner(run).execute()`` inside a ``lab.cycle`` record with ``record_params``: a failure is
    recorded ``failed`` with its phase and log, a result that did not verify is recorded ``failed`` and returned,
    so is a crash on purpose (``outcome`` ``crashed``, :mod:`workbench.lab.kdump`), a dry run (``dry_run`` true in
    the result) is recorded ``ok``. ``known``: results known before the run (the
    preflight's verdict), recorded first and kept in the result."""
    known = dict(known or {})
    try:
        with store.run("lab.cycle", record_params) as run:
            if known:
                run.update_result(**known)
            runner = make_runner(run)
            try:
                result = runner.execute()
            except CycleFailed as exc:
                exc.record_id = run.id
                run.update_result(
                    failed_phase=exc.phase,
                    diagnosis=exc.diagnosis,
                    serial_log=str(exc.serial_log),
                    run_dir=str(runner.workdir),
                    **runner.failure_details(),
                    **({"outcome": "refused"} if isinstance(exc, PreflightRefused) else {}),
                )
                for name, frame in _tables({"phases": {}, "memfds": []}, runner.marks).items():
                    run.add_table(name, frame)
                runner.emit(kind="state", name="failed", text=str(exc))
                raise
            except CycleCancelled:
                runner.emit(kind="state", name="cancelled")
                raise
            result = {**known, **result, "record_id": run.id}
            for name, frame in _tables(result, runner.marks).items():
                run.add_table(name, frame)
            run.update_result(**{k: v for k, v in result.items() if k != "record_id"})
            if result.get("outcome") == "crashed":
                runner.emit(kind="state", name="crashed", text=result["vmcore"])
                raise TargetCrashed(result)
            if not result["verified"] and not result.get("dry_run"):
                runner.emit(kind="state", name="unverified")
                raise Unverified(result)
    except (Unverified, TargetCrashed):
        pass  # recorded as failed; the caller gets the result (verified false, the differing pages or the dump)
    return result
