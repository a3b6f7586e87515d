"""Kernel dump files: which format a dump is (ELF, kdump-compressed, or the flattened makedumpfile stream), whether
it holds every byte its headers promise (:func:`check_dump`), and the kdump file drgn's libkdumpfile can open
(:func:`kdump_for_drgn`: QEMU writes flattened streams with an empty utsname, which libkdumpfile rejects)."""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from workbench.elf import ElfError, ElfFile, TruncatedElf
from workbench.inspect.errors import TruncatedDump, UnreadableDump
from workbench.inspect.vmcoreinfo import parse_vmcoreinfo

__all__ = ["check_dump", "kdump_for_drgn"]


def _elf_expected_size(mm: mmap.mmap, path: Path) -> int:
    """The file size an ELF core's headers promise: the end of its program header table or of its last
    segment."""
    try:
        elf = ElfFile(mm, name=str(path))
        segments = elf.program_headers()
    except TruncatedElf as exc:
        raise TruncatedDump(str(exc), path, exc.needed, exc.size) from None
    except ElfError as exc:
        raise UnreadableDump(str(exc)) from None
    end = elf.header.phoff + len(segments) * elf.header.phentsize
    return max([end, *(p.offset + p.filesz for p in segments)])


_DUMP_INCOMPLETE = 0x8  # DUMP_DH_COMPRESSED_INCOMPLETE in the kdump header's status


