"""Opening a kernel for inspection with drgn: the running kernel, a running lab VM, or a crash dump.

Three entry points return a ``drgn.Program`` with the kernel's debug info loaded and checked:

* :func:`open_live` reads the running kernel through ``/proc/kcore`` (root only);
* :func:`open_vm` reads a running QEMU guest from the host without stopping it: drgn's QMP transport first
  (needs ``-device vmcoreinfo`` and ``CONFIG_FW_CFG_SYSFS`` in the guest), else the guest's RAM file
  (``memory-backend-file``) with the VMCOREINFO found by scanning guest RAM;
* :func:`open_vmcore` reads a dump: ELF (QEMU ``dump-guest-memory``), kdump-compressed or its flattened form.

Before anything is loaded the vmlinux's GNU build id is compared with the ``BUILD-ID`` (and the release with the
``OSRELEASE``) in the kernel's VMCOREINFO; dumps are checked against their own headers for truncation; and, unless
``require=()``, the KHO and LUO globals are looked up so that a kernel built without them fails here, by name.
How a program was opened is kept in ``prog.cache`` (see :func:`program_info`).

QEMU's QMP socket serves one client at a time. While a program opened by :func:`open_vm` over QMP is alive it
holds the socket; drop every reference to it (and to its objects) before anyone else needs QMP.
"""

from __future__ import annotations

import contextlib
import gc
import json
import mmap
import os
import socket
import struct
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import drgn
import numpy as np

from workbench.inspect.errors import (
    DebugInfoNotFound,
    LiveKernelUnavailable,
    MissingKernelSupport,
    NotRoot,
    QmpBusy,
    TruncatedDump,
    UnreadableDump,
    VmlinuxMismatch,
    VmUnreachable,
)

__all__ = [
    "open_live",
    "open_vm",
    "open_vmcore",
    "program_info",
    "vmcoreinfo",
    "parse_vmcoreinfo",
    "elf_build_id",
    "vmlinux_release",
    "find_vmlinux",
    "check_dump",
    "check_live_update_support",
    "REQUIREMENTS",
]

KCORE = Path("/proc/kcore")
_CACHE_KEY = "workbench.inspect.source"

#: What each kernel feature must provide (global symbols), and the config option that builds it.
REQUIREMENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "kho": ("CONFIG_KEXEC_HANDOVER", ("kho_out", "kho_in", "kho_scratch", "kho_scratch_cnt")),
    "luo": ("CONFIG_LIVEUPDATE", ("luo_global", "luo_session_global", "luo_file_handler_list")),
    "memfd": ("CONFIG_LIVEUPDATE_MEMFD", ("memfd_luo_handler",)),
}


# -- facts about kernels and files --------------------------------------------------------------------------------
def parse_vmcoreinfo(text: str | bytes) -> dict[str, str]:
    """The ``KEY=value`` lines of a VMCOREINFO blob as a dict (``SYMBOL(x)`` keys kept as written)."""
    if isinstance(text, bytes):
        text = text.split(b"\0", 1)[0].decode("utf-8", "replace")
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def vmcoreinfo(prog: drgn.Program) -> dict[str, str]:
    """The kernel's VMCOREINFO (``OSRELEASE``, ``BUILD-ID``, ``KERNELOFFSET``, ...) as drgn got it.

    :param prog: a Linux kernel program
    """
    try:
        raw = prog["VMCOREINFO"]
    except (KeyError, LookupError):
        return {}
    return parse_vmcoreinfo(raw.string_())


