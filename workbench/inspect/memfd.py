"""memfds preserved through LUO (``mm/memfd_luo.c``, handler ``memfd-v2``), read with drgn.

A preserved memfd is a ``struct luo_file`` whose handler is ``memfd_luo_handler``. Before the kexec its
``file`` is the shmem file (inode, size, seals in ``struct shmem_inode_info``, folios in the page cache
``i_mapping->i_pages``), ``serialized_data`` the physical address of its ``struct memfd_luo_ser`` and
``private_data`` the vmalloc'ed ``struct memfd_luo_folio_ser`` array (pfn:52, flags:12, index). In the next kernel
the file appears once retrieved (``memfd_luo_retrieve`` builds a new shmem file from the preserved folios and
frees the serialized data), so only the page cache is meaningful there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import drgn
import numpy as np
import pandas as pd
from drgn.helpers.linux.mm import PageHead, compound_order
from drgn.helpers.linux.xarray import xa_for_each, xa_is_value

from workbench.inspect._util import direct_map_offset, has_member, page_pfn
from workbench.inspect.luo import DIRECTIONS, for_each_session, for_each_session_file, luo_file_info, session_name

__all__ = [
    "MEMFD_COMPATIBLE",
    "SEALS",
    "MemfdSer",
    "is_memfd_file",
    "for_each_preserved_memfd",
    "memfd_inode",
    "shmem_seals",
    "decode_seals",
    "for_each_memfd_folio",
    "memfd_folios",
    "memfd_ser",
    "memfd_serialized_folios",
    "preserved_memfds",
    "preserved_memfd_folios",
]

MEMFD_COMPATIBLE = "memfd-v2"
#: ``F_SEAL_*`` bits (include/uapi/linux/fcntl.h)
SEALS = {0x1: "SEAL", 0x2: "SHRINK", 0x4: "GROW", 0x8: "WRITE", 0x10: "FUTURE_WRITE", 0x20: "EXEC"}


@dataclass(frozen=True)
class MemfdSer:
    """``struct memfd_luo_ser`` as the outgoing kernel wrote it at preserve time."""

    phys: int
    pos: int
    size: int
    seals: int
    flags: int
    nr_folios: int
    folios_first: int  # physical address of the first struct kho_vmalloc_chunk
    folios_pages: int


def is_memfd_file(luo_file: drgn.Object) -> bool:
    """Whether a ``struct luo_file *`` is handled by the memfd handler.

    :param luo_file: ``struct luo_file *``
    """
    fh = luo_file.fh
    try:
        return fh.value_() == luo_file.prog_["memfd_luo_handler"].address_of_().value_()
    except LookupError:
        return luo_file_info(luo_file).compatible.startswith("memfd")


def for_each_preserved_memfd(
    prog: drgn.Program, direction: str | None = None
) -> Iterator[tuple[str, drgn.Object, drgn.Object]]:
    """``(direction, struct luo_session *, struct luo_file *)`` for each memfd in a LUO session.

    :param prog: kernel program
    :param direction: ``outgoing``, ``incoming`` or both (``None``)
    """
    for d in (direction,) if direction else DIRECTIONS:
        for session in for_each_session(prog, d):
            for f in for_each_session_file(session):
                if is_memfd_file(f):
                    yield d, session, f


def memfd_inode(luo_file: drgn.Object) -> drgn.Object | None:
    """The ``struct inode *`` of a preserved memfd, ``None`` while its file is not there (not yet retrieved).

    :param luo_file: ``struct luo_file *``
    """
    if not luo_file.file.value_():
        return None
    return luo_file.file.f_inode


def shmem_seals(inode: drgn.Object) -> int:
    """``F_SEAL_*`` bits of a shmem inode (``SHMEM_I(inode)->seals``).

    :param inode: ``struct inode *``
    """
    info = drgn.container_of(inode, "struct shmem_inode_info", "vfs_inode")
    return int(info.seals.value_())


def decode_seals(seals: int) -> list[str]:
    """Names of the ``F_SEAL_*`` bits set in ``seals`` (unknown bits as hex)."""
    names = [name for bit, name in SEALS.items() if seals & bit]
    rest = seals & ~sum(SEALS)
    return names + ([hex(rest)] if rest else [])


def for_each_memfd_folio(inode: drgn.Object) -> Iterator[tuple[int, int, int]]:
    """``(index, pfn, order)`` of each folio in a shmem inode's page cache, by file index (swap entries are
    skipped).

    :param inode: ``struct inode *``
    """
    prog = inode.prog_
    page_type = prog.type("struct page *")
    for index, entry in xa_for_each(inode.i_mapping.i_pages.address_of_()):
        if xa_is_value(entry):
            continue
        page = drgn.cast(page_type, entry)
        order = int(compound_order(page).value_()) if PageHead(page) else 0
        yield int(index), page_pfn(prog, entry.value_()), order


def memfd_folios(inode: drgn.Object) -> pd.DataFrame:
    """The page cache of a memfd as a DataFrame ``[index, pfn, order]``.

    :param inode: ``struct inode *``
    """
    rows = list(for_each_memfd_folio(inode))
    arr = np.array(rows, dtype=np.uint64).reshape(-1, 3)
    return pd.DataFrame({"index": arr[:, 0], "pfn": arr[:, 1], "order": arr[:, 2].astype(np.uint8)})


def memfd_ser(luo_file: drgn.Object) -> MemfdSer | None:
    """The ``struct memfd_luo_ser`` of an outgoing memfd (read through the direct map at ``serialized_data``);
    ``None`` for an incoming file, whose serialized data the retrieve freed.

    :param luo_file: ``struct luo_file *``
    """
    info = luo_file_info(luo_file)
    if not info.serialized_data or info.retrieve_status:
        return None
    prog = luo_file.prog_
    ser = drgn.Object(prog, "struct memfd_luo_ser", address=direct_map_offset(prog) + info.serialized_data)
    folios = ser.folios
    return MemfdSer(
        phys=info.serialized_data,
        pos=int(ser.pos.value_()),
        size=int(ser.size.value_()),
        seals=int(ser.seals.value_()),
        flags=int(ser.flags.value_()) if has_member(ser, "flags") else 0,
        nr_folios=int(ser.nr_folios.value_()),
        folios_first=int(folios.first.phys.value_()),
        folios_pages=int(folios.total_pages.value_()),
    )


def memfd_serialized_folios(luo_file: drgn.Object) -> pd.DataFrame:
    """The ``struct memfd_luo_folio_ser`` array of an outgoing memfd (``private_data``, vmalloc'ed) as
    ``[index, pfn, flags]``; empty when there is none.

    :param luo_file: ``struct luo_file *``
    """
    info = luo_file_info(luo_file)
    ser = memfd_ser(luo_file)
    empty = pd.DataFrame(
        {"index": np.empty(0, np.uint64), "pfn": np.empty(0, np.uint64), "flags": np.empty(0, np.uint16)}
    )
    if ser is None or not info.private_data or not ser.nr_folios:
        return empty
    prog = luo_file.prog_
    entry = drgn.sizeof(prog.type("struct memfd_luo_folio_ser"))
    raw = np.frombuffer(prog.read(info.private_data, ser.nr_folios * entry), dtype="<u8").reshape(-1, entry // 8)
    word = raw[:, 0]
    return pd.DataFrame(
        {
            "index": raw[:, 1].copy(),
            "pfn": word & np.uint64((1 << 52) - 1),
            "flags": (word >> np.uint64(52)).astype(np.uint16),
        }
    )


def preserved_memfds(prog: drgn.Program) -> pd.DataFrame:
    """One row per preserved memfd: ``direction``, ``session``, ``token``, ``retrieved``, ``inode`` (address),
    ``ino``, ``size``, ``seals`` (bits), ``seal_names``, ``nrpages``, ``folios`` (page-cache entries),
    ``ser_phys``, ``ser_size``, ``ser_nr_folios``.

    :param prog: kernel program
    """
    rows = []
    for direction, session, f in for_each_preserved_memfd(prog):
        info = luo_file_info(f)
        inode = memfd_inode(f)
        ser = memfd_ser(f)
        row = {
            "direction": direction,
            "session": session_name(session),
            "token": info.token,
            "retrieved": info.retrieved,
            "inode": int(inode.value_()) if inode is not None else 0,
            "ino": int(inode.i_ino.value_()) if inode is not None else None,
            "size": int(inode.i_size.value_()) if inode is not None else (ser.size if ser else None),
            "seals": shmem_seals(inode) if inode is not None else (ser.seals if ser else None),
            "nrpages": int(inode.i_mapping.nrpages.value_()) if inode is not None else None,
            "folios": len(memfd_folios(inode)) if inode is not None else None,
            "ser_phys": ser.phys if ser else None,
            "ser_size": ser.size if ser else None,
            "ser_nr_folios": ser.nr_folios if ser else None,
        }
        row["seal_names"] = ",".join(decode_seals(row["seals"])) if row["seals"] is not None else None
        rows.append(row)
    columns = [
        "direction",
        "session",
        "token",
        "retrieved",
        "inode",
        "ino",
        "size",
        "seals",
        "seal_names",
        "nrpages",
        "folios",
        "ser_phys",
        "ser_size",
        "ser_nr_folios",
    ]
    return pd.DataFrame(rows, columns=columns)


def preserved_memfd_folios(prog: drgn.Program) -> pd.DataFrame:
    """Every page-cache folio of every preserved memfd: ``direction``, ``session``, ``token``, ``index``, ``pfn``,
    ``order``.

    :param prog: kernel program
    """
    frames = []
    for direction, session, f in for_each_preserved_memfd(prog):
        inode = memfd_inode(f)
        if inode is None:
            continue
        df = memfd_folios(inode)
        df.insert(0, "token", np.uint64(luo_file_info(f).token))
        df.insert(0, "session", session_name(session))
        df.insert(0, "direction", direction)
        frames.append(df)
    columns = ["direction", "session", "token", "index", "pfn", "order"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
