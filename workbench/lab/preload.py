"""memfd from birth for an unmodified program: the ``memfd_birth`` LD_PRELOAD library (``preload/memfd_birth.c``),
built with the system C compiler on first use, and what a host or agent needs to run a program under it and find
its birth memfds.

The library backs a process's large private anonymous memory with memfds from the moment it is mapped: a
``MAP_PRIVATE | MAP_ANONYMOUS`` mmap of at least the threshold (``WORKBENCH_MEMFD_BIRTH_MIN`` bytes, default
1 MiB) becomes ``MAP_SHARED`` of a fresh memfd named ``wb-birth``. What reaches it:

- allocators in a shared library of their own (jemalloc, as Debian's redis-server uses, tcmalloc, mimalloc) call
  ``mmap`` through the PLT: every extent and arena they map is a birth memfd;
- glibc's malloc maps its large blocks and its thread arenas with its internal ``__mmap`` and grows the main arena
  with ``brk``: no preload of ``mmap`` reaches them. When the next ``malloc`` is glibc's, the library therefore
  serves blocks of at least the threshold itself (``malloc``, ``calloc``, ``realloc``, ``reallocarray``), each in a
  birth memfd; small blocks, glibc's arenas and aligned allocations (``posix_memalign`` and kin) stay anonymous.
  ``WORKBENCH_MEMFD_BIRTH_MALLOC=on|off`` forces the choice.

Semantics that differ from private anonymous memory, and what the library does (tested in
``tests/lab/test_preload.py``):

- **fork**: a private mapping is copy-on-write, a shared one would be shared. ``WORKBENCH_MEMFD_BIRTH_FORK=copy``
  (the default): the child copies every birth mapping into fresh memfds of its own, at the same addresses, before
  ``fork`` returns in either process (the forking thread of the parent waits for it: fork costs a copy of the
  data, not of the page tables; other threads of the parent that write meanwhile can tear the child's snapshot).
  ``refuse``: ``fork`` fails with ``ENOMEM`` and says why while birth mappings exist; ``share``: the child shares
  them. ``vfork``/``posix_spawn`` share the memory until ``exec`` anyway; a raw ``clone`` is not intercepted.
- **munmap** of part of a mapping punches that range out of the memfd (its memory is freed, as for anonymous
  memory); a memfd nothing maps any more is closed.
- **mremap**: shrinking punches the tail; growing extends the memfd, or, for a mapping a partial munmap split off
  the middle of its memfd, copies into a fresh memfd (``MREMAP_MAYMOVE``) or fails with ``ENOMEM`` (without).
  ``old_size`` 0 (a second view of the same pages) fails with ``EINVAL``, as for private anonymous memory;
  ``MREMAP_DONTUNMAP`` (which private anonymous memory allows) is not supported: ``EINVAL``.
- **madvise** ``MADV_DONTNEED`` / ``MADV_FREE`` punch the range out of the memfd: the next read sees zeros, as
  for anonymous memory (jemalloc relies on it); a shared mapping would otherwise keep the old data.
  ``MADV_WIPEONFORK`` is refused by the kernel for shared mappings (``EINVAL``).

The registry is the kernel's own, so it is never stale nor half-written: each birth mapping is a
``/memfd:wb-birth`` line of ``/proc/PID/maps`` (address, offset in its memfd, inode) and each memfd a descriptor of
``/proc/PID/fd``: :func:`birth_memfds` reads both, and :func:`take_memfd` duplicates one into the caller with
``pidfd_getfd`` (same open file, so LUO can preserve it as it is at checkpoint). With
``WORKBENCH_MEMFD_BIRTH_DIR`` set, each process under the library announces itself in ``DIR/PID.json`` (threshold,
fork policy, malloc mode; written whole, by rename): :func:`announcements`."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from workbench.lab.errors import LabError
from workbench.lab.kernel_source import cache_lock, cache_root
from workbench.lab.toolchain import tool_version

__all__ = [
    "SOURCE",
    "MEMFD_NAME",
    "FORK_POLICIES",
    "PreloadError",
    "PreloadLibrary",
    "BirthMapping",
    "BirthMemfd",
    "compiler_version",
    "library_key",
    "build_preload",
    "preload_environment",
    "birth_memfds",
    "announcements",
    "take_memfd",
]

#: the library's C source
SOURCE = Path(__file__).resolve().parent / "preload" / "memfd_birth.c"
#: the name every birth memfd is created with (``/memfd:wb-birth`` in ``/proc/PID/maps``)
MEMFD_NAME = "wb-birth"
#: the values of ``WORKBENCH_MEMFD_BIRTH_FORK``
FORK_POLICIES = ("copy", "refuse", "share")
MALLOC_MODES = ("auto", "on", "off")
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror")
LIBS = ("-ldl", "-pthread")
PAGE = 4096
_MAPS_LINE = re.compile(
    r"^(?P<start>[0-9a-f]+)-(?P<end>[0-9a-f]+) (?P<perms>\S{4}) (?P<offset>[0-9a-f]+) \S+ (?P<inode>\d+)\s+"
    r"(?P<path>.*)$"
)
_SYS_PIDFD_GETFD = 438


class PreloadError(LabError):
    """The memfd-from-birth library cannot be built, configured or used; the message says what to do."""


@dataclass(frozen=True)
class PreloadLibrary:
    """The built library: ``path`` of the shared object, its cache ``key`` and the ``compiler`` (version line) that
    built it."""

    path: Path
    key: str
    compiler: str


@dataclass(frozen=True)
class BirthMapping:
    """One birth mapping of a process: ``start``/``end`` addresses, its ``offset`` in the memfd, ``perms`` as in
    ``/proc/PID/maps`` (e.g. ``rw-s``)."""

    start: int
    end: int
    offset: int
    perms: str

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class BirthMemfd:
    """One birth memfd of a process: its descriptor ``fd`` there, ``inode``, file ``size``, the ``resident`` bytes it
    holds (blocks allocated) and the ``mappings`` of it (none while only the descriptor holds it)."""

    fd: int
    inode: int
    size: int
    resident: int
    mappings: tuple[BirthMapping, ...]


def compiler_version(cc: str = "gcc") -> str:
    """The first line of ``cc --version``.

    :param cc: the C compiler's name on ``PATH``, or its path
    :raises PreloadError: it is missing or does not run"""
    return tool_version(cc, what="C compiler", purpose="the memfd-from-birth library", error=PreloadError)


def library_key(compiler: str, source: Path = SOURCE) -> str:
    """12 hex digits of a hash of the library's ``source`` bytes, the ``compiler``'s version line and the flags."""
    digest = hashlib.sha256(source.read_bytes())
    digest.update(f"\0{compiler}\0{' '.join(CFLAGS + LIBS)}".encode())
    return digest.hexdigest()[:12]


def build_preload(cc: str = "gcc", *, cache: Path | None = None) -> PreloadLibrary:
    """The memfd-from-birth library, compiled from :data:`SOURCE` with ``cc`` on first use and cached as
    ``<cache>/preload/memfd_birth-<key>.so``; later calls return it at once. The compiler writes into a scratch
    file beside it that becomes the cache entry by one rename: a failed or interrupted build leaves nothing.

    :param cc: the C compiler, on ``PATH`` or a path
    :param cache: the cache folder (default: the workbench's, ``$XDG_CACHE_HOME/live-update-workbench``)
    :raises PreloadError: no compiler, or the source does not compile (the message quotes the compiler)"""
    compiler = compiler_version(cc)
    key = library_key(compiler)
    folder = (cache or cache_root()) / "preload"
    path = folder / f"memfd_birth-{key}.so"
    if path.is_file():
        return PreloadLibrary(path, key, compiler)
    with cache_lock(folder / ".lock"):
        if not path.is_file():
            fd, scratch = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=folder)
            os.close(fd)
            try:
                out = subprocess.run(
                    [cc, *CFLAGS, "-o", scratch, str(SOURCE), *LIBS],
                    capture_output=True,
                    text=True,
                    env=os.environ | {"LC_ALL": "C"},
                )
                if out.returncode:
                    raise PreloadError(
                        f"compiling {SOURCE} with {cc} failed (exit {out.returncode}):\n"
                        f"{(out.stderr or out.stdout).strip()[-4000:]}\nnothing was cached; fix the source or "
                        "the toolchain and run again"
                    )
                os.chmod(scratch, 0o755)
                os.rename(scratch, path)
            finally:
                if os.path.exists(scratch):
                    os.unlink(scratch)
    return PreloadLibrary(path, key, compiler)


def preload_environment(
    library: PreloadLibrary,
    *,
    threshold: int | None = None,
    fork: str = "copy",
    malloc: str = "auto",
    registry_dir: Path | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment that runs a program under ``library``: ``base`` (default: this process's) with the library
    put first in ``LD_PRELOAD`` and its settings.

    :param library: from :func:`build_preload`
    :param threshold: the smallest mapping or malloc block, in bytes, given a birth memfd (default: the library's,
        1 MiB); at least a page
    :param fork: one of :data:`FORK_POLICIES` (see the module's description)
    :param malloc: ``auto`` (serve large blocks when the next malloc is glibc's), ``on`` or ``off``
    :param registry_dir: where processes announce themselves (``PID.json``); None: they do not
    :raises PreloadError: a setting out of range"""
    if fork not in FORK_POLICIES:
        raise PreloadError(f"fork policy {fork!r} is not one of {', '.join(FORK_POLICIES)}")
    if malloc not in MALLOC_MODES:
        raise PreloadError(f"malloc mode {malloc!r} is not one of {', '.join(MALLOC_MODES)}")
    if threshold is not None and threshold < PAGE:
        raise PreloadError(f"the threshold must be at least a page ({PAGE} bytes), not {threshold}")
    env = dict(os.environ if base is None else base)
    others = [p for p in env.get("LD_PRELOAD", "").split() if p and p != str(library.path)]
    env["LD_PRELOAD"] = " ".join([str(library.path), *others])
    env["WORKBENCH_MEMFD_BIRTH_FORK"] = fork
    env["WORKBENCH_MEMFD_BIRTH_MALLOC"] = malloc
    if threshold is not None:
        env["WORKBENCH_MEMFD_BIRTH_MIN"] = str(threshold)
    if registry_dir is not None:
        env["WORKBENCH_MEMFD_BIRTH_DIR"] = str(registry_dir)
    return env


def birth_memfds(pid: int) -> list[BirthMemfd]:
    """The birth memfds of the process ``pid`` with their mappings, from ``/proc/PID/maps`` and ``/proc/PID/fd``
    (descriptors first; a birth mapping whose memfd has no descriptor, which the library never leaves, is
    ignored).

    :raises PreloadError: the process is gone or its ``/proc`` entries cannot be read (another user's process)"""
    proc = Path(f"/proc/{pid}")
    mappings: dict[int, list[BirthMapping]] = {}
    found: dict[int, BirthMemfd] = {}
    try:
        for line in (proc / "maps").read_text().splitlines():
            match = _MAPS_LINE.match(line)
            if match and match["path"].startswith(f"/memfd:{MEMFD_NAME}"):
                mappings.setdefault(int(match["inode"]), []).append(
                    BirthMapping(
                        int(match["start"], 16), int(match["end"], 16), int(match["offset"], 16), match["perms"]
                    )
                )
        for entry in sorted((proc / "fd").iterdir(), key=lambda p: int(p.name)):
            try:
                if not os.readlink(entry).startswith(f"/memfd:{MEMFD_NAME}"):
                    continue
                st = os.stat(entry)
            except FileNotFoundError:
                continue  # closed while we looked
            if st.st_ino not in found:
                found[st.st_ino] = BirthMemfd(
                    int(entry.name), st.st_ino, st.st_size, st.st_blocks * 512, tuple(mappings.get(st.st_ino, ()))
                )
    except (FileNotFoundError, ProcessLookupError):
        raise PreloadError(f"no process {pid}: it has exited") from None
    except PermissionError as exc:
        raise PreloadError(f"cannot read {exc.filename}: run as the process's user or as root") from None
    return list(found.values())


def announcements(registry_dir: Path) -> dict[int, dict[str, object]]:
    """The processes that announced themselves in ``registry_dir`` (pid → what the library wrote: ``threshold``,
    ``fork``, ``malloc``, ``memfd_name``), whether or not they still run; unreadable files are skipped."""
    found: dict[int, dict[str, object]] = {}
    for path in sorted(Path(registry_dir).glob("[0-9]*.json")):
        try:
            found[int(path.stem)] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def take_memfd(pid: int, fd: int) -> int:
    """A descriptor in this process for the descriptor ``fd`` of the process ``pid`` (``pidfd_getfd``: the same
    open file, so what LUO preserves is the memory the program uses). The caller closes it.

    :raises PreloadError: the process is gone, or the kernel refuses (ptrace access to it is needed)"""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise PreloadError(f"no process {pid}: it has exited") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        taken = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if taken < 0:
            errno = ctypes.get_errno()
            raise PreloadError(
                f"pidfd_getfd of descriptor {fd} of process {pid} failed: {os.strerror(errno)}; it needs ptrace "
                "access to the process (same user and kernel.yama.ptrace_scope 0, or root)"
            )
        return taken
    finally:
        os.close(pidfd)
