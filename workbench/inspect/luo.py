"""Live Update Orchestrator (LUO) state of a kernel, read with drgn (``kernel/liveupdate/luo_*.c``).

``luo_global`` holds whether LUO is on, the live-update number and the outgoing ``struct luo_ser``.
``luo_session_global`` has two ``struct luo_session_header``: ``outgoing`` (sessions created in this kernel, to be
handed over) and ``incoming`` (sessions the previous kernel handed over, deserialized when ``/dev/liveupdate`` is
first opened). Each ``struct luo_session`` has a name, a ``retrieved`` flag and a ``struct luo_file_set`` whose
``files_list`` links ``struct luo_file`` (handler, token, ``retrieve_status``, the handler's ``serialized_data``).
Registered file handlers are on ``luo_file_handler_list``, File-Lifecycle-Bound objects (FLBs) on
``luo_flb_global.list``.

Before the kexec, sessions live only in these lists: ``luo_ser.sessions_pa`` and the serialized file entries
are written by ``liveupdate_reboot()``. Finishing an incoming session frees its files, so a finished session is
an incoming, retrieved session with no files left (it leaves the list when its fd is closed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import drgn
import pandas as pd
from drgn.helpers.linux.list import list_empty, list_for_each_entry

from workbench.inspect._util import c_string, global_object, has_member, member, virt_to_phys_direct

__all__ = [
    "LuoState",
    "LuoFileInfo",
    "luo_enabled",
    "luo_state",
    "for_each_session",
    "for_each_outgoing_session",
    "for_each_incoming_session",
    "find_session",
    "session_name",
    "session_finished",
    "for_each_session_file",
    "luo_file_info",
    "for_each_file_handler",
    "file_handler_compatible",
    "for_each_flb",
    "for_each_handler_flb",
    "serialized_flbs",
    "luo_sessions",
    "luo_files",
    "luo_file_handlers",
    "luo_flbs",
    "luo_facts",
    "luo_summary",
]

_OPTION = "CONFIG_LIVEUPDATE"
DIRECTIONS = ("outgoing", "incoming")


@dataclass(frozen=True)
class LuoState:
    """The global LUO state."""

    enabled: bool
    liveupdate_num: int
    luo_ser_phys: int  # physical address of the outgoing struct luo_ser (0 when LUO is off)
    next_liveupdate_num: int  # luo_ser_out->liveupdate_num: the number the next kernel will see
    outgoing_sessions: int
    incoming_sessions: int
    outgoing_active: bool
    incoming_active: bool
    device_open: bool | None  # /dev/liveupdate held by a process (None if luo_dev is not in the debug info)
    flbs_registered: int


@dataclass(frozen=True)
class LuoFileInfo:
    """One ``struct luo_file`` in plain values."""

    token: int
    compatible: str
    retrieve_status: int
    retrieved: bool
    file: int  # struct file * (0 until retrieved in the new kernel)
    serialized_data: int  # handler handle, for memfd the physical address of struct memfd_luo_ser
    private_data: int
    address: int


def luo_enabled(prog: drgn.Program) -> bool:
    """``liveupdate_enabled()``: ``luo_global.enabled``.

    :param prog: kernel program
    """
    return bool(global_object(prog, "luo_global", _OPTION).enabled.value_())


def _header(prog: drgn.Program, direction: str) -> drgn.Object:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction is outgoing or incoming, not {direction!r}")
    return member(global_object(prog, "luo_session_global", _OPTION), direction)


def luo_state(prog: drgn.Program) -> LuoState:
    """Enabled, live-update number, session counts, whether ``/dev/liveupdate`` is open, FLB count.

    :param prog: kernel program
    """
    g = global_object(prog, "luo_global", _OPTION)
    out, inc = _header(prog, "outgoing"), _header(prog, "incoming")
    try:
        device_open: bool | None = bool(prog["luo_dev"].in_use.counter.value_())
    except LookupError:
        device_open = None
    try:
        flbs = int(prog["luo_flb_global"].count.value_())
    except LookupError:
        flbs = 0
    ser = g.luo_ser_out if has_member(g, "luo_ser_out") else None
    ser_ok = ser is not None and bool(ser.value_())
    return LuoState(
        enabled=bool(g.enabled.value_()),
        liveupdate_num=int(g.liveupdate_num.value_()) if has_member(g, "liveupdate_num") else 0,
        luo_ser_phys=virt_to_phys_direct(prog, ser.value_()) if ser_ok else 0,
        next_liveupdate_num=int(ser.liveupdate_num.value_()) if ser_ok else 0,
        outgoing_sessions=int(out.count.value_()),
        incoming_sessions=int(inc.count.value_()),
        outgoing_active=bool(out.active.value_()) if has_member(out, "active") else True,
        incoming_active=bool(inc.active.value_()) if has_member(inc, "active") else False,
        device_open=device_open,
        flbs_registered=flbs,
    )


def for_each_session(prog: drgn.Program, direction: str = "outgoing") -> Iterator[drgn.Object]:
    """``struct luo_session *`` on the ``outgoing`` or ``incoming`` list of ``luo_session_global``.

    :param prog: kernel program
    :param direction: ``outgoing`` or ``incoming``
    """
    yield from list_for_each_entry("struct luo_session", _header(prog, direction).list.address_of_(), "list")


def for_each_outgoing_session(prog: drgn.Program) -> Iterator[drgn.Object]:
    """``struct luo_session *`` created in this kernel (to be handed over).

    :param prog: kernel program
    """
    return for_each_session(prog, "outgoing")


def for_each_incoming_session(prog: drgn.Program) -> Iterator[drgn.Object]:
    """``struct luo_session *`` handed over by the previous kernel.

    :param prog: kernel program
    """
    return for_each_session(prog, "incoming")


def session_name(session: drgn.Object) -> str:
    """The name of a ``struct luo_session *``."""
    return c_string(session.name)


def find_session(prog: drgn.Program, name: str, direction: str | None = None) -> drgn.Object | None:
    """The ``struct luo_session *`` called ``name`` (in ``direction``, or outgoing then incoming), or ``None``.

    :param prog: kernel program
    """
    for d in (direction,) if direction else DIRECTIONS:
        for session in for_each_session(prog, d):
            if session_name(session) == name:
                return session
    return None


def _file_set(session: drgn.Object) -> drgn.Object:
    return member(session, "file_set", "files")


def for_each_session_file(session: drgn.Object) -> Iterator[drgn.Object]:
    """``struct luo_file *`` preserved in (or handed over with) a session.

    :param session: ``struct luo_session *``
    """
    yield from list_for_each_entry("struct luo_file", _file_set(session).files_list.address_of_(), "list")


def session_finished(session: drgn.Object) -> bool:
    """Whether an incoming session was retrieved and finished (no files left).

    :param session: ``struct luo_session *``
    """
    fs = _file_set(session)
    return bool(session.retrieved.value_()) and not fs.count.value_() and list_empty(fs.files_list.address_of_())


def file_handler_compatible(fh: drgn.Object) -> str:
    """The ``compatible`` string of a ``struct liveupdate_file_handler *`` (e.g. ``memfd-v2``)."""
    return c_string(fh.compatible) if fh.value_() else ""


def luo_file_info(luo_file: drgn.Object) -> LuoFileInfo:
    """Plain values of a ``struct luo_file *``.

    :param luo_file: ``struct luo_file *``
    """
    status = int(luo_file.retrieve_status.value_()) if has_member(luo_file, "retrieve_status") else 0
    if not has_member(luo_file, "retrieve_status") and has_member(luo_file, "retrieved"):
        status = 1 if luo_file.retrieved.value_() else 0
    return LuoFileInfo(
        token=int(luo_file.token.value_()),
        compatible=file_handler_compatible(luo_file.fh),
        retrieve_status=status,
        retrieved=status > 0,
        file=int(luo_file.file.value_()),
        serialized_data=int(luo_file.serialized_data.value_()),
        private_data=int(luo_file.private_data.value_()) if has_member(luo_file, "private_data") else 0,
        address=int(luo_file.value_()),
    )


def for_each_file_handler(prog: drgn.Program) -> Iterator[drgn.Object]:
    """``struct liveupdate_file_handler *`` registered with LUO (``luo_file_handler_list``).

    :param prog: kernel program
    """
    head = global_object(prog, "luo_file_handler_list", _OPTION).address_of_()
    yield from list_for_each_entry("struct liveupdate_file_handler", head, "list")


def for_each_flb(prog: drgn.Program) -> Iterator[drgn.Object]:
    """``struct liveupdate_flb *`` registered globally (``luo_flb_global.list``, linked by ``private.list``).

    :param prog: kernel program
    """
    try:
        g = prog["luo_flb_global"]
    except LookupError:
        return
    yield from list_for_each_entry("struct liveupdate_flb", g.list.address_of_(), "private.list")


def for_each_handler_flb(fh: drgn.Object) -> Iterator[drgn.Object]:
    """``struct liveupdate_flb *`` a file handler depends on (its ``flb_list`` of ``struct luo_flb_link``).

    :param fh: ``struct liveupdate_file_handler *``
    """
    if not has_member(fh, "flb_list"):
        return
    for link in list_for_each_entry("struct luo_flb_link", fh.flb_list.address_of_(), "list"):
        yield link.flb


def serialized_flbs(prog: drgn.Program, direction: str = "outgoing") -> list[dict]:
    """The ``struct luo_flb_ser`` entries of the outgoing or incoming FLB page (the outgoing page is filled by
    ``liveupdate_reboot()``; the incoming one is what the previous kernel wrote).

    :param prog: kernel program
    """
    try:
        header = prog["luo_flb_global"].member_(direction)
    except LookupError:
        return []
    if not header.header_ser.value_():
        return []
    count = int(header.header_ser.count.value_())
    return [
        {
            "name": c_string(header.ser[i].name),
            "data": int(header.ser[i].data.value_()),
            "count": int(header.ser[i].count.value_()),
        }
        for i in range(count)
    ]


# -- tables ------------------------------------------------------------------------------------------------------
def luo_sessions(prog: drgn.Program) -> pd.DataFrame:
    """One row per session, both directions: ``direction``, ``name``, ``retrieved``, ``finished``, ``files``,
    ``blocks`` (kho_block pages of its file set), ``address``.

    :param prog: kernel program
    """
    rows = []
    for direction in DIRECTIONS:
        for s in for_each_session(prog, direction):
            fs = _file_set(s)
            blocks = int(fs.block_set.nblocks.value_()) if has_member(fs, "block_set") else 0
            rows.append(
                (
                    direction,
                    session_name(s),
                    bool(s.retrieved.value_()),
                    direction == "incoming" and session_finished(s),
                    int(fs.count.value_()),
                    blocks,
                    int(s.value_()),
                )
            )
    columns = ["direction", "name", "retrieved", "finished", "files", "blocks", "address"]
    return pd.DataFrame(rows, columns=columns)


def luo_files(prog: drgn.Program) -> pd.DataFrame:
    """One row per preserved file of every session: ``direction``, ``session`` and the :class:`LuoFileInfo`
    fields.

    :param prog: kernel program
    """
    rows = []
    for direction in DIRECTIONS:
        for s in for_each_session(prog, direction):
            for f in for_each_session_file(s):
                rows.append({"direction": direction, "session": session_name(s), **asdict(luo_file_info(f))})
    columns = ["direction", "session", *LuoFileInfo.__dataclass_fields__]
    return pd.DataFrame(rows, columns=columns).astype({"token": "uint64", "serialized_data": "uint64"})


def _function_name(prog: drgn.Program, pointer: drgn.Object) -> str | None:
    address = pointer.value_()
    if not address:
        return None
    try:
        return prog.symbol(address).name
    except LookupError:
        return hex(address)


def luo_file_handlers(prog: drgn.Program) -> pd.DataFrame:
    """Registered file handlers: ``compatible``, their operations (function names), dependent FLBs.

    :param prog: kernel program
    """
    rows = []
    for fh in for_each_file_handler(prog):
        ops = fh.ops
        names = {}
        for op in ("preserve", "freeze", "retrieve", "finish", "can_finish"):
            if has_member(ops, op):
                names[op] = _function_name(prog, ops.member_(op))
        flbs = [c_string(f.compatible) for f in for_each_handler_flb(fh)]
        rows.append({"compatible": file_handler_compatible(fh), **names, "flbs": flbs, "address": int(fh.value_())})
    return pd.DataFrame(
        rows, columns=["compatible", "preserve", "freeze", "retrieve", "finish", "can_finish", "flbs", "address"]
    )


def luo_flbs(prog: drgn.Program) -> pd.DataFrame:
    """Registered FLBs: ``compatible``, users, outgoing/incoming reference counts and data handles,
    ``incoming_finished``.

    :param prog: kernel program
    """
    rows = []
    for flb in for_each_flb(prog):
        private = flb.member_("private")
        rows.append(
            {
                "compatible": c_string(flb.compatible),
                "users": int(private.users.value_()),
                "outgoing_count": int(private.outgoing.count.refs.counter.value_()),
                "outgoing_data": int(private.outgoing.data.value_()),
                "incoming_count": int(private.incoming.count.refs.counter.value_()),
                "incoming_data": int(private.incoming.data.value_()),
                "incoming_finished": bool(private.incoming.finished.value_()),
            }
        )
    columns = [
        "compatible",
        "users",
        "outgoing_count",
        "outgoing_data",
        "incoming_count",
        "incoming_data",
        "incoming_finished",
    ]
    return pd.DataFrame(rows, columns=columns)


def luo_facts(prog: drgn.Program) -> dict:
    """LUO as a JSON-ready dict: :class:`LuoState`, sessions with their files, handlers, FLBs.

    :param prog: kernel program
    """
    facts = asdict(luo_state(prog))
    files = luo_files(prog)
    sessions = luo_sessions(prog)
    facts["sessions"] = [
        {
            **{k: v for k, v in row.items() if k != "address"},
            "tokens": [
                int(t) for t in files[(files.direction == row["direction"]) & (files.session == row["name"])].token
            ],
        }
        for row in sessions.to_dict("records")
    ]
    facts["file_handlers"] = [c for c in luo_file_handlers(prog)["compatible"]]
    facts["flbs"] = list(luo_flbs(prog)["compatible"])
    return facts


def luo_summary(prog: drgn.Program) -> pd.DataFrame:
    """One row per session file (a session without files gets one row with no token): ``direction``,
    ``session``, ``retrieved`` (session), ``finished`` (session), ``token``, ``compatible``, ``file_retrieved``,
    ``retrieve_status``.

    :param prog: kernel program
    """
    rows = []
    for direction in DIRECTIONS:
        for s in for_each_session(prog, direction):
            base = {
                "direction": direction,
                "session": session_name(s),
                "retrieved": bool(s.retrieved.value_()),
                "finished": direction == "incoming" and session_finished(s),
            }
            files = [luo_file_info(f) for f in for_each_session_file(s)]
            if not files:
                rows.append(
                    {**base, "token": None, "compatible": None, "file_retrieved": None, "retrieve_status": None}
                )
            for f in files:
                rows.append(
                    {
                        **base,
                        "token": f.token,
                        "compatible": f.compatible,
                        "file_retrieved": f.retrieved,
                        "retrieve_status": f.retrieve_status,
                    }
                )
    columns = [
        "direction",
        "session",
        "retrieved",
        "finished",
        "token",
        "compatible",
        "file_retrieved",
        "retrieve_status",
    ]
    return pd.DataFrame(rows, columns=columns)