def _kdump_expected_size(mm: mmap.mmap, path: Path) -> int:
    """The file size a kdump-compressed file's headers promise: the end of its page descriptors or of the last
    page's data (makedumpfile 1.7's layout: header, sub-header block with VMCOREINFO and ELF notes, two bitmaps,
    one 24-byte descriptor per dumped page, page data; zero pages share one data block)."""
    size = len(mm)
    if size < 448:
        raise TruncatedDump(f"{path}: the kdump header is cut off", path, 448, size)
    header_version = struct.unpack_from("<I", mm, 8)[0]
    status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr = struct.unpack_from("<IIIII", mm, 424)
    # makedumpfile keeps a dump it could not finish (its disk filled up) and says so in the header
    why = " (makedumpfile marked it incomplete: the capture ran out of space)" if status & _DUMP_INCOMPLETE else ""
    if not block_size or block_size & (block_size - 1):
        raise UnreadableDump(f"{path}: kdump block size {block_size} is not a power of two")
    sub = block_size
    if header_version >= 6 and size >= sub + 104:
        max_mapnr = struct.unpack_from("<Q", mm, sub + 96)[0] or max_mapnr
    bitmap_off = (1 + sub_hdr_size) * block_size
    bitmap_len = bitmap_blocks * block_size
    descs_off = bitmap_off + bitmap_len
    if descs_off > size:
        raise TruncatedDump(f"{path}: the kdump bitmaps end at {descs_off:#x}{why}", path, descs_off, size)
    # copies, not views: a view still alive when an error is raised would keep the mapping from being closed
    second = np.frombuffer(mm[bitmap_off + bitmap_len // 2 : bitmap_off + bitmap_len // 2 * 2], dtype=np.uint8)
    dumped = int(np.unpackbits(second).sum())
    descs_end = descs_off + 24 * dumped
    if descs_end > size:
        raise TruncatedDump(
            f"{path}: {dumped} page descriptors need bytes up to {descs_end:#x}{why}", path, descs_end, size
        )
    descs = np.frombuffer(
        mm[descs_off:descs_end],
        dtype=np.dtype([("offset", "<i8"), ("size", "<u4"), ("flags", "<u4"), ("pf", "<u8")]),
    )
    end = descs_end
    if dumped:
        if int(descs["offset"].min()) < 0:
            raise UnreadableDump(f"{path}: a page descriptor has a negative file offset")
        end = max(end, int((descs["offset"].astype(np.uint64) + descs["size"]).max()))  # no int64 wrap-around
    if end > size and why:
        raise TruncatedDump(f"{path}: its pages need bytes up to {end:#x}{why}", path, end, size)
    return end


def _flattened_expected_size(mm: mmap.mmap, path: Path) -> int:
    """Walks the (offset, size, data) records of a flattened makedumpfile stream up to its end marker."""
    size = len(mm)
    pos = 4096
    while True:
        if pos + 16 > size:
            raise TruncatedDump(
                f"{path}: the flattened kdump stream stops at byte {size:#x} before its end marker "
                f"(a record header at {pos:#x} is cut off)",
                path,
                None,
                size,
            )
        offset, length = struct.unpack_from(">qq", mm, pos)
        if offset == -1:
            return pos + 16
        if length < 0 or offset < 0:
            raise UnreadableDump(f"{path}: flattened record at {pos:#x} has offset {offset} and size {length}")
        pos += 16 + length
        if pos > size:
            raise TruncatedDump(
                f"{path}: a flattened kdump record at {pos - 16 - length:#x} needs {length} bytes past the end",
                path,
                pos,
                size,
            )


def check_dump(path: str | os.PathLike[str]) -> str:
    """The format of a dump (``elf``, ``kdump`` or ``flattened``), after checking that the file holds every byte
    its headers promise. Raises :class:`TruncatedDump` or :class:`UnreadableDump`."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise TruncatedDump(f"{path} is empty", path, None, 0)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        magic = mm[:16]
        if magic[:4] == b"\x7fELF":
            fmt, expected = "elf", _elf_expected_size(mm, path)
        elif magic[:8] == b"KDUMP   ":
            fmt, expected = "kdump", _kdump_expected_size(mm, path)
        elif magic.rstrip(b"\0") == b"makedumpfile":
            fmt, expected = "flattened", _flattened_expected_size(mm, path)
        else:
            raise UnreadableDump(
                f"{path} is not a kernel dump (magic {magic[:8]!r}): expected an ELF core from QEMU's "
                "dump-guest-memory, a kdump-compressed file or a flattened makedumpfile stream"
            )
    if expected > size:
        raise TruncatedDump(
            f"{path} is truncated: its headers describe {expected} bytes but the file has {size} "
            f"({expected - size} missing). Dump again (e.g. `workbench cycle --dump-after preserve`) or copy the "
            "whole file",
            path,
            expected,
            size,
        )
    return fmt


_UTS_OFFSET = 12  # struct disk_dump_header: signature[8], header_version
_UTS_LEN = 65


def _uts_fields(header: bytes) -> list[bytes]:
    return [header[_UTS_OFFSET + i * _UTS_LEN : _UTS_OFFSET + (i + 1) * _UTS_LEN] for i in range(6)]


def _uts_sane(header: bytes) -> bool:
    """libkdumpfile's test: NUL-terminated strings, sysname ``Linux``, release, version and machine set (QEMU
    writes only the machine, so libkdumpfile finds no architecture and drgn fails on ``arch.name``)."""
    sysname, _node, release, version, machine, _domain = _uts_fields(header)
    if any(f[-1] for f in (sysname, _node, release, version, machine)):
        return False
    return sysname.split(b"\0")[0] == b"Linux" and all(f[0] for f in (release, version, machine))


def _kdump_vmcoreinfo(f: BinaryIO) -> dict[str, str]:
    """The VMCOREINFO a kdump file (open for reading) carries in its sub-header, or an empty dict."""
    f.seek(0)
    header = f.read(448)
    block_size = struct.unpack_from("<I", header, 428)[0]
    f.seek(block_size)
    sub = f.read(64)
    if len(sub) < 48:
        return {}
    offset, size = struct.unpack_from("<QQ", sub, 32)
    if not offset or not size or size > 1 << 20 or offset + size > f.seek(0, os.SEEK_END):
        return {}
    f.seek(offset)
    return parse_vmcoreinfo(f.read(size))


def kdump_for_drgn(path: Path, fmt: str) -> Path:
    """A kdump file drgn's libkdumpfile opens: ``path`` itself when it is plain kdump with a sane utsname, else a
    copy (cached beside it, or in the temp folder) reassembled from the flattened stream and with the utsname
    QEMU leaves empty filled in from the VMCOREINFO (``Linux``, the release, ``#1``).

    :param path: the dump
    :param fmt: its format as :func:`check_dump` gives it: ``kdump`` or ``flattened``
    """
    with open(path, "rb") as f:
        if fmt == "kdump" and _uts_sane(f.read(448)):
            return path
    stat = path.stat()
    name = f".{path.name}.{stat.st_size}-{int(stat.st_mtime)}.drgn.kdump"
    for folder in (path.parent, Path(tempfile.gettempdir())):
        out = folder / name
        if out.exists():
            return out
        tmp = folder / (name + f".{os.getpid()}.tmp")
        try:
            with open(path, "rb") as f, open(tmp, "wb") as o:
                if fmt == "flattened":
                    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                        pos = 4096
                        while True:
                            offset, length = struct.unpack_from(">qq", mm, pos)
                            if offset == -1:
                                break
                            o.seek(offset)
                            o.write(mm[pos + 16 : pos + 16 + length])
                            pos += 16 + length
                else:
                    shutil.copyfileobj(f, o, 16 << 20)
            with open(tmp, "r+b") as o:
                header = o.read(448)
                if not _uts_sane(header):
                    info = _kdump_vmcoreinfo(o)
                    fields = _uts_fields(header)
                    values = [
                        b"Linux",
                        fields[1].split(b"\0")[0],
                        (fields[2].split(b"\0")[0] or info.get("OSRELEASE", "unknown").encode())[:64],
                        fields[3].split(b"\0")[0] or b"#1",
                        fields[4].split(b"\0")[0] or b"x86_64",
                        fields[5].split(b"\0")[0],
                    ]
                    o.seek(_UTS_OFFSET)
                    o.write(b"".join(v[:64].ljust(_UTS_LEN, b"\0") for v in values))
            os.replace(tmp, out)
            return out
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
    raise UnreadableDump(f"{path}: could not write the copy of this kdump file that drgn needs")
