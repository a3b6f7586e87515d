"""The host↔agent protocol, in one place for both sides.

The host writes ``request.json`` into the target's results folder and starts the agent (the lab VM's initramfs
does, or the SSH target does); the agent reports progress as ``WB-MARK <event> [<json>]`` lines on its standard
output (a VM's serial console, an SSH channel), which the host timestamps on arrival with its own monotonic
clock, and writes its state as ``<phase>.json`` plus ``.npy`` files into the same folder, which the host reads
after the cycle. The host answers a pause by creating ``continue-<phase>``.

Only the standard library is imported: the agent imports this module on targets (and ships it to SSH hosts)."""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.jsonfile import write_json_atomic

__all__ = [
    "MARK",
    "PROTOCOL",
    "Event",
    "REQUEST",
    "STATE_FILES",
    "RESULT_FILES",
    "FINGERPRINTS_BEFORE",
    "FINGERPRINTS_AFTER",
    "FRAMES_BEFORE",
    "FRAMES_AFTER",
    "Request",
    "state_file",
    "continue_flag",
    "kho_fdt_file",
    "format_mark",
    "parse_mark",
    "write_json_atomic",
    "read_json",
]

MARK = "WB-MARK "
#: what request.json may ask for; 2 added dry_run, confirm_kexec and next_phase (the SSH target needs 2). The
#: ``faults.crash_after`` of kdump changed nothing an SSH agent reads: only the lab VM, whose agent is always this
#: checkout's, is ever sent it (:func:`workbench.lab.kdump.check_crash`)
PROTOCOL = 2


class Event:
    """The ``WB-MARK`` events. The agent prints the first group, the initramfs ``init`` and ``init-error``, the
    CRIU workload program ``workload-resumed`` and ``workload-error``; a cycle that crashes on purpose
    (``faults.crash_after``, :mod:`workbench.lab.kdump`) ends with the last group: the agent prints ``crash``, the
    capture kernel's initramfs ``kdump-start`` and then ``kdump-saved`` or ``kdump-error``."""

    AGENT_START = "agent-start"  # {"phase": "prepare" | "restore" | "probe"}
    SETUP = "setup"  # {"name", "s"}: set-up outside the phases (compiling the hash kernel)
    PHASE_BEGIN = "phase-begin"  # {"phase"}
    PHASE_END = "phase-end"  # {"phase", "s"}: seconds on the target's clock
    PAUSED = "paused"  # {"phase"}: waiting for continue-<phase>
    RESUMED = "resumed"  # {"phase"}
    KEXEC_READY = "kexec-ready"  # the next kernel is loaded; the agent waits for "kexec" on stdin
    KEXEC = "kexec"  # printed just before reboot(LINUX_REBOOT_CMD_KEXEC): the blackout starts
    DONE = "done"  # {"verified", "pages_checked"}: the agent finished
    ERROR = "error"  # {"phase", "message"}: the agent failed; <phase>.json has the traceback
    DRY_RUN_DONE = "dry-run-done"  # {"reason", "undone"}
    ABORTED = "aborted"  # {"reason", "undone"}: no kexec after all
    INIT = "init"  # the initramfs started (text: its wb.phase)
    INIT_ERROR = "init-error"  # the initramfs could not start the agent
    WORKLOAD_RESUMED = "workload-resumed"  # a CRIU-restored process noticed that it runs again
    CRASH = "crash"  # {"after"}: printed just before the agent panics the target (sysrq c)
    KDUMP_START = "kdump-start"  # the capture kernel's initramfs started
    KDUMP_SAVED = "kdump-saved"  # {"file", "level"}: makedumpfile wrote the dump into the results folder
    KDUMP_ERROR = "kdump-error"  # {"rc"}: makedumpfile failed
    FAILURES = (ERROR, INIT_ERROR)


REQUEST = "request.json"
FINGERPRINTS_BEFORE = "fingerprints-before.npy"
FINGERPRINTS_AFTER = "fingerprints-after.npy"
FRAMES_BEFORE = "frames-before.npy"
FRAMES_AFTER = "frames-after.npy"


