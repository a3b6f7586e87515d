"""The incoming sessions a next kernel holds before LUO deserializes them, read from the handover bytes.

Until the first open of ``/dev/liveupdate``, the sessions the previous kernel handed over exist only as bytes:
``luo_session_global.incoming.block_set`` keeps the restored session list (``head_pa``), and each session's file
list, each memfd's ``struct memfd_luo_ser`` and folio array are where the previous kernel wrote them. No
``struct luo_session`` exists yet, so the inspector's session tables are empty; these rows say what is coming.
They are decoded by :mod:`workbench.abi` (:func:`~workbench.abi.luo.decode_session_list`,
:func:`~workbench.abi.memfd.decode_memfd`) from the kernel's memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import drgn
import pandas as pd

from workbench.inspect._util import global_object, has_member

if TYPE_CHECKING:
    from workbench.abi.physmem import PhysicalMemory

__all__ = ["PENDING_COLUMNS", "DESERIALIZED_AT", "incoming_sessions_from_bytes", "pending_incoming_sessions"]

PENDING_COLUMNS = ["session", "token", "compatible", "ser_phys", "size", "folios", "pages", "first_pfn", "error"]
#: what the rows of a pending session are waiting for
DESERIALIZED_AT = "LUO deserializes these sessions at the first open of /dev/liveupdate"


def incoming_sessions_from_bytes(mem: PhysicalMemory, sessions_pa: int) -> pd.DataFrame:
    """One row per file of the session list at ``sessions_pa`` (a session without files: one row with no
    token): ``session``, ``token``, ``compatible``, ``ser_phys`` (the handler's data), and for a memfd its ``size``,
    ``folios``, ``pages`` and ``first_pfn`` from its ``memfd_luo_ser``; ``error`` says what could not be decoded.

    :param mem: the kernel's physical memory
    :param sessions_pa: physical address of the first session block
    :raises AbiError: the session list itself does not decode
    """
    # imported here: workbench.abi compiles numba kernels on import, which an unprivileged process cannot cache
    from workbench.abi.errors import AbiError
    from workbench.abi.luo import decode_session_list
    from workbench.abi.memfd import MEMFD_LUO_FH_COMPATIBLE, decode_memfd

    sessions, _pages = decode_session_list(mem, sessions_pa)
    rows = []
    claimed: dict[int, str] = {}
    for session in sessions:
        if not session.files:
            rows.append({"session": session.name})
        for f in session.files:
            row = {"session": session.name, "token": f.token, "compatible": f.compatible, "ser_phys": f.data}
            if f.compatible == MEMFD_LUO_FH_COMPATIBLE:
                try:
                    memfd = decode_memfd(mem, f.data, f"memfd {session.name}/{f.token:#x}", claimed=claimed)
                except AbiError as exc:
                    row["error"] = str(exc)
                else:
                    row |= {
                        "size": memfd.size,
                        "folios": memfd.ser.nr_folios,
                        "pages": int(memfd.folio_pages().sum()) if len(memfd.folios) else 0,
                        "first_pfn": int(memfd.folios["pfn"].iat[0]) if len(memfd.folios) else None,
                    }
            rows.append(row)
    return _typed(pd.DataFrame(rows, columns=PENDING_COLUMNS, dtype=object))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    numbers = ("token", "ser_phys", "size", "folios", "pages", "first_pfn")
    return frame.astype({name: "UInt64" for name in numbers} | {"error": "string"})


def pending_incoming_sessions(prog: drgn.Program, mem: PhysicalMemory | None = None) -> pd.DataFrame:
    """The incoming sessions not yet deserialized, from the handover bytes (:func:`incoming_sessions_from_bytes`
    at ``luo_session_global.incoming.block_set.head_pa``); empty once LUO has deserialized them, or when there
    were none.

    :param prog: kernel program
    :param mem: its physical memory (default: read through ``prog``)
    """
    from workbench.abi.physmem import DrgnMemory

    header = global_object(prog, "luo_session_global", "CONFIG_LIVEUPDATE").incoming
    if not has_member(header, "block_set") or not header.block_set.head_pa.value_():
        return _typed(pd.DataFrame(columns=PENDING_COLUMNS, dtype=object))
    return incoming_sessions_from_bytes(mem or DrgnMemory(prog), int(header.block_set.head_pa.value_()))
