"""systemd's live update next to the workbench agent's: the same memfds kept across a kexec once by the lab's own
agent (busybox initramfs, the ``memfd`` workload on the ``qemu`` target) and once by systemd's file descriptor
store in the Debian guest (the ``systemd`` workload on the ``guest`` target), on the same kernel, in one run.

:func:`run_side_by_side` runs both cycles (recorded), :func:`side_by_side_table` puts their figures in rows,
:func:`systemd_session` reads the session systemd handed to LUO from the guest's dump at the kexec, and
:func:`side_by_side_finding` is the headline."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pandas as pd

from workbench.inspect import open_vmcore, snapshot
from workbench.lab.cycle import run_cycle
from workbench.lab.guest.target import GuestTarget
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workload import make_workload
from workbench.records import RecordStore
from workbench.report.headline import Finding, Number, format_value

__all__ = ["run_side_by_side", "side_by_side_table", "systemd_session", "side_by_side_finding"]

#: the session the agent's cycle preserves (systemd names its own ``systemd``)
AGENT_SESSION = "agent"


def run_side_by_side(
    memfds: int,
    memfd_size: int,
    *,
    kernel: str = "7.2",
    store: RecordStore | None = None,
    dump_at: tuple[str, ...] = ("serialized",),
) -> dict[str, dict[str, Any]]:
    """Runs the agent's cycle and systemd's, each of ``memfds`` memfds of ``memfd_size`` bytes, on ``kernel``;
    the guest is dumped at ``dump_at`` (see :data:`~workbench.lab.moment_dumps.MOMENT_STOPS`). Returns
    ``{"agent": result, "systemd": result}``; a cycle that fails raises its error (it is recorded)."""
    agent = run_cycle(
        make_workload("memfd", memfds=memfds, memfd_size=memfd_size),
        CycleParams(session=AGENT_SESSION),
        target=QemuTarget(kernel=kernel),
        store=store,
    )
    systemd = run_cycle(
        make_workload("systemd", sizes=[memfd_size] * memfds),
        CycleParams(session="systemd"),
        target=GuestTarget(kernel=kernel, dump_at=list(dump_at)),
        store=store,
    )
    return {"agent": agent, "systemd": systemd}


def _get(result: Mapping[str, Any], *path: str) -> Any:
    if not path:
        return None
    value: Any = result
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


#: row -> where each cycle's result has it (the agent's, systemd's)
_ROWS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "verified": (("verified",), ("verified",)),
    "pages checked": (("pages_checked",), ("pages_checked",)),
    "boot to the workload running (s)": (("boot_s",), ("boot_s",)),
    "blackout: kexec to the workload back (s)": (("blackout_s",), ("blackout_without_dumps_s",)),
    "kexec to /init (s)": (("blackout_breakdown", "kexec_to_init_s"), ("blackout_breakdown", "kexec_to_init_s")),
    "/init to the workload (s)": (
        ("blackout_breakdown", "init_to_agent_s"),
        ("blackout_breakdown", "init_to_service_s"),
    ),
    "the workload's own blackout (s)": (("blackout_s",), ("service_blackout_without_dumps_s",)),
    "guest stopped for dumps, not counted above (s)": ((), ("dumps_held_s",)),
    "systemd: next kernel's start to the service ready (s)": ((), ("systemd_timing", "kernel_to_service_ready_s")),
    "prepare (s)": (("phases", "prepare"), ("phases", "prepare")),
    "hand the memfds over (s)": (("phases", "preserve"), ("phases", "store")),
    "load the next kernel (s)": (("phases", "load"), ("phases", "load")),
    "retrieve (s)": (("phases", "restore"), ("phases", "restore")),
    "verify (s)": (("phases", "verify"), ("phases", "verify")),
    "accelerator": (("accelerator",), ("accelerator",)),
}


def side_by_side_table(agent: Mapping[str, Any], systemd: Mapping[str, Any]) -> pd.DataFrame:
    """One row per figure, columns ``agent`` and ``systemd`` (None where a cycle has no such figure), and
    ``ratio`` (systemd / agent) for the seconds. systemd's blackouts leave out the time its guest stood stopped
    for the dumps at moments (``dump_at``), which the guest's cycle measures and reports.

    :param agent: the agent's cycle result (:func:`~workbench.lab.cycle.run_cycle`)
    :param systemd: the systemd workload's cycle result in the guest"""
    rows = []
    for what, (agent_path, systemd_path) in _ROWS.items():
        a, s = _get(agent, *agent_path), _get(systemd, *systemd_path)
        if isinstance(s, Mapping):  # seconds per moment
            s = sum(s.values())
        if s is None and systemd_path[-1].endswith("_without_dumps_s"):  # a cycle without dumps
            s = _get(systemd, *systemd_path[:-1], systemd_path[-1].replace("_without_dumps_s", "_s"))
        seconds = what.endswith("(s)") and isinstance(a, int | float) and isinstance(s, int | float) and a > 0
        rows.append({"what": what, "agent": a, "systemd": s, "ratio": s / a if seconds else None})
    return pd.DataFrame(rows, columns=["what", "agent", "systemd", "ratio"], dtype=object)


