"""Cycles on several SSH hosts at once, one thread each (:func:`run_ssh_cycles`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from workbench.lab.cycle import run_cycles
from workbench.lab.inventory import LabHost
from workbench.lab.params import CycleParams
from workbench.lab.runner import CycleEvent
from workbench.lab.ssh.target import SshTarget
from workbench.lab.workload import Workload
from workbench.records import RecordStore

__all__ = ["run_ssh_cycles"]


def run_ssh_cycles(
    hosts: list[LabHost],
    workload: Workload | None = None,
    params: CycleParams | None = None,
    *,
    store: RecordStore | None = None,
    on_event: Callable[[str, CycleEvent], None] | None = None,
    cancel: threading.Event | None = None,
    dry_run: bool = False,
    allow_this_machine: bool = False,
) -> list[dict[str, Any]]:
    """Runs the same cycle on every host at once and records each (:func:`~workbench.lab.cycle.run_cycles`).
    Returns one entry per host, in order: the result, or ``{"host", "verified": False, "error", "failed_phase",
    "record_id", ...}``. ``on_event(host_name, event)`` gets every host's events; ``dry_run`` and
    ``allow_this_machine``: as for :class:`~workbench.lab.ssh.target.SshTarget`."""
    targets = [SshTarget(h, dry_run=dry_run, allow_this_machine=allow_this_machine) for h in hosts]
    events = (lambda label, e: on_event(label.removeprefix("ssh:"), e)) if on_event else None
    results = run_cycles(targets, workload, params, store=store, on_event=events, cancel=cancel)
    for host, result in zip(hosts, results, strict=True):
        result.setdefault("host", host.name)
    return results