def state_file(phase: str) -> str:
    """The agent's state file for ``phase`` (``prepare`` before the kexec, ``restore`` after it)."""
    return f"{phase}.json"


def continue_flag(phase: str) -> str:
    """The file the host creates to let the agent go on after a pause after ``phase``."""
    return f"continue-{phase}"


def kho_fdt_file(direction: str) -> str:
    """The copy of the KHO FDT that debugfs shows (``out`` before the kexec, ``in`` after it)."""
    return f"kho-{direction}.fdt"


STATE_FILES = (state_file("prepare"), state_file("restore"))
#: the agent's files in the results folder (an SSH target removes them before a cycle and copies them back after)
RESULT_FILES = (
    REQUEST,
    *STATE_FILES,
    FINGERPRINTS_BEFORE,
    FINGERPRINTS_AFTER,
    FRAMES_BEFORE,
    FRAMES_AFTER,
    kho_fdt_file("out"),
    kho_fdt_file("in"),
)


def format_mark(event: str, payload: dict | None = None) -> str:
    """The line the agent prints for ``event`` (without the newlines around it)."""
    line = MARK + event
    if payload is not None:
        line += " " + json.dumps(payload, separators=(",", ":"))
    return line


def parse_mark(text: str) -> tuple[str, dict] | None:
    """``(event, payload)`` of a console line holding a mark anywhere (kernel messages may precede it on the same
    line), or None. A payload that is not a JSON object is returned as ``{"text": ...}``."""
    pos = text.find(MARK)
    if pos < 0:
        return None
    rest = text[pos + len(MARK) :].strip()
    event, _, payload = rest.partition(" ")
    if payload.startswith("{"):
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            return event, data
    return event, {"text": payload}


@dataclass
class Request:
    """What every ``request.json`` holds, whatever the workload; the workload's own fields are in ``workload_fields``
    and are written beside these (the file stays one flat object)."""

    workload: str
    session: str
    next_kernel: str = ""
    next_initrd: str = ""
    pause_after: list[str] = field(default_factory=list)
    #: :meth:`workbench.lab.faults.Faults.to_request` and the workload's own faults; ``crash_after``, when given, is
    #: the object :func:`workbench.lab.kdump.capture_request` builds: ``point`` (``preserve``, ``retrieve`` or
    #: ``restore``), ``pause`` (the agent's pause point where it crashes: ``preserve`` or ``restore``), ``kernel``
    #: and ``initrd`` (the capture kernel's files, paths the target sees), ``cmdline`` (its command line) and
    #: ``level`` (makedumpfile's dump level)
    faults: dict[str, Any] = field(default_factory=dict)
    next_phase: str = "restore"
    dry_run: bool = False
    confirm_kexec: bool = False
    #: the compatible strings the next kernel accepts: the agent checks the live handover against them (None: no check)
    preflight_accepts: list[str] | None = None
    protocol: int = PROTOCOL
    workload_fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        common = asdict(self)
        extra = common.pop("workload_fields")
        clash = sorted(set(extra) & set(common))
        if clash:
            raise ValueError(f"workload request fields {clash} clash with the cycle's own")
        return {**common, **extra}

    def write(self, folder: Path) -> Path:
        return write_json_atomic(folder / REQUEST, self.to_json())


def read_json(path: Path, *, limit: int = 64 << 20) -> dict[str, Any]:
    """Reads a JSON object the other side wrote: the agent reads the host's ``request.json`` with it (the host reads
    the agent's files with :mod:`workbench.lab.share_files`, which also checks their shape; that module is not
    shipped to an SSH host, so this one keeps its own bounded, no-symlink read). Raises ``ValueError`` naming the
    file when it is a symlink or not a regular file, larger than ``limit`` bytes, not JSON, or not an object;
    ``OSError`` when it cannot be opened."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symlink, not a file the other side wrote") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"{path} is more than the {limit} bytes an agent's JSON file may have")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data
