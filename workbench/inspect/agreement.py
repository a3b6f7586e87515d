"""Kernel objects against handover bytes: where a kernel holds both, do they say the same?

The kernel's view of a preserved memfd is its ``struct luo_session``/``struct luo_file`` (session name, token)
and, while it has a file, the shmem inode (size, page-cache folios and their pfns). The bytes' view is what the
next kernel will read (or was handed): the session list (``luo_ser_out->sessions_pa`` once serialized, the incoming
``block_set.head_pa`` before deserialization) and each memfd's ``struct memfd_luo_ser`` and folio array at the
file's ``serialized_data`` (until the next kernel's retrieve frees them), decoded by :mod:`workbench.abi`; for the
outgoing side also the preserved-memory radix tree. :func:`compare_views` lines them up (pure);
:func:`bytes_view` decodes the bytes' view (bytes the kernel points at that do not decode are a disagreement, not a
fact left out); :func:`handover_agreement` reads both views from a kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import drgn
import numpy as np
import pandas as pd

from workbench.inspect._util import global_object, has_member
from workbench.inspect.luo import DIRECTIONS, for_each_session, for_each_session_file, luo_file_info, session_name
from workbench.inspect.memfd import MEMFD_COMPATIBLE, memfd_folios, memfd_inode

if TYPE_CHECKING:
    from workbench.abi.physmem import PhysicalMemory

__all__ = [
    "VIEW_COLUMNS",
    "AGREEMENT_COLUMNS",
    "UNDECODED",
    "compare_views",
    "bytes_view",
    "with_undecoded",
    "handover_agreement",
    "agreement_summary",
]

#: a view of the preserved files: one row per file; ``size``, ``folios`` and ``pfns`` (a tuple) are ``None`` where
#: the view does not know them
VIEW_COLUMNS = ["direction", "session", "token", "size", "folios", "pfns"]
AGREEMENT_COLUMNS = ["direction", "session", "token", "what", "kernel", "bytes", "agree"]
#: how ``bytes`` begins in the row of bytes the kernel points at that do not decode (a disagreement)
UNDECODED = "does not decode: "


def _known(value: Any) -> bool:
    return value is not None and value == value  # NaN is not known either


def _text(value: Any) -> str:
    if not _known(value):
        return "-"
    if isinstance(value, tuple):
        return f"{len(value)} pfn(s)" + (f", first {value[0]:#x}" if value else "")
    if isinstance(value, (list, set, frozenset)):
        return ", ".join(str(v) for v in sorted(value, key=str)) or "none"
    return str(value)


def _row(direction: str, session: str | None, token: int | None, what: str, kernel: Any, in_bytes: Any) -> dict:
    return {
        "direction": direction,
        "session": session,
        "token": token,
        "what": what,
        "kernel": _text(kernel),
        "bytes": _text(in_bytes),
        "agree": kernel == in_bytes if _known(kernel) and _known(in_bytes) else None,
    }


def compare_views(
    kernel: pd.DataFrame, from_bytes: pd.DataFrame, *, listed: bool, preserved: np.ndarray | None = None
) -> pd.DataFrame:
    """The facts the views hold, side by side (:data:`AGREEMENT_COLUMNS`): ``agree`` is a bool where both hold the
    fact, ``None`` where only one does (e.g. the size of an incoming memfd not retrieved yet, known to the bytes only).

    :param kernel: the kernel's view (:data:`VIEW_COLUMNS`)
    :param from_bytes: the bytes' view (:data:`VIEW_COLUMNS`), for the same directions
    :param listed: ``from_bytes`` comes from a session list in the bytes, so sessions and tokens are compared;
        otherwise its rows were found through the kernel's own pointers and only the memfds are compared
    :param preserved: the pfns of the outgoing preserved-memory radix tree, to check the kernel's outgoing memfd
        pfns against (``None``: not checked)
    """
    rows = []
    for direction in sorted(set(kernel["direction"]) | set(from_bytes["direction"])):
        k = kernel[kernel["direction"] == direction]
        b = from_bytes[from_bytes["direction"] == direction]
        if listed and len(b):
            rows.append(_row(direction, None, None, "sessions", set(k["session"]), set(b["session"])))
            for session in sorted(set(k["session"]) & set(b["session"])):
                tokens_k = [int(t) for t in k.loc[k["session"] == session, "token"] if t == t and t is not None]
                tokens_b = [int(t) for t in b.loc[b["session"] == session, "token"] if t == t and t is not None]
                rows.append(_row(direction, session, None, "tokens", tokens_k, tokens_b))
        by_key = {(r.session, r.token): r for r in b.itertuples(index=False)}
        for r in k.itertuples(index=False):
            other = by_key.get((r.session, r.token))
            if other is not None:
                for what in ("size", "folios", "pfns"):
                    mine, theirs = getattr(r, what), getattr(other, what)
                    if _known(mine) or _known(theirs):
                        rows.append(_row(direction, r.session, r.token, what, mine, theirs))
            if preserved is not None and direction == "outgoing" and _known(r.pfns):
                held = int(np.isin(np.asarray(r.pfns, dtype=np.uint64), preserved).sum())
                row = _row(direction, r.session, r.token, "pfns preserved", len(r.pfns), held)
                row["kernel"] = f"{len(r.pfns)} page-cache folio(s)"
                row["bytes"] = f"{held} of them in the radix tree"
                rows.append(row)
    table = pd.DataFrame(rows, columns=AGREEMENT_COLUMNS, dtype=object)
    return table.astype({"token": "UInt64", "agree": "boolean"})


def _kernel_view(prog: drgn.Program) -> tuple[pd.DataFrame, list[tuple[str, str, int, int]]]:
    """The kernel's view, and where the bytes of each memfd still are: (direction, session, token, ser phys)."""
    rows, sers = [], []
    for direction in DIRECTIONS:
        for s in for_each_session(prog, direction):
            name = session_name(s)
            for f in for_each_session_file(s):
                info = luo_file_info(f)
                row = {"direction": direction, "session": name, "token": info.token, "size": None}
                row |= {"folios": None, "pfns": None}
                inode = memfd_inode(f) if info.compatible == MEMFD_COMPATIBLE else None
                if inode is not None:
                    cache = memfd_folios(inode)
                    row |= {
                        "size": int(inode.i_size.value_()),
                        "folios": len(cache),
                        "pfns": tuple(int(p) for p in cache["pfn"]),
                    }
                rows.append(row)
                # the next kernel's retrieve frees the memfd_luo_ser: only unretrieved files still point at it
                if info.compatible == MEMFD_COMPATIBLE and info.serialized_data and not info.retrieve_status:
                    sers.append((direction, name, info.token, info.serialized_data))
    return pd.DataFrame(rows, columns=VIEW_COLUMNS, dtype=object), sers


