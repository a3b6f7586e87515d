"""The ``sessions`` workload: memfds of several sizes in one LUO session and many small files in a second one,
preserved, kexec'd, retrieved and verified page by page.

The cycle's session (``<session>``) holds one memfd per entry of ``sizes``; ``<session>-small`` holds
``small_files`` memfds of ``small_file_size`` bytes (no second session when there are none). Every file has an
index among all the cycle's memfds (the ``sizes`` first, then the small files), which is its fill pattern's
number, its faults' ``memfd`` and, plus 1000, its token: every page of the cycle holds a pattern of its own.

prepare: create, fill and fingerprint every file; preserve: create both sessions and preserve each file with its
token, timed one by one; load; kexec. restore (next kernel): retrieve both sessions and every token, timed one by
one; verify: re-fingerprint and compare, file by file; finish both sessions.

The files differ in page count, so ``fingerprints-*.npy`` and ``frames-*.npy`` cannot hold one row per file as the
memfd workload's do: each holds one flat array, every file's pages in the order of the result's ``memfds`` rows
(``-before`` files by the preserved sizes, ``-after`` files by the sizes that came back); :func:`split_pages`
cuts one into files.

:class:`SessionsWorkload` is the host side, :class:`SessionsAgent` runs on the target."""

from __future__ import annotations

import mmap
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.lab.agent_core import (
    PAGE,
    differing_pages,
    fill_pattern,
    fingerprint,
    load_hasher,
    map_retrieved,
    page_frames,
)
from workbench.lab.errors import InvalidCycle
from workbench.lab.faults import Faults
from workbench.lab.liveupdate import SESSION_NAME_MAX, LiveUpdate, Session, check_session_name
from workbench.lab.protocol import FINGERPRINTS_AFTER, FINGERPRINTS_BEFORE, FRAMES_AFTER, FRAMES_BEFORE
from workbench.lab.workload import Workload, register
from workbench.lab.workloads.memfd import MemfdAgent

__all__ = [
    "DEFAULT_SIZES",
    "FIRST_TOKEN",
    "MAX_FILES",
    "SMALL_SUFFIX",
    "PreservedFile",
    "SessionsAgent",
    "SessionsWorkload",
    "file_layout",
    "session_names",
    "session_table",
    "small_session_name",
    "split_pages",
]

#: the memfds of the cycle's own session by default: one of 256 MiB, one of 16 MiB, one that is not a whole MiB,
#: one of a single page
DEFAULT_SIZES = (256 << 20, 16 << 20, (1 << 20) + PAGE, PAGE)
#: the token of the cycle's first file; the others follow it in file order
FIRST_TOKEN = 1000
#: the most files a cycle may have: the agent holds every one open and mapped at once
MAX_FILES = 10_000
#: what names the small files' session after the cycle's own
SMALL_SUFFIX = "-small"
#: besides its bytes, each file costs a few system calls and a hash call: the host's timeouts count it as this
PER_FILE_TIMEOUT_BYTES = 1 << 20


@dataclass(frozen=True)
class PreservedFile:
    """One memfd of the cycle: ``index`` among all of them (the fill pattern's number and the faults' ``memfd``),
    its ``token``, its ``size`` in bytes and whether it is one of the ``small`` files (in the second session)."""

    index: int
    token: int
    size: int
    small: bool

    @property
    def pages(self) -> int:
        return self.size // PAGE

    def session(self, session: str) -> str:
        """The name of the LUO session that holds this file, in a cycle whose session is ``session``."""
        return small_session_name(session) if self.small else session


def small_session_name(session: str) -> str:
    """The small files' session of a cycle whose session is ``session``."""
    return session + SMALL_SUFFIX


def session_names(session: str, small_files: int) -> list[str]:
    """The LUO sessions a cycle creates: ``session``, then its small files' session unless ``small_files`` is 0.

    :param session: the cycle's session name (``CycleParams.session``)
    :param small_files: how many small files the cycle preserves
    :raises InvalidCycle: a name is longer than LUO allows (or empty, or holds a NUL byte)"""
    names = [session, small_session_name(session)] if small_files else [session]
    for name in names:
        try:
            check_session_name(name)
        except ValueError as exc:
            hint = ""
            if name != session:
                hint = (
                    f": the small files' session adds {SMALL_SUFFIX!r} to the cycle's, so give a session name of at "
                    f"most {SESSION_NAME_MAX - len(SMALL_SUFFIX.encode())} bytes, or no small files"
                )
            raise InvalidCycle(f"{exc}{hint}") from None
    return names


def file_layout(sizes: list[int], small_files: int, small_file_size: int) -> list[PreservedFile]:
    """Every file of the cycle in order: one per entry of ``sizes`` (bytes), then ``small_files`` files of
    ``small_file_size`` bytes; tokens count up from :data:`FIRST_TOKEN`."""
    sized = [(size, False) for size in sizes] + [(small_file_size, True)] * small_files
    return [PreservedFile(i, FIRST_TOKEN + i, size, small) for i, (size, small) in enumerate(sized)]


