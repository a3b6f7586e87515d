"""The Live Update Orchestrator state (Linux 7.2, ``luo-v5``): the ``struct luo_ser`` blob of the KHO sub-node
``LUO``, its session list and each session's file list (``kho_block`` lists), and the FLB page.

``sessions_pa`` and the file lists are only filled in by ``luo_session_serialize()`` on the kexec reboot path;
before that, ``sessions_pa`` is 0 even when sessions and preserved files exist (their blocks are allocated but
unlinked). The same goes for the FLB entries (``luo_flb_serialize()``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from workbench.abi.alloc import PageAllocator
from workbench.abi.block import encode_block_list, read_block_list
from workbench.abi.errors import AddressNotInMemory, CountMismatch, IncompatibleFormat, MalformedData, TruncatedData
from workbench.abi.physmem import PAGE_SIZE, PhysicalMemory

__all__ = [
    "LUO_KHO_ENTRY_NAME",
    "LUO_ABI_COMPATIBLE",
    "LUO_SER_SIZE",
    "SESSION_SER_SIZE",
    "FILE_SER_SIZE",
    "FLB_SER_SIZE",
    "LuoFile",
    "LuoSession",
    "LuoFlb",
    "LuoState",
    "decode_session_list",
    "decode_luo",
    "encode_luo",
]

LUO_KHO_ENTRY_NAME = "LUO"
LUO_ABI_COMPATIBLE = "luo-v5"
_COMPAT_LEN = -(-(len(LUO_ABI_COMPATIBLE) + 1) // 8) * 8  # LUO_ABI_COMPAT_LEN
_SESSION_NAME_LENGTH = 64  # LIVEUPDATE_SESSION_NAME_LENGTH
_HNDL_COMPAT_LENGTH = 48  # LIVEUPDATE_HNDL_COMPAT_LENGTH
_FLB_COMPAT_LENGTH = 48  # LIVEUPDATE_FLB_COMPAT_LENGTH

_LUO_SER = struct.Struct(f"<{_COMPAT_LEN}sQQQ")  # struct luo_ser
_SESSION_SER = struct.Struct(f"<{_SESSION_NAME_LENGTH}sQQ")  # struct luo_session_ser (+ luo_file_set_ser)
_FILE_SER = struct.Struct(f"<{_HNDL_COMPAT_LENGTH}sQQ")  # struct luo_file_ser
_FLB_HEADER_SER = struct.Struct("<QQ")  # struct luo_flb_header_ser
_FLB_SER = struct.Struct(f"<{_FLB_COMPAT_LENGTH}sQQ")  # struct luo_flb_ser

LUO_SER_SIZE = _LUO_SER.size
SESSION_SER_SIZE = _SESSION_SER.size
FILE_SER_SIZE = _FILE_SER.size
FLB_SER_SIZE = _FLB_SER.size


def _c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _c_bytes(text: str, length: int, what: str) -> bytes:
    raw = text.encode()
    if len(raw) >= length or b"\0" in raw:
        raise ValueError(f"{what} {text!r} must be under {length} bytes with no NUL")
    return raw


@dataclass
class LuoFile:
    """``struct luo_file_ser``: a preserved file's handler, its opaque handler data and the user's token."""

    compatible: str
    data: int
    token: int

    def pack(self) -> bytes:
        return _FILE_SER.pack(_c_bytes(self.compatible, _HNDL_COMPAT_LENGTH, "file handler"), self.data, self.token)

    @classmethod
    def unpack(cls, raw: bytes) -> LuoFile:
        compatible, data, token = _FILE_SER.unpack(raw)
        return cls(_c_string(compatible), data, token)


@dataclass
class LuoSession:
    """``struct luo_session_ser`` and the files of its ``luo_file_set_ser``."""

    name: str
    files: list[LuoFile]
    files_phys: int = 0
    file_count: int = 0
    block_pages: list[int] = field(default_factory=list)


@dataclass
class LuoFlb:
    """``struct luo_flb_ser``: a preserved global object, its handle and how many files depend on it."""

    name: str
    data: int
    count: int

    def pack(self) -> bytes:
        return _FLB_SER.pack(_c_bytes(self.name, _FLB_COMPAT_LENGTH, "FLB name"), self.data, self.count)

    @classmethod
    def unpack(cls, raw: bytes) -> LuoFlb:
        name, data, count = _FLB_SER.unpack(raw)
        return cls(_c_string(name), data, count)


@dataclass
class LuoState:
    """``struct luo_ser`` at ``phys`` and everything reachable from it (``flb_pgcnt`` is the ``pgcnt`` of the
    ``struct luo_flb_header_ser`` at ``flbs_pa``)."""

    phys: int
    compatible: str
    liveupdate_num: int
    sessions_pa: int
    flbs_pa: int
    sessions: list[LuoSession]
    flbs: list[LuoFlb]
    flb_pgcnt: int
    session_block_pages: list[int] = field(default_factory=list)

    def session(self, name: str) -> LuoSession | None:
        return next((s for s in self.sessions if s.name == name), None)

    def files_frame(self) -> pd.DataFrame:
        """One row per preserved file: ``session``, ``token``, ``compatible``, ``data`` (handler data phys)."""
        rows = [(s.name, f.token, f.compatible, f.data) for s in self.sessions for f in s.files]
        return pd.DataFrame(rows, columns=["session", "token", "compatible", "data"]).astype(
            {"token": "uint64", "data": "uint64"}
        )

    def metadata_pages(self) -> list[int]:
        """Physical pages of LUO's own metadata (luo_ser, FLB page(s), session and file blocks)."""
        pages = [self.phys - self.phys % PAGE_SIZE, *self.session_block_pages]
        if self.flbs_pa:
            pages += [self.flbs_pa + i * PAGE_SIZE for i in range(self.flb_pgcnt)]
        for s in self.sessions:
            pages += s.block_pages
        return pages