def _undecoded_row(
    direction: str, session: str | None, token: int | None, what: str, kernel: str, exc: Exception
) -> dict:
    """A disagreement: the kernel points at bytes (``kernel`` says where) that do not decode."""
    row = _row(direction, session, token, what, kernel, None)
    return row | {"bytes": f"{UNDECODED}{exc}", "agree": False}


def _memfd_row(
    mem: PhysicalMemory, direction: str, session: str, token: int, ser_phys: int
) -> tuple[dict, dict | None]:
    """The bytes' view of one memfd, and the disagreement row when its ``memfd_luo_ser`` does not decode."""
    from workbench.abi.errors import AbiError
    from workbench.abi.memfd import decode_memfd

    row: dict = {"direction": direction, "session": session, "token": token, "size": None, "folios": None}
    row["pfns"] = None
    try:
        memfd = decode_memfd(mem, ser_phys, f"memfd {session}/{token:#x}")
    except AbiError as exc:
        where = f"memfd_luo_ser at {ser_phys:#x}"
        return row, _undecoded_row(direction, session, token, "memfd_luo_ser", where, exc)
    facts = {"size": memfd.size, "folios": memfd.ser.nr_folios, "pfns": tuple(int(p) for p in memfd.folios["pfn"])}
    return row | facts, None


