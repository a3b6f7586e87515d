"""Everything the helpers can tell about one kernel at one moment, as plain data: facts (JSON-ready dicts) and
DataFrames. Take one while a VM is paused, drop the program (it holds QEMU's QMP socket), look at it later."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import drgn
import pandas as pd

from workbench.inspect import kho, luo, memfd
from workbench.inspect.agreement import agreement_summary, handover_agreement
from workbench.inspect.debug_info import program_info
from workbench.inspect.moment import live_update_moment
from workbench.inspect.pending import DESERIALIZED_AT, pending_incoming_sessions

__all__ = ["Snapshot", "snapshot"]


@dataclass
class Snapshot:
    """KHO/LUO/memfd state of one kernel at one moment of a live update. ``moment`` holds the moment's fields
    (:func:`~workbench.inspect.moment.live_update_moment`); ``tables`` has ``kho_summary``, ``scratch``,
    ``preserved`` (pfn, order), ``memory_map``, ``luo_summary``, ``sessions``, ``files``, ``file_handlers``,
    ``flbs``, ``memfds``, ``memfd_folios``, ``pending_incoming`` (sessions handed over and not yet deserialized,
    from the handover bytes) and ``agreement`` (kernel objects against handover bytes); ``errors`` names the parts
    that could not be read."""

    source: dict[str, Any]
    kho: dict[str, Any]
    luo: dict[str, Any]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    moment: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest: the moment and its evidence, source, KHO facts, LUO facts, memfds, the pending
        incoming sessions, the agreement of kernel objects and bytes, errors."""
        memfds = self.tables.get("memfds")
        pending = self.tables.get("pending_incoming")
        out = {
            **self.moment,
            "source": {k: v for k, v in self.source.items() if k != "description"},
            "kho": self.kho,
            "luo": self.luo,
            "memfds": memfds.to_dict("records") if memfds is not None else [],
            "pending_incoming": pending.to_dict("records") if pending is not None else [],
            "agreement": agreement_summary(self.tables.get("agreement")),
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }
        if pending is not None and len(pending):
            out["pending_incoming_note"] = DESERIALIZED_AT
        return out


def snapshot(prog: drgn.Program, *, memory: bool = True, free: bool = True) -> Snapshot:
    """Reads every helper's view of ``prog`` once.

    :param prog: kernel program (from :func:`~workbench.inspect.program.open_vm` and friends)
    :param memory: include the physical memory map (``memory_map`` table)
    :param free: walk the buddy free lists for the memory map
    """
    # imported here: workbench.abi compiles numba kernels on import, which an unprivileged process cannot cache
    from workbench.abi.errors import AbiError

    t0 = time.monotonic()
    snap = Snapshot(source=program_info(prog), kho={}, luo={})

    def attempt(name: str, compute):
        try:
            return compute()
        except (drgn.FaultError, LookupError, ValueError, RuntimeError, AbiError) as exc:
            snap.errors[name] = f"{type(exc).__name__}: {exc}"
            return None

    snap.kho = attempt("kho", lambda: kho.kho_facts(prog)) or {}
    snap.luo = attempt("luo", lambda: luo.luo_facts(prog)) or {}
    snap.moment = attempt("moment", lambda: live_update_moment(prog)) or {}
    producers = {
        "kho_summary": lambda: kho.kho_summary(prog),
        "scratch": lambda: kho.scratch_areas(prog),
        "preserved": lambda: kho.preserved_folios(prog),
        "luo_summary": lambda: luo.luo_summary(prog),
        "sessions": lambda: luo.luo_sessions(prog),
        "files": lambda: luo.luo_files(prog),
        "file_handlers": lambda: luo.luo_file_handlers(prog),
        "flbs": lambda: luo.luo_flbs(prog),
        "memfds": lambda: memfd.preserved_memfds(prog),
        "memfd_folios": lambda: memfd.preserved_memfd_folios(prog),
        "pending_incoming": lambda: pending_incoming_sessions(prog),
    }
    if memory:
        producers["memory_map"] = lambda: kho.memory_map(prog, free=free)
    for name, compute in producers.items():
        table = attempt(name, compute)
        if table is not None:
            snap.tables[name] = table
    agreement = attempt("agreement", lambda: handover_agreement(prog, preserved=snap.tables.get("preserved")))
    if agreement is not None:
        snap.tables["agreement"] = agreement
    snap.seconds = time.monotonic() - t0
    return snap