def elf_build_id(path: str | os.PathLike[str]) -> str | None:
    """The GNU build id (hex) of an ELF file, from its ``SHT_NOTE`` sections or ``PT_NOTE`` segments; ``None``
    when it has none. Raises ``ValueError`` for a file that is not 64- or 32-bit ELF."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 52 or ident[:4] != b"\x7fELF":
            raise ValueError(f"{path} is not an ELF file")
        is64 = ident[4] == 2
        bo = "<" if ident[5] == 1 else ">"
        if is64:
            phoff, shoff = struct.unpack_from(bo + "QQ", ident, 32)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(bo + "HHHH", ident, 54)
        else:
            phoff, shoff = struct.unpack_from(bo + "II", ident, 28)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(bo + "HHHH", ident, 42)
        regions: list[tuple[int, int]] = []
        if shoff and shnum:
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            for i in range(len(table) // shentsize):
                if is64:
                    _name, sh_type, _flags, _addr, offset, size = struct.unpack_from(
                        bo + "IIQQQQ", table, i * shentsize
                    )
                else:
                    _name, sh_type, _flags, _addr, offset, size = struct.unpack_from(
                        bo + "IIIIII", table, i * shentsize
                    )
                if sh_type == 7:
                    regions.append((offset, size))
        if not regions and phoff and phnum:
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(len(table) // phentsize):
                if is64:
                    p_type, _flags, offset, _v, _p, filesz = struct.unpack_from(bo + "IIQQQQ", table, i * phentsize)
                else:
                    p_type, offset, _v, _p, filesz = struct.unpack_from(bo + "IIIII", table, i * phentsize)
                if p_type == 4:
                    regions.append((offset, filesz))
        for offset, size in regions:
            f.seek(offset)
            data = f.read(min(size, 1 << 20))
            pos = 0
            while pos + 12 <= len(data):
                namesz, descsz, ntype = struct.unpack_from(bo + "III", data, pos)
                name_end = pos + 12 + ((namesz + 3) & ~3)
                desc = data[name_end : name_end + descsz]
                if ntype == 3 and data[pos + 12 : pos + 12 + namesz].rstrip(b"\0") == b"GNU":
                    return desc.hex()
                pos = name_end + ((descsz + 3) & ~3)
    return None


def vmlinux_release(path: str | os.PathLike[str]) -> str | None:
    """The release in a vmlinux's ``linux_banner`` ("Linux version <release> (...)"), or ``None``."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = mm.find(b"Linux version ")
        while pos >= 0:
            tail = mm[pos + 14 : pos + 14 + 80]
            release = tail.split(b" ", 1)[0]
            if release and b"%" not in release and b"(" in tail:
                return release.decode("ascii", "replace")
            pos = mm.find(b"Linux version ", pos + 14)
    return None