def split_pages(flat: np.ndarray, pages: list[int]) -> list[np.ndarray]:
    """One of this workload's ``.npy`` arrays cut into its files (see the module's description).

    :param flat: every file's per-page values, one file after the other
    :param pages: each file's page count, in file order
    :raises ValueError: ``pages`` does not add up to the array's length"""
    if flat.ndim != 1 or int(sum(pages)) != len(flat):
        raise ValueError(f"an array of shape {flat.shape} does not hold files of {sum(pages)} pages in all")
    return np.split(flat, np.cumsum(pages)[:-1]) if pages else []


def session_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{name, files, bytes}]``, one entry per session in the order they first appear in ``rows`` (the result's
    ``memfds`` rows, each with ``session`` and ``expected_size``): its files and the bytes they hold."""
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = table.setdefault(row["session"], {"name": row["session"], "files": 0, "bytes": 0})
        entry["files"] += 1
        entry["bytes"] += row["expected_size"]
    return list(table.values())


def _concatenated(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint64)


@register
@dataclass
class SessionsWorkload(Workload):
    """One memfd per entry of ``sizes`` (bytes, whole 4 KiB pages) in the cycle's session and ``small_files``
    memfds of ``small_file_size`` bytes in ``<session>-small``, filled with the pattern of ``seed``. The faults
    ``corrupt_page`` and ``modify_after_preserve`` name a file by its index among all of them (the ``sizes``
    first)."""

    name = "sessions"
    agent = "workbench.lab.workloads.sessions:SessionsAgent"
    phases_before_kexec = ("prepare", "preserve", "load")
    phases_after_kexec = ("restore", "verify")
    crash_points = ("preserve", "retrieve", "restore")

    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    small_files: int = 64
    small_file_size: int = PAGE
    seed: int = 0

    def files(self) -> list[PreservedFile]:
        """Every file the cycle preserves, in order."""
        return file_layout(list(self.sizes), self.small_files, self.small_file_size)

    def validate(self) -> None:
        if not isinstance(self.sizes, list | tuple) or not self.sizes:
            raise InvalidCycle(f"sizes must be a list of one or more memfd sizes in bytes, not {self.sizes!r}")
        for i, size in enumerate(self.sizes):
            if not isinstance(size, int):
                raise InvalidCycle(f"sizes[{i}] is {size!r}, not a number of bytes")
            self.check_pages(f"sizes[{i}]", size)
        if self.small_files < 0:
            raise InvalidCycle("the number of small files cannot be negative")
        self.check_pages("small file size", self.small_file_size)
        if len(self.sizes) + self.small_files > MAX_FILES:
            raise InvalidCycle(
                f"{len(self.sizes)} memfds and {self.small_files} small files are more than the {MAX_FILES} files "
                "a cycle may preserve (the agent holds every one open and mapped at once): give fewer small files"
            )

    def validate_session(self, session: str) -> None:
        """Raises :class:`InvalidCycle` when the sessions of a cycle named ``session`` cannot be created (the small
        files' session adds 6 bytes to a name LUO limits to 63). The agent checks it too, before it creates a
        file."""
        session_names(session, self.small_files)

    def validate_faults(self, faults: Faults) -> None:
        pages = [f.pages for f in self.files()]
        for name in ("corrupt_page", "modify_after_preserve"):
            ref = getattr(faults, name)
            if ref is None:
                continue
            if not 0 <= ref.memfd < len(pages):
                raise InvalidCycle(
                    f"fault {name} names memfd {ref.memfd}, but the cycle has {len(pages)} memfds: "
                    f"{len(self.sizes)} of the sizes (0 to {len(self.sizes) - 1}) and {self.small_files} small files"
                )
            if not 0 <= ref.page < pages[ref.memfd]:
                raise InvalidCycle(
                    f"fault {name} names page {ref.page} of memfd {ref.memfd}, which has {pages[ref.memfd]} pages"
                )

    def data_bytes(self) -> int:
        return sum(self.sizes) + self.small_files * self.small_file_size

    def timeout_bytes(self) -> int:
        return self.data_bytes() + (len(self.sizes) + self.small_files) * PER_FILE_TIMEOUT_BYTES

    def request(self) -> dict[str, Any]:
        return {
            "sizes": list(self.sizes),
            "small_files": self.small_files,
            "small_file_size": self.small_file_size,
            "seed": self.seed,
        }

    def summarize(self, result, prepare, restore, marks) -> dict[str, Any]:
        preserve_s = prepare.get("preserve_s") or []
        for row in result["memfds"]:
            i = row.get("memfd")
            row["preserve_s"] = preserve_s[i] if isinstance(i, int) and 0 <= i < len(preserve_s) else None
        result["sessions"] = session_table(result["memfds"])
        result["workload"] = self.name
        if "modify_after_preserve" in prepare:
            result["modify_after_preserve"] = prepare["modify_after_preserve"]
        return result


class _Sessions:
    """The cycle's sessions, closed together when the agent stands down."""

    def __init__(self, sessions: list[Session]):
        self.sessions = sessions

    def close(self) -> None:
        failures = []
        for session in self.sessions:
            try:
                session.close()
            except OSError as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


def _ensure_open_files(needed: int) -> None:
    """Raises the open-files limit to ``needed`` where it is lower (the agent runs as root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class SessionsAgent(MemfdAgent):
    """The target side: the memfd agent's set-up, fill and faults, with files of several sizes in two sessions."""

    def files(self) -> list[PreservedFile]:
        req = self.request
        return file_layout(req["sizes"], req["small_files"], req["small_file_size"])

    def setup(self) -> None:
        super().setup()
        # every file is open twice at once (its descriptor and its mapping's), before and after the kexec
        _ensure_open_files(2 * len(self.files()) + 64)

    def make_memory(self) -> tuple[list[int], list[mmap.mmap], list[np.ndarray], str | None]:
        req = self.request
        memfds, maps, hashes, impl = [], [], [], None
        for f in self.files():
            fd = os.memfd_create(f"wb-{f.session(req['session'])}-{f.token}", 0)
            os.ftruncate(fd, f.size)
            m = mmap.mmap(fd, f.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            fill_pattern(m, f.index, req.get("seed", 0))
            h, impl = fingerprint(m)
            memfds.append(fd)
            maps.append(m)
            hashes.append(h)
        return memfds, maps, hashes, impl

    # -- before the kexec ------------------------------------------------------------------------------------
    def prepare_and_kexec(self) -> None:
        req = self.request
        names = session_names(req["session"], req["small_files"])
        self.setup()
        with self.phase("prepare"):
            luo = LiveUpdate()  # fails clearly, before anything else, on a kernel without LUO
            memfds, maps, hashes, impl = self.make_memory()
            np.save(self.results / FINGERPRINTS_BEFORE, _concatenated(hashes))
            self.state["hash_impl"] = impl
        self.save()
        self.pause("prepare")
        preserve_s = []
        with self.phase("preserve"):
            sessions = {name: luo.create_session(name) for name in names}
            for f, fd in zip(self.files(), memfds, strict=True):
                t0 = time.monotonic()
                sessions[f.session(req["session"])].preserve(fd, f.token)
                preserve_s.append(time.monotonic() - t0)
        self.state["preserve_s"] = preserve_s
        self.state["session"] = sessions[req["session"]].kernel_name()
        self.state["sessions"] = [s.kernel_name() for s in sessions.values()]
        np.save(self.results / FRAMES_BEFORE, _concatenated([page_frames(m) for m in maps]))
        self.hand_over(luo, _Sessions(list(sessions.values())), memfds, maps)

    # -- after the kexec -------------------------------------------------------------------------------------
    def restore(self) -> None:
        req = self.request
        files = self.files()
        self.kho_snapshot("in")
        faults = req.get("faults", {})
        retrieve_s, fds = [], []
        with self.phase("restore"):
            luo = LiveUpdate()
            sessions = {name: luo.retrieve_session(name) for name in session_names(req["session"], req["small_files"])}
            for f in files:
                t0 = time.monotonic()
                fds.append(sessions[f.session(req["session"])].retrieve(f.token))
                retrieve_s.append(time.monotonic() - t0)
        sizes, maps = map_retrieved(fds)
        np.save(self.results / FRAMES_AFTER, _concatenated([page_frames(m) for m in maps]))
        self.pause("restore")
        if "corrupt_page" in faults:
            self.corrupt(maps, faults["corrupt_page"])
        self.timed_setup("hasher", load_hasher)
        with self.phase("verify"):
            before = split_pages(np.load(self.results / FINGERPRINTS_BEFORE), [f.pages for f in files])
            after, report, impl = [], [], None
            for f, m, size, expected, retrieved in zip(files, maps, sizes, before, retrieve_s, strict=True):
                t0 = time.monotonic()
                h, impl = fingerprint(m)
                verify_s = time.monotonic() - t0
                after.append(h)
                differing = differing_pages(expected, h)
                report.append(
                    {
                        "memfd": f.index,
                        "session": f.session(req["session"]),
                        "token": f.token,
                        "size": size,
                        "expected_size": f.size,
                        "pages": int(len(h)),
                        "differing_pages": differing[:1000],
                        "differing_count": len(differing),
                        "retrieve_s": retrieved,
                        "verify_s": verify_s,
                    }
                )
            np.save(self.results / FINGERPRINTS_AFTER, _concatenated(after))
        self.state["retrieve_s"] = retrieve_s
        self.state["hash_impl_after"] = impl
        self.record_verification(report)
        with self.phase("finish"):
            for m in maps:
                m.close()
            for session in sessions.values():
                session.finish()
            for fd in fds:
                os.close(fd)
            for session in sessions.values():
                session.close()
            luo.close()
        self.report_done()