def decode_session_list(
    mem: PhysicalMemory, sessions_pa: int, blocks: dict[int, str] | None = None
) -> tuple[list[LuoSession], list[int]]:
    """Decodes the session list at ``sessions_pa`` (``luo_ser.sessions_pa``, or the ``head_pa`` of the incoming
    session ``kho_block_set`` that a next kernel keeps until LUO deserializes it) and each session's file list.

    Returns the sessions and the pages of the session list's blocks. Checks: every block list (see
    :func:`read_block_list`) and that no two lists share a block, unique session names, each session's file count
    against its blocks.

    :param mem: physical memory holding the lists
    :param sessions_pa: physical address of the first session block (0: no sessions)
    :param blocks: the blocks already claimed by other lists of the same handover (page -> owner), filled in
    """
    blocks = {} if blocks is None else blocks
    session_list = read_block_list(mem, sessions_pa, SESSION_SER_SIZE, "LUO session list", blocks)
    sessions: list[LuoSession] = []
    names: set[str] = set()
    for raw in session_list.entries:
        name_raw, files_pa, count = _SESSION_SER.unpack(raw)
        name = _c_string(name_raw)
        if name in names:
            raise MalformedData(f"LUO session list at {sessions_pa:#x}: session {name!r} appears twice", sessions_pa)
        names.add(name)
        session = LuoSession(name, [], files_pa, count)
        if files_pa == 0:
            if count:
                raise CountMismatch(f"LUO session {name!r}: no file blocks but a file count of {count}", sessions_pa)
        else:
            files = read_block_list(mem, files_pa, FILE_SER_SIZE, f"files of LUO session {name!r}", blocks)
            session.files = [LuoFile.unpack(e) for e in files.entries]
            session.block_pages = files.pages
            if len(session.files) != count:
                raise CountMismatch(
                    f"LUO session {name!r}: file_set_ser.count is {count} but its blocks at {files_pa:#x} "
                    f"hold {len(session.files)} files",
                    files_pa,
                )
        sessions.append(session)
    return sessions, session_list.pages