def _standard_vmlinux_paths(release: str | None, build_id: str | None) -> list[Path]:
    paths: list[Path] = []
    if build_id and len(build_id) > 2:
        paths.append(Path(f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"))
    if release:
        paths += [
            Path(f"/usr/lib/debug/boot/vmlinux-{release}"),
            Path(f"/usr/lib/debug/lib/modules/{release}/vmlinux"),
            Path(f"/usr/lib/debug/vmlinux-{release}"),
            Path(f"/boot/vmlinux-{release}"),
            Path(f"/lib/modules/{release}/build/vmlinux"),
            Path(f"/lib/modules/{release}/vmlinux"),
        ]
    with contextlib.suppress(Exception):
        from workbench.lab.kernel import cache_root

        kernels = cache_root() / "kernels"
        if kernels.is_dir():
            paths += sorted(kernels.glob("*/vmlinux"))
    return paths


def find_vmlinux(build_id: str | None, release: str | None = None, extra: Iterable[Path] = ()) -> Path | None:
    """The first vmlinux whose build id is ``build_id``: ``extra`` paths, the standard debug-info locations for
    ``release`` (``/usr/lib/debug/...``, ``/boot``, ``/lib/modules/<release>``) and the lab kernel cache.

    Without a build id to compare, the first existing file of the standard locations for ``release`` is taken.
    """
    for path in [*extra, *_standard_vmlinux_paths(release, build_id)]:
        if not path.is_file():
            continue
        if build_id is None:
            if release and release in str(path):
                return path
            continue
        with contextlib.suppress(OSError, ValueError):
            if elf_build_id(path) == build_id:
                return path
    return None


# -- dumps -----------------------------------------------------------------------------------------------------
def _elf_expected_size(mm: mmap.mmap, path: Path) -> int:
    ident = mm[:64]
    if len(ident) < 64:
        raise TruncatedDump(f"{path}: the ELF header is cut off ({len(mm)} bytes)", path, 64, len(mm))
    is64 = ident[4] == 2
    bo = "<" if ident[5] == 1 else ">"
    if is64:
        phoff = struct.unpack_from(bo + "Q", ident, 32)[0]
        phentsize, phnum = struct.unpack_from(bo + "HH", ident, 54)
    else:
        phoff = struct.unpack_from(bo + "I", ident, 28)[0]
        phentsize, phnum = struct.unpack_from(bo + "HH", ident, 42)
    if phnum == 0xFFFF:  # PN_XNUM: the count is in section header 0
        shoff = struct.unpack_from(bo + ("Q" if is64 else "I"), ident, 40 if is64 else 32)[0]
        if shoff + 64 > len(mm):
            raise TruncatedDump(f"{path}: section header 0 is cut off", path, shoff + 64, len(mm))
        phnum = struct.unpack_from(bo + "I", mm, shoff + (44 if is64 else 28))[0]
    end = phoff + phnum * phentsize
    if end > len(mm):
        raise TruncatedDump(f"{path}: the program header table is cut off", path, end, len(mm))
    for i in range(phnum):
        if is64:
            _t, _fl, offset, _v, _p, filesz = struct.unpack_from(bo + "IIQQQQ", mm, phoff + i * phentsize)
        else:
            _t, offset, _v, _p, filesz = struct.unpack_from(bo + "IIIII", mm, phoff + i * phentsize)
        end = max(end, offset + filesz)
    return end


def _kdump_expected_size(mm: mmap.mmap, path: Path) -> int:
    size = len(mm)
    if size < 448:
        raise TruncatedDump(f"{path}: the kdump header is cut off", path, 448, size)
    header_version = struct.unpack_from("<I", mm, 8)[0]
    block_size, sub_hdr_size, bitmap_blocks, max_mapnr = struct.unpack_from("<IIII", mm, 428)
    if not block_size or block_size & (block_size - 1):
        raise UnreadableDump(f"{path}: kdump block size {block_size} is not a power of two")
    sub = block_size
    if header_version >= 6 and size >= sub + 104:
        max_mapnr = struct.unpack_from("<Q", mm, sub + 96)[0] or max_mapnr
    bitmap_off = (1 + sub_hdr_size) * block_size
    bitmap_len = bitmap_blocks * block_size
    descs_off = bitmap_off + bitmap_len
    if descs_off > size:
        raise TruncatedDump(f"{path}: the kdump bitmaps end at {descs_off:#x}", path, descs_off, size)
    second = np.frombuffer(mm, dtype=np.uint8, count=bitmap_len // 2, offset=bitmap_off + bitmap_len // 2)
    dumped = int(np.unpackbits(second).sum())
    descs_end = descs_off + 24 * dumped
    if descs_end > size:
        raise TruncatedDump(f"{path}: {dumped} page descriptors need bytes up to {descs_end:#x}", path, descs_end, size)
    descs = np.frombuffer(
        mm,
        dtype=np.dtype([("offset", "<i8"), ("size", "<u4"), ("flags", "<u4"), ("pf", "<u8")]),
        count=dumped,
        offset=descs_off,
    )
    end = descs_end
    if dumped:
        end = max(end, int((descs["offset"] + descs["size"].astype(np.int64)).max()))
    del second, descs
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


def _kdump_vmcoreinfo(f) -> dict[str, str]:
    f.seek(0)
    header = f.read(448)
    block_size = struct.unpack_from("<I", header, 428)[0]
    f.seek(block_size)
    sub = f.read(64)
    if len(sub) < 48:
        return {}
    offset, size = struct.unpack_from("<QQ", sub, 32)
    if not offset or not size or size > 1 << 20:
        return {}
    f.seek(offset)
    return parse_vmcoreinfo(f.read(size))


def _kdump_for_drgn(path: Path, fmt: str) -> Path:
    """A kdump file drgn's libkdumpfile opens: ``path`` itself when it is plain kdump with a sane utsname, else a
    copy (cached beside it, or in the temp folder) reassembled from the flattened stream and with the utsname
    QEMU leaves empty filled in from the VMCOREINFO (``Linux``, the release, ``#1``)."""
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
                    import shutil

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


# -- debug info ------------------------------------------------------------------------------------------------
def _describe(prog: drgn.Program) -> str:
    info = prog.cache.get(_CACHE_KEY, {})
    return info.get("description", "the kernel")


def _attach_debug_info(prog: drgn.Program, vmlinux: str | os.PathLike[str] | None, what: str) -> Path:
    info = vmcoreinfo(prog)
    want_id = info.get("BUILD-ID") or None
    release = info.get("OSRELEASE") or None
    if vmlinux is None:
        found = find_vmlinux(want_id, release)
        if found is None:
            raise DebugInfoNotFound(
                f"no vmlinux with debug info found for {what} (release {release or 'unknown'}, build id "
                f"{want_id or 'unknown'}): pass --vmlinux (for the lab kernel: build_kernel().vmlinux, "
                "~/.cache/live-update-workbench/kernels/*/vmlinux) or install the kernel's debug package",
                None,
                want_id,
            )
        path = found
    else:
        path = Path(vmlinux)
        if not path.is_file():
            raise DebugInfoNotFound(f"vmlinux {path} does not exist", path, want_id)
    try:
        have_id = elf_build_id(path)
    except ValueError as exc:
        raise DebugInfoNotFound(f"{path} is not a vmlinux (not an ELF file): {exc}", path, want_id) from None
    if want_id and have_id and want_id != have_id:
        raise VmlinuxMismatch(
            f"{path} does not match {what}: its build id is {have_id} but the kernel's VMCOREINFO says "
            f"{want_id} (release {release or 'unknown'}). Use the vmlinux of that exact build (for a lab kernel: "
            "the one in ~/.cache/live-update-workbench/kernels/ whose build id matches, or omit --vmlinux to "
            "search for it)",
            path,
            want_id,
            have_id,
            release,
        )
    if not (want_id and have_id) and release:
        # no build ids to compare (an old kernel, a vmlinux without notes): compare the releases instead
        have_release = vmlinux_release(path)
        if have_release is not None and have_release != release:
            raise VmlinuxMismatch(
                f"{path} is release {have_release} but {what} is {release}: use the vmlinux of {release}",
                path,
                want_id,
                have_id,
                release,
            )
    prog.load_debug_info([str(path)])
    try:
        module = prog.main_module()
        status = module.debug_file_status
    except LookupError:
        status = None
    if status != drgn.ModuleFileStatus.HAVE:
        raise DebugInfoNotFound(
            f"{path} matches {what} but drgn found no DWARF debug info in it (stripped?): build the kernel with "
            "CONFIG_DEBUG_INFO_DWARF5 (or DWARF4) and use the unstripped vmlinux from the build tree",
            path,
            want_id,
        )
    return path


def check_live_update_support(prog: drgn.Program, require: Sequence[str] = ("kho", "luo")) -> None:
    """Raises :class:`MissingKernelSupport` unless the kernel's debug info has the globals of every feature in
    ``require`` (keys of :data:`REQUIREMENTS`: ``kho``, ``luo``, ``memfd``).

    :param prog: a Linux kernel program with debug info
    """
    options, missing = [], []
    for feature in require:
        option, symbols = REQUIREMENTS[feature]
        absent = [s for s in symbols if not _has_object(prog, s)]
        if absent:
            options.append(option)
            missing += absent
    if options:
        raise MissingKernelSupport(
            f"{_describe(prog)} was built without {' and '.join(options)} (its debug info has no "
            f"{', '.join(missing)}): inspect a kernel built with them, e.g. the lab kernel "
            "(`workbench kernel build`), or check that --vmlinux is that kernel's",
            options,
            missing,
        )


def _has_object(prog: drgn.Program, name: str) -> bool:
    try:
        prog.object(name)
    except LookupError:
        return False
    return True


def _finish(
    prog: drgn.Program, vmlinux: str | os.PathLike[str] | None, what: str, source: dict[str, Any], require
) -> drgn.Program:
    source["description"] = what
    prog.cache[_CACHE_KEY] = source
    source["vmlinux"] = str(_attach_debug_info(prog, vmlinux, what))
    info = vmcoreinfo(prog)
    source["release"] = info.get("OSRELEASE")
    source["build_id"] = info.get("BUILD-ID")
    if require:
        check_live_update_support(prog, require)
    return prog


def program_info(prog: drgn.Program) -> dict[str, Any]:
    """How ``prog`` was opened: ``target`` (``kcore``, ``qmp``, ``ram-file``, ``vmcore``), ``path``, ``live``,
    ``vmlinux``, ``release``, ``build_id`` and ``notes`` (e.g. why the QMP transport was not used)."""
    return dict(prog.cache.get(_CACHE_KEY, {}))


# -- the running kernel ----------------------------------------------------------------------------------------
def open_live(vmlinux: str | os.PathLike[str] | None = None, *, require: Sequence[str] = ("kho", "luo")):
    """The running kernel, through ``/proc/kcore``.

    :param vmlinux: its vmlinux; by default searched by build id in the standard debug-info locations and the
        lab kernel cache
    :param require: features whose globals must exist (:data:`REQUIREMENTS`); ``()`` to skip the check
    :raises NotRoot: not running as root
    :raises LiveKernelUnavailable: no ``/proc/kcore`` (``CONFIG_PROC_KCORE`` off, or a container hiding it)
    """
    if os.geteuid() != 0:
        raise NotRoot(
            f"reading the running kernel through {KCORE} needs root (uid {os.geteuid()} here): run as root, e.g. "
            "`sudo workbench inspect --live`"
        )
    if not KCORE.exists():
        raise LiveKernelUnavailable(
            f"{KCORE} does not exist on this system: the running kernel was built without CONFIG_PROC_KCORE or "
            "/proc is restricted (container). Inspect a VM (--qmp) or a dump (--vmcore) instead"
        )
    prog = drgn.Program()
    try:
        prog.set_kernel()
    except PermissionError as exc:
        raise NotRoot(f"{KCORE}: {exc}: run as root with CAP_SYS_RAWIO") from exc
    except (OSError, ValueError) as exc:
        raise LiveKernelUnavailable(f"cannot read the running kernel through {KCORE}: {exc}") from exc
    return _finish(prog, vmlinux, "the running kernel", {"target": "kcore", "path": str(KCORE), "live": True}, require)


# -- a QEMU guest ----------------------------------------------------------------------------------------------
def _qmp_connect(path: Path, timeout: float) -> tuple[socket.socket, bytes]:
    if not path.exists():
        raise VmUnreachable(f"QMP socket {path} does not exist: is the VM running (vm.qmp_sock)?")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise VmUnreachable(f"cannot connect to QMP socket {path}: {exc} (has QEMU exited?)") from exc
    buf = b""
    try:
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise VmUnreachable(f"QEMU closed QMP socket {path} without a greeting")
            buf += chunk
    except TimeoutError:
        sock.close()
        raise QmpBusy(
            f"QMP socket {path} accepted the connection but sent no greeting within {timeout:.0f} s: another client "
            "holds it (QEMU serves one at a time). Close that client first, e.g. vm.release_qmp() in an on_pause "
            "callback, and drop other drgn programs opened on this VM"
        ) from None
    return sock, buf


class _Qmp:
    """A throwaway QMP session (the lab's client lives in workbench.lab.qemu; this one needs its own timeouts)."""

    def __init__(self, path: Path, timeout: float = 5.0):
        self.sock, buf = _qmp_connect(path, timeout)
        self.buf = buf.split(b"\n", 1)[1]
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise VmUnreachable("QEMU closed the QMP connection")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            reply = json.loads(line)
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise VmUnreachable(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")

    def hmp(self, command: str) -> str:
        return str(self.execute("human-monitor-command", **{"command-line": command}))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> _Qmp:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _qmp_ram_file(qmp: _Qmp) -> tuple[Path, int] | None:
    """The ``mem-path`` and size of the guest's file-backed RAM, if it has one."""
    for obj in qmp.execute("qom-list", path="/objects"):
        if obj.get("type") != "child<memory-backend-file>":
            continue
        where = f"/objects/{obj['name']}"
        mem_path = qmp.execute("qom-get", path=where, property="mem-path")
        size = qmp.execute("qom-get", path=where, property="size")
        return Path(mem_path), int(size)
    return None


def _vmcoreinfo_candidates(mm: mmap.mmap, limit: int = 64) -> list[str]:
    seen: dict[str, None] = {}
    pos = mm.find(b"OSRELEASE=")
    while pos >= 0 and len(seen) < limit:
        end = mm.find(b"\0", pos, pos + 4096)
        raw = mm[pos : end if end >= 0 else pos + 4096]
        with contextlib.suppress(UnicodeDecodeError):
            text = raw.decode("ascii")
            keys = parse_vmcoreinfo(text)
            if "PAGESIZE" in keys and "KERNELOFFSET" in keys and "SYMBOL(init_uts_ns)" in keys:
                seen.setdefault(text)
        pos = mm.find(b"OSRELEASE=", pos + 10)
    return list(seen)


def _physical_program(mm: mmap.mmap, ranges, text: str, is_live: bool) -> drgn.Program:
    prog = drgn.Program(
        drgn.Platform(drgn.Architecture.X86_64, drgn.PlatformFlags.IS_64_BIT | drgn.PlatformFlags.IS_LITTLE_ENDIAN)
    )
    view = memoryview(mm)
    for r in ranges:

        def read(address: int, count: int, offset: int, physical: bool, _base=r.file_offset) -> bytes:
            return bytes(view[_base + offset : _base + offset + count])

        prog.add_memory_segment(r.phys_start, r.size, read, physical=True)
    prog.set_linux_kernel_custom(text.encode(), is_live)
    prog.cache["workbench.inspect.mapping"] = (mm, view)  # keep the mapping alive with the program
    return prog


def _running_candidate(candidates: list[str], qmp: _Qmp | None, mm: mmap.mmap, ranges) -> tuple[str, str]:
    """Chooses the VMCOREINFO of the kernel that runs now: after a kexec, the previous kernel's copy (another
    KASLR offset) may still be in RAM. With QMP, the CPU's page tables decide (``gva2gpa`` of ``init_uts_ns``);
    without, the copy whose ``init_uts_ns`` is where its own ``phys_base`` puts it."""
    if len(candidates) == 1:
        return candidates[0], "one VMCOREINFO in guest RAM"
    if qmp is not None:
        for text in candidates:
            info = parse_vmcoreinfo(text)
            with contextlib.suppress(VmUnreachable, ValueError):
                reply = qmp.hmp(f"gva2gpa 0x{info['SYMBOL(init_uts_ns)']}")
                if "gpa:" in reply:
                    return text, f"{len(candidates)} VMCOREINFO copies in guest RAM; chose the one the CPU maps"
    plausible = []
    for text in candidates:
        info = parse_vmcoreinfo(text)
        with contextlib.suppress(KeyError, ValueError):
            vaddr = int(info["SYMBOL(init_uts_ns)"], 16)
            phys_base = int(info.get("NUMBER(phys_base)", "0"), 0)
            phys = vaddr - 0xFFFFFFFF80000000 + phys_base
            offset = int(info.get("OFFSET(uts_namespace.name)", "0"), 0) + 65  # new_utsname.release
            for r in ranges:
                if r.phys_start <= phys < r.phys_end:
                    at = r.file_offset + phys - r.phys_start + offset
                    if mm[at : at + 65].split(b"\0", 1)[0].decode(errors="replace") == info["OSRELEASE"]:
                        plausible.append(text)
    if plausible:
        return plausible[-1], f"{len(candidates)} VMCOREINFO copies in guest RAM, {len(plausible)} plausible"
    raise VmUnreachable(f"found {len(candidates)} VMCOREINFO copies in guest RAM and none is consistent")


def _open_ram_file(ram_file: Path, ram_size: int | None, qmp: _Qmp | None) -> tuple[drgn.Program, str]:
    from workbench.abi.physmem import q35_ram_ranges

    size = ram_size or ram_file.stat().st_size
    ranges = q35_ram_ranges(size)
    with open(ram_file, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    candidates = _vmcoreinfo_candidates(mm)
    if not candidates:
        mm.close()
        raise VmUnreachable(f"no VMCOREINFO found in guest RAM {ram_file}: has the guest kernel booted?")
    text, why = _running_candidate(candidates, qmp, mm, ranges)
    return _physical_program(mm, ranges, text, is_live=True), why


def open_vm(
    qmp_socket: str | os.PathLike[str] | Any,
    vmlinux: str | os.PathLike[str] | None = None,
    *,
    ram_file: str | os.PathLike[str] | None = None,
    method: str = "auto",
    require: Sequence[str] = ("kho", "luo"),
    timeout: float = 10.0,
) -> drgn.Program:
    """A running QEMU guest, read live from the host without stopping it.

    :param qmp_socket: QEMU's QMP unix socket, or a :class:`workbench.lab.qemu.QemuVM` (its socket is used and
        its own QMP client released first, since QEMU serves one QMP client at a time)
    :param vmlinux: the guest kernel's vmlinux (default: searched by build id, see :func:`find_vmlinux`)
    :param ram_file: the guest's RAM file (``memory-backend-file``) for the fallback; default: asked over QMP
    :param method: ``qmp`` (drgn's QMP transport), ``ram-file`` (guest RAM file + VMCOREINFO scanned in it), or
        ``auto``: QMP, then the RAM file when drgn cannot identify the kernel over QMP
    :raises VmUnreachable: no socket, QEMU gone, no usable transport; :class:`QmpBusy` when another client holds
        the socket
    """
    if hasattr(qmp_socket, "qmp_sock"):
        vm = qmp_socket
        if hasattr(vm, "release_qmp"):
            vm.release_qmp()
        qmp_socket = vm.qmp_sock
        if ram_file is None and getattr(getattr(vm, "config", None), "ram_file", None) is not None:
            ram_file = vm.config.ram_file
    path = Path(qmp_socket)
    if method not in ("auto", "qmp", "ram-file"):
        raise ValueError(f"method is auto, qmp or ram-file, not {method!r}")
    notes: list[str] = []
    if method in ("auto", "qmp"):
        probe, _ = _qmp_connect(path, timeout)
        probe.close()
        prog = drgn.Program()
        try:
            prog.set_qemu_qmp(str(path))
        except (OSError, ValueError, drgn.FaultError) as exc:
            if method == "qmp":
                raise VmUnreachable(f"drgn could not attach to QMP socket {path}: {exc}") from exc
            notes.append(f"drgn's QMP transport failed: {exc}")
        else:
            if prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
                source = {"target": "qmp", "path": str(path), "live": True, "notes": notes}
                return _finish(prog, vmlinux, f"the VM behind {path}", source, require)
            notes.append(
                "drgn's QMP transport did not identify a Linux kernel: QEMU needs -device vmcoreinfo and the guest "
                "CONFIG_FW_CFG_SYSFS"
            )
            if method == "qmp":
                raise VmUnreachable(f"{path}: {notes[-1]}")
        del prog
        gc.collect()  # drgn keeps the QMP connection until the program is freed
        time.sleep(0.1)
    qmp: _Qmp | None = None
    try:
        with contextlib.suppress(VmUnreachable):
            qmp = _Qmp(path, timeout)
        ram_size = None
        if ram_file is None and qmp is not None:
            found = _qmp_ram_file(qmp)
            if found is not None:
                ram_file, ram_size = found
        if ram_file is None:
            raise VmUnreachable(
                f"cannot read the VM behind {path}: {'; '.join(notes) or 'QMP unusable'}; and its RAM is not "
                "file-backed (start QEMU with -object memory-backend-file,share=on, e.g. CycleParams(ram_file=True))"
            )
        prog, why = _open_ram_file(Path(ram_file), ram_size, qmp)
    finally:
        if qmp is not None:
            qmp.close()
    notes.append(why)
    source = {"target": "ram-file", "path": str(ram_file), "qmp": str(path), "live": True, "notes": notes}
    return _finish(prog, vmlinux, f"the VM with RAM file {ram_file}", source, require)


# -- dumps -----------------------------------------------------------------------------------------------------
def open_vmcore(
    path: str | os.PathLike[str],
    vmlinux: str | os.PathLike[str] | None = None,
    *,
    require: Sequence[str] = ("kho", "luo"),
) -> drgn.Program:
    """A kernel crash dump: ELF (QEMU ``dump-guest-memory``, ``/proc/vmcore``), kdump-compressed, or the flattened
    makedumpfile stream QEMU writes for ``kdump-*`` formats. QEMU's kdump files (flattened, with an empty
    utsname that libkdumpfile rejects) are read through a repaired copy made once and cached beside them.

    :param path: the dump
    :param vmlinux: its kernel's vmlinux (default: searched by the dump's build id)
    :raises TruncatedDump: the file is shorter than its headers say
    :raises UnreadableDump: not a dump drgn can read
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vmcore {path} does not exist")
    fmt = check_dump(path)
    target = _kdump_for_drgn(path, fmt) if fmt in ("kdump", "flattened") else path
    prog = drgn.Program()
    try:
        prog.set_core_dump(str(target))
    except (OSError, ValueError, drgn.FaultError) as exc:
        raise UnreadableDump(f"drgn cannot read {path} as a kernel dump ({fmt}): {exc}") from exc
    notes = []
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        if fmt != "elf":
            raise UnreadableDump(f"{path} has no VMCOREINFO: drgn cannot tell which kernel it is")
        from workbench.abi.physmem import ElfVmcore

        elf = ElfVmcore(path)
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        candidates = _vmcoreinfo_candidates(mm)
        if not candidates:
            raise UnreadableDump(
                f"{path} has no VMCOREINFO note and none was found in its memory: dump with QEMU's "
                "-device vmcoreinfo and a guest kernel with CONFIG_FW_CFG_SYSFS"
            )
        text, why = _running_candidate(candidates, None, mm, elf.ranges)
        prog = _physical_program(mm, elf.ranges, text, is_live=False)
        elf.close()
        notes.append(f"no VMCOREINFO note in the dump; {why}")
    source = {"target": "vmcore", "path": str(path), "format": fmt, "live": False, "notes": notes}
    if target != path:
        source["reassembled"] = str(target)
    return _finish(prog, vmlinux, f"the dump {path}", source, require)
