"""What every workload's agent shares: it runs on the target as root, before the kexec (``--phase prepare``) and
after it (``--phase restore``), started by :mod:`workbench.lab.agent`.

It reads ``request.json`` from its results folder, reports progress as ``WB-MARK`` lines on stdout (the serial
console or an SSH channel, which the host timestamps with its own clock) and writes its state as JSON and
``.npy`` files into the results folder (see :mod:`workbench.lab.protocol`). Phase times use the target's
monotonic clock. :class:`Agent` times phases, pauses when asked, loads the next kernel, kexecs, stands down when
there is to be no kexec, and records failures; a workload's agent subclasses it and implements
:meth:`Agent.prepare_and_kexec` and :meth:`Agent.restore`.

Over SSH the host asks for two more things in request.json: ``dry_run`` (stop after the load: unload the kernel,
close the session so that nothing stays preserved, exit) and ``confirm_kexec`` (after the load, print
``kexec-ready`` and read one line from stdin: ``kexec`` goes on, anything else or end of file, e.g. a dropped
connection, aborts like a dry run). ``next_phase`` names the next kernel's ``wb.phase=`` (default restore)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import mmap
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from workbench.lab.errors import HandoverRefusedLive
from workbench.lab.handover_live import live_preflight, read_handover_formats
from workbench.lab.liveupdate import LiveUpdate, kexec_file_load, reboot_kexec
from workbench.lab.protocol import (
    REQUEST,
    Event,
    continue_flag,
    format_mark,
    kho_fdt_file,
    read_json,
    state_file,
    write_json_atomic,
)

__all__ = [
    "Agent",
    "PAGE",
    "differing_pages",
    "fill_pattern",
    "fingerprint",
    "load_hasher",
    "map_retrieved",
    "mark",
    "page_frames",
    "record_failure",
]

PAGE = 4096
KEXEC_FILE_UNLOAD = 0x1
SYS_KEXEC_FILE_LOAD = 320  # x86_64


def mark(event: str, payload: dict | None = None) -> None:
    """Prints a ``WB-MARK`` line for the host, on a line of its own."""
    sys.stdout.write("\n" + format_mark(event, payload) + "\n")
    sys.stdout.flush()


def fill_pattern(buf, memfd_index: int, seed: int) -> None:
    """Fills ``buf`` with words that differ on every page, every memfd and every seed (and are never all zero)."""
    words = np.frombuffer(buf, dtype=np.uint64)
    chunk = 1 << 20
    salt = np.uint64((seed * 1_000_003 + memfd_index * 7919 + 1) & 0xFFFFFFFFFFFFFFFF)
    for start in range(0, words.size, chunk):
        idx = np.arange(start, min(start + chunk, words.size), dtype=np.uint64)
        words[start : start + idx.size] = (idx + salt) * np.uint64(0x9E3779B97F4A7C15) ^ salt


def load_hasher() -> str:
    """Imports and compiles (or loads from numba's cache) the page hash kernel; returns its name."""
    try:
        from workbench.kernels.pagehash import ALGORITHM, page_hashes

        page_hashes(np.zeros(PAGE, dtype=np.uint8))
        return f"{ALGORITHM}-numba"
    except ImportError:
        return "blake2b64-python"


def fingerprint(buf) -> tuple[np.ndarray, str]:
    """Per-page fingerprints: the workbench's numba XXH3-64 kernel, or BLAKE2b-64 if numba cannot run here."""
    try:
        from workbench.kernels.pagehash import ALGORITHM, page_hashes

        return page_hashes(buf), f"{ALGORITHM}-numba"
    except ImportError:
        view = memoryview(buf)
        out = np.empty(len(view) // PAGE, dtype=np.uint64)
        for i in range(out.size):
            out[i] = int.from_bytes(hashlib.blake2b(view[i * PAGE : (i + 1) * PAGE], digest_size=8).digest(), "little")
        return out, "blake2b64-python"


def differing_pages(expected: np.ndarray, found: np.ndarray) -> list[int]:
    """The pages whose fingerprints differ, then those only one side has (a file that came back shorter or longer).

    :param expected: the per-page fingerprints taken before the kexec
    :param found: the per-page fingerprints of what came back"""
    n = min(len(found), len(expected))
    differing = np.flatnonzero(found[:n] != expected[:n]).tolist()
    return differing + list(range(n, max(len(found), len(expected))))


def map_retrieved(fds: list[int]) -> tuple[list[int], list[mmap.mmap]]:
    """Maps each retrieved file whole, at the size it came back with, and faults every page in (pagemap shows only
    mapped pages, and a fresh mapping has none); returns the sizes and the mappings.

    :param fds: file descriptors retrieved from LUO sessions"""
    sizes = [os.fstat(fd).st_size for fd in fds]
    maps = [
        mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        for fd, size in zip(fds, sizes, strict=True)
    ]
    for m in maps:
        np.frombuffer(m, dtype=np.uint8)[::PAGE].sum()
    return sizes, maps


def kexec_file_unload() -> None:
    """Unloads the kernel ``kexec_file_load`` loaded (``KEXEC_FILE_UNLOAD``): nothing stays armed for a kexec."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(
        ctypes.c_long(SYS_KEXEC_FILE_LOAD),
        ctypes.c_int(-1),
        ctypes.c_int(-1),
        ctypes.c_ulong(0),
        ctypes.c_char_p(None),
        ctypes.c_ulong(KEXEC_FILE_UNLOAD),
    )
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"kexec_file_load(KEXEC_FILE_UNLOAD): {os.strerror(err)}")


def page_frames(mapping: mmap.mmap) -> np.ndarray:
    """The physical frame number behind each page of ``mapping`` (from /proc/self/pagemap; 0 where not present)."""
    addr = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    n = len(mapping) // PAGE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek((addr // PAGE) * 8)
        entries = np.frombuffer(f.read(n * 8), dtype=np.uint64)
    present = (entries >> np.uint64(63)) & np.uint64(1)
    return np.where(present == 1, entries & np.uint64((1 << 55) - 1), 0).astype(np.uint64)


def record_failure(path: Path, state: dict, exc: BaseException) -> None:
    """Writes ``exc`` (type, message, traceback, the phase it happened in) into the state file ``path`` and marks
    ``error`` for the host."""
    state["error"] = {
        "phase": state.get("current_phase"),
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    write_json_atomic(path, state)
    mark(Event.ERROR, {"phase": state.get("current_phase"), "message": str(exc), "type": type(exc).__name__})


class Agent:
    """The agent of one phase of one cycle. ``results`` is the results folder, ``phase`` ``prepare`` or
    ``restore``; subclasses implement :meth:`prepare_and_kexec` and :meth:`restore`."""

    def __init__(self, results: Path, phase: str):
        self.results = results
        self.request = read_json(results / REQUEST)
        self.state_path = results / state_file(phase)
        self.state: dict = {"phases": {}, "events": []}

    def run(self, phase: str) -> int:
        """Runs ``phase`` (the entry point has marked ``agent-start``) after noting the kernel it runs in
        (``kernel_release_before`` and ``cmdline_before``, or ``kernel_release_after``); a failure is recorded
        (state file and an ``error`` mark) and gives exit status 1."""
        try:
            if phase == "prepare":
                self.state["kernel_release_before"] = os.uname().release
                self.state["cmdline_before"] = Path("/proc/cmdline").read_text().strip()
                self.prepare_and_kexec()
            else:
                self.state["kernel_release_after"] = os.uname().release
                self.restore()
        except BaseException as exc:
            self.on_failure()
            self.record_failure(exc)
            return 1
        return 0

    def prepare_and_kexec(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        raise NotImplementedError

    def on_failure(self) -> None:
        """Keeps what may explain a failure (logs) before it is recorded; must not raise."""

    def save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    @contextmanager
    def phase(self, name: str, save: bool = True) -> Iterator[None]:
        """Times a phase on the target's clock and marks its begin and end; ``save`` writes the state file after."""
        mark(Event.PHASE_BEGIN, {"phase": name})
        t0 = time.monotonic()
        self.state["current_phase"] = name
        yield
        seconds = time.monotonic() - t0
        self.state["phases"][name] = seconds
        mark(Event.PHASE_END, {"phase": name, "s": round(seconds, 6)})
        if save:
            self.save()

    def timed_setup(self, name: str, work) -> None:
        """Set-up outside the phases (importing and compiling the hash kernel), timed and reported separately."""
        t0 = time.monotonic()
        self.state.setdefault("setup", {})[name] = work()
        self.state["setup"][f"{name}_s"] = time.monotonic() - t0
        mark(Event.SETUP, {"name": name, "s": round(self.state["setup"][f"{name}_s"], 6)})

    def record_failure(self, exc: BaseException) -> None:
        """Keeps what went wrong, and in which phase, in the state file and tells the host."""
        record_failure(self.state_path, self.state, exc)

    def pause(self, after: str) -> None:
        """Stops after a phase until the host creates ``continue-<phase>`` (inspection and vmcore dumps), then
        panics the target there when the request's ``crash_after`` fault says so (:meth:`crash`)."""
        if after in self.request.get("pause_after", []):
            mark(Event.PAUSED, {"phase": after})
            flag = self.results / continue_flag(after)
            while not flag.exists():
                time.sleep(0.05)
            mark(Event.RESUMED, {"phase": after})
        crash = self.request.get("faults", {}).get("crash_after")
        if isinstance(crash, dict) and crash.get("pause") == after:
            self.crash(crash)

    def crash(self, spec: dict) -> None:
        """Loads the capture kernel ``spec`` names (``kexec_file_load(KEXEC_FILE_ON_CRASH)``, timed), keeps what
        the kernel says about kdump and KHO in the state, marks ``crash`` and panics (:mod:`workbench.lab.kdump`).

        :param spec: the request's ``faults.crash_after`` (:func:`workbench.lab.kdump.capture_request`)"""
        # imported here: only the lab VM crashes, and an SSH host's copy of the agent (ssh/agent_files.py) has no
        # kdump module
        from workbench.lab.kdump import capture_facts, crash_now, load_capture_kernel

        t0 = time.monotonic()
        load_capture_kernel(spec["kernel"], spec["initrd"], spec["cmdline"])
        self.state["kdump"] = {"capture_load_s": time.monotonic() - t0, "point": spec["point"], **capture_facts()}
        self.state["current_phase"] = "crash"
        self.save()
        mark(Event.CRASH, {"after": spec["point"]})
        crash_now()
        raise RuntimeError("the kernel did not panic on sysrq c")

    def kho_snapshot(self, which: str) -> None:
        """Copies the handover FDT that debugfs shows (``out`` before the kexec, ``in`` after) for the host."""
        src = Path("/sys/kernel/debug/kho") / which / "fdt"
        try:
            (self.results / kho_fdt_file(which)).write_bytes(src.read_bytes())
        except OSError as exc:
            self.state["events"].append(f"could not read {src}: {exc}")

    # -- the kexec -------------------------------------------------------------------------------------------
    def next_cmdline(self) -> str:
        """The running kernel's command line with the next phase's ``wb.phase=`` (and the faults' ``wb.hang``)."""
        cmdline = " ".join(a for a in self.state["cmdline_before"].split() if not a.startswith("wb.phase="))
        cmdline += f" wb.phase={self.request.get('next_phase', 'restore')}"
        if self.request.get("faults", {}).get("next_boot_hangs"):
            cmdline += " wb.hang=1"
        return cmdline

    def load_next_kernel(self) -> None:
        """``kexec_file_load`` of the request's next kernel and initrd, timed as the ``load`` phase."""
        with self.phase("load"):
            cmdline = self.next_cmdline()
            kexec_file_load(self.request["next_kernel"], self.request["next_initrd"], cmdline)
        self.state["next_cmdline"] = cmdline
        self.check_live_handover()

    def check_live_handover(self) -> None:
        """The live preflight (:mod:`workbench.lab.handover_live`) when the request names what the next kernel
        accepts: recorded in the state; a refusal unloads the next kernel and raises :class:`HandoverRefusedLive`."""
        accepts = self.request.get("preflight_accepts")
        if accepts is None:
            return
        try:
            formats = read_handover_formats()
        except OSError as exc:
            self.state["preflight_live"] = {"verdict": "unavailable", "reason": str(exc)}
            return
        verdict = live_preflight(formats, accepts)
        self.state["preflight_live"] = verdict
        if verdict["verdict"] == "refuse":
            kexec_file_unload()
            self.save()
            raise HandoverRefusedLive("live preflight refuses the kexec: " + "; ".join(verdict["reasons"]))

    def go_ahead(self) -> str | None:
        """None when the kexec may happen; otherwise why not (a dry run, or the host did not confirm)."""
        if self.request.get("dry_run"):
            return "dry run"
        if self.request.get("confirm_kexec"):
            mark(Event.KEXEC_READY)
            answer = sys.stdin.readline().strip()
            if answer != "kexec":
                return f"the host did not confirm the kexec (got {answer or 'end of file'!r})"
        return None

    def kexec(self, save: bool = True) -> None:
        """Saves the state (unless the caller just did), syncs, marks ``kexec`` for the host and reboots into the
        loaded kernel."""
        self.state["current_phase"] = "kexec"
        if save:
            self.save()
        os.sync()
        mark(Event.KEXEC)
        reboot_kexec()
        raise RuntimeError("reboot(LINUX_REBOOT_CMD_KEXEC) returned")

    def stand_down(self, reason: str, luo: LiveUpdate, session, maps: list[mmap.mmap], memfds: list[int]) -> None:
        """No kexec after all: unload the next kernel and close the session, which releases what it preserved."""
        self.state["current_phase"] = "stand-down"
        undone = []
        for what, step in (
            ("kexec unload", kexec_file_unload),
            ("session close", session.close),
            ("/dev/liveupdate close", luo.close),
        ):
            try:
                step()
                undone.append(what)
            except OSError as exc:
                self.state["events"].append(f"{what} failed: {exc}")
        for m in maps:
            with contextlib.suppress(BufferError):
                m.close()
        for fd in memfds:
            os.close(fd)
        self.state["stood_down"] = {"reason": reason, "undone": undone}
        self.state["dry_run"] = bool(self.request.get("dry_run"))
        self.state["current_phase"] = None
        self.save()
        with contextlib.suppress(OSError):  # the host went away: nothing left to tell it
            mark(Event.DRY_RUN_DONE if self.state["dry_run"] else Event.ABORTED, {"reason": reason, "undone": undone})