def bytes_view(
    mem: PhysicalMemory, sessions_pa: int, sers: list[tuple[str, str, int, int]]
) -> tuple[pd.DataFrame, bool, list[dict]]:
    """The bytes' view (:data:`VIEW_COLUMNS`), whether it comes from a session list, and a disagreement row
    (:data:`AGREEMENT_COLUMNS`, ``agree`` False, ``bytes`` naming the error) for each part that does not decode.

    :param mem: the kernel's physical memory
    :param sessions_pa: the outgoing session list (``luo_ser_out->sessions_pa``; 0: not serialized)
    :param sers: where the kernel's files still have their ``memfd_luo_ser``: (direction, session, token, phys)
    """
    from workbench.abi.errors import AbiError
    from workbench.abi.luo import decode_session_list

    rows, undecoded, sessions = [], [], []
    if sessions_pa:
        try:
            sessions, _pages = decode_session_list(mem, sessions_pa)
        except AbiError as exc:
            where = f"luo_ser_out->sessions_pa {sessions_pa:#x}"
            undecoded.append(_undecoded_row("outgoing", None, None, "session list", where, exc))
    for s in sessions:
        for f in s.files:
            if f.compatible == MEMFD_COMPATIBLE:
                row, failed = _memfd_row(mem, "outgoing", s.name, f.token, f.data)
                rows.append(row)
                undecoded += [failed] if failed else []
            else:
                rows.append({"direction": "outgoing", "session": s.name, "token": f.token})
    done = {(r["direction"], r["session"], r["token"]) for r in rows}
    for where in sers:
        if where[:3] not in done:
            row, failed = _memfd_row(mem, *where)
            rows.append(row)
            undecoded += [failed] if failed else []
    return pd.DataFrame(rows, columns=VIEW_COLUMNS, dtype=object), bool(sessions), undecoded


def handover_agreement(
    prog: drgn.Program, mem: PhysicalMemory | None = None, preserved: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The kernel's objects against the handover bytes, fact by fact (:func:`compare_views`): sessions and tokens
    where the bytes hold a session list with kernel sessions beside it (the outgoing side once serialized), and
    each memfd's size, folio count and pfns where the kernel has its file and the bytes its ``memfd_luo_ser``.
    Bytes the kernel points at that do not decode are a disagreement, their error in ``bytes``.

    :param prog: kernel program
    :param mem: its physical memory (default: read through ``prog``)
    :param preserved: the outgoing radix tree as ``[pfn, order]`` (:func:`workbench.inspect.kho.preserved_folios`),
        to check that every outgoing memfd folio is in it
    """
    # imported here: workbench.abi compiles numba kernels on import, which an unprivileged process cannot cache
    from workbench.abi.physmem import DrgnMemory

    mem = mem or DrgnMemory(prog)
    kernel, sers = _kernel_view(prog)
    luo = global_object(prog, "luo_global", "CONFIG_LIVEUPDATE")
    ser = luo.luo_ser_out if has_member(luo, "luo_ser_out") else None
    sessions_pa = int(ser.sessions_pa.value_()) if ser is not None and ser.value_() else 0
    from_bytes, listed, undecoded = bytes_view(mem, sessions_pa, sers)
    pfns = None if preserved is None else preserved["pfn"].to_numpy(dtype=np.uint64)
    return with_undecoded(compare_views(kernel, from_bytes, listed=listed, preserved=pfns), undecoded)


def with_undecoded(table: pd.DataFrame, undecoded: list[dict]) -> pd.DataFrame:
    """``table`` (from :func:`compare_views`) with the disagreement rows of :func:`bytes_view` after it.

    :param table: the facts compared
    :param undecoded: rows for bytes that do not decode
    """
    if not undecoded:
        return table
    rows = pd.DataFrame(undecoded, columns=AGREEMENT_COLUMNS, dtype=object).astype(
        {"token": "UInt64", "agree": "boolean"}
    )
    return pd.concat([table, rows], ignore_index=True) if len(table) else rows


def agreement_summary(table: pd.DataFrame) -> dict:
    """``checked`` (facts both views hold), ``one_sided`` (facts only one holds), ``agree`` (every checked fact
    agrees; ``None`` when none was checked; ``False`` when bytes the kernel points at do not decode), the
    ``disagreements`` as records and, of them, what did not decode (``undecoded``: what, where and the error).

    :param table: from :func:`handover_agreement` (``None``: not read)
    """
    if table is None or not len(table):
        return {"checked": 0, "one_sided": 0, "agree": None, "disagreements": [], "undecoded": []}
    both = table[table["agree"].notna()]
    bad = both[~both["agree"].astype(bool)]
    failed = bad[bad["bytes"].str.startswith(UNDECODED)]
    return {
        "checked": int(len(both)),
        "one_sided": int(len(table) - len(both)),
        "agree": bad.empty if len(both) else None,
        "disagreements": bad.to_dict("records"),
        "undecoded": [f"{r.what} ({r.kernel}) {r.bytes}" for r in failed.itertuples(index=False)],
    }