def decode_luo(mem: PhysicalMemory, phys: int, blob_size: int | None = None) -> LuoState:
    """Decodes ``struct luo_ser`` at ``phys`` (``blob_size`` from the FDT sub-node, if known) and its lists.

    Checks: blob size, ``compatible``, every block list (see :func:`read_block_list`) and that no two lists share a
    block, each session's file count against its blocks, unique session names, the FLB pages inside memory and the
    FLB entry count against their number.
    """
    if blob_size is not None and blob_size < LUO_SER_SIZE:
        raise TruncatedData(f"LUO blob at {phys:#x} is {blob_size} bytes, less than luo_ser ({LUO_SER_SIZE})", phys)
    compatible_raw, liveupdate_num, sessions_pa, flbs_pa = _LUO_SER.unpack(mem.read(phys, LUO_SER_SIZE))
    compatible = _c_string(compatible_raw)
    if compatible != LUO_ABI_COMPATIBLE:
        raise IncompatibleFormat(f"luo_ser at {phys:#x}: compatible {compatible!r} is not {LUO_ABI_COMPATIBLE!r}", phys)

    blocks: dict[int, str] = {}
    sessions, session_block_pages = decode_session_list(mem, sessions_pa, blocks)

    flbs: list[LuoFlb] = []
    pgcnt = 0
    if flbs_pa:
        pgcnt, count = _FLB_HEADER_SER.unpack(mem.read(flbs_pa, _FLB_HEADER_SER.size))
        if pgcnt == 0:
            raise MalformedData(f"LUO FLB header at {flbs_pa:#x} says it occupies 0 pages", flbs_pa)
        if not mem.contains(flbs_pa, pgcnt * PAGE_SIZE):
            raise AddressNotInMemory(
                f"LUO FLB header at {flbs_pa:#x} says it occupies {pgcnt} pages, which run past the end of memory",
                flbs_pa,
            )
        capacity = (pgcnt * PAGE_SIZE - _FLB_HEADER_SER.size) // FLB_SER_SIZE
        if count > capacity:
            raise CountMismatch(
                f"LUO FLB header at {flbs_pa:#x}: {count} entries do not fit in {pgcnt} page(s) ({capacity} max)",
                flbs_pa,
            )
        raw = mem.read(flbs_pa + _FLB_HEADER_SER.size, count * FLB_SER_SIZE)
        flbs = [LuoFlb.unpack(raw[i * FLB_SER_SIZE : (i + 1) * FLB_SER_SIZE]) for i in range(count)]
    return LuoState(phys, compatible, liveupdate_num, sessions_pa, flbs_pa, sessions, flbs, pgcnt, session_block_pages)


def encode_luo(
    sessions: Sequence[tuple[str, Sequence[LuoFile]]],
    allocator: PageAllocator,
    flbs: Sequence[LuoFlb] = (),
    liveupdate_num: int = 1,
) -> LuoState:
    """Writes the state ``liveupdate_reboot()`` leaves behind for these sessions and FLBs; returns it decoded
    (with every address filled in). ``luo_ser`` gets a page of its own, as ``kho_alloc_preserve`` gives it."""
    memory = allocator.memory
    phys = allocator.alloc_for(LUO_SER_SIZE)
    flbs_pa = allocator.alloc()
    capacity = (PAGE_SIZE - _FLB_HEADER_SER.size) // FLB_SER_SIZE
    if len(flbs) > capacity:
        raise ValueError(f"{len(flbs)} FLBs do not fit in one page ({capacity} max)")
    memory.write(flbs_pa, _FLB_HEADER_SER.pack(1, len(flbs)) + b"".join(f.pack() for f in flbs))

    decoded: list[LuoSession] = []
    entries = []
    for name, files in sessions:
        raw_name = _c_bytes(name, _SESSION_NAME_LENGTH, "session name")
        blocks = encode_block_list([f.pack() for f in files], FILE_SER_SIZE, allocator)
        entries.append(_SESSION_SER.pack(raw_name, blocks.head_phys, len(files)))
        decoded.append(LuoSession(name, list(files), blocks.head_phys, len(files), blocks.pages))
    session_blocks = encode_block_list(entries, SESSION_SER_SIZE, allocator)
    compatible = LUO_ABI_COMPATIBLE.encode()
    memory.write(phys, _LUO_SER.pack(compatible, liveupdate_num, session_blocks.head_phys, flbs_pa))
    return LuoState(
        phys,
        LUO_ABI_COMPATIBLE,
        liveupdate_num,
        session_blocks.head_phys,
        flbs_pa,
        decoded,
        list(flbs),
        1,
        session_blocks.pages,
    )