def systemd_session(vmcore: str | os.PathLike[str], vmlinux: str | os.PathLike[str]) -> pd.DataFrame:
    """The memfds of the session ``systemd`` in a dump of the guest (drgn): token, size, seals, folios, and
    which is the mapping systemd keeps beside the service's fds (its token 0).

    :param vmcore: an ELF vmcore of the guest (``vmcore-serialized.elf`` of a cycle with ``dump_at``)
    :param vmlinux: the guest kernel's ``vmlinux``"""
    prog = open_vmcore(vmcore, vmlinux)
    try:
        memfds = snapshot(prog, memory=False).tables.get("memfds")
    finally:
        del prog
    if memfds is None or memfds.empty:
        return pd.DataFrame(columns=["session", "token", "what", "size", "seal_names", "folios"])
    rows = memfds[memfds["session"] == "systemd"].copy()
    rows["what"] = ["systemd's mapping (JSON)" if t == 0 else "a service fd" for t in rows["token"]]
    return rows[["session", "token", "what", "size", "seal_names", "folios"]].reset_index(drop=True)


def side_by_side_finding(table: pd.DataFrame, systemd: Mapping[str, Any]) -> Finding:
    """The headline: whether systemd kept every page, and its blackouts against the agent's.

    :param table: :func:`side_by_side_table`'s rows
    :param systemd: the systemd cycle's result"""
    row = table.set_index("what")
    blackout = row.loc["blackout: kexec to the workload back (s)"]
    service = row.loc["the workload's own blackout (s)"]
    verified = bool(row.loc["verified", "systemd"])
    numbers = [
        Number("systemd_verified", "systemd kept every page", verified, exact=True),
        Number("systemd_blackout_s", "blackout, systemd", blackout["systemd"], "s", better="lower"),
        Number("agent_blackout_s", "blackout, agent", blackout["agent"], "s", better="lower"),
        Number("blackout_ratio", "blackout systemd / agent", blackout["ratio"], "×", better="lower"),
        Number("service_blackout_s", "the service's own blackout", service["systemd"], "s", better="lower"),
    ]
    returned = _get(systemd, "fdstore", "returned") or []
    text = (
        f"systemd {_get(systemd, 'systemd_version') or ''} kept {len(returned)} memfd(s) of its service's fd store "
        f"across the kexec ({'every page verified' if verified else 'NOT verified'}). Its blackout, kexec to the "
        f"service back, was {format_value(blackout['systemd'], 's')} against "
        f"{format_value(blackout['agent'], 's')} for the workbench agent "
        f"({format_value(blackout['ratio'], '')}×, {row.loc['accelerator', 'systemd']}); the service itself saw "
        f"{format_value(service['systemd'], 's')} from its SIGTERM to its fds back."
    )
    held = row.loc["guest stopped for dumps, not counted above (s)", "systemd"]
    if held:
        text += f" Both leave out the {format_value(held, 's')} the guest stood stopped to be dumped."
    return Finding(text, numbers)
