"""Real crash dumps of the lab VM: kdump.

``workbench cycle --crash-after PHASE`` boots the target with memory reserved for a capture kernel
(``crashkernel=``). At the crash point the agent loads the capture kernel, the same lab kernel, with
``kexec_file_load(KEXEC_FILE_ON_CRASH)`` and panics the target (``echo c > /proc/sysrq-trigger``). The panic
boots the capture kernel inside the reservation; its initramfs (:mod:`workbench.lab.initramfs`, ``wb.phase=kdump``)
runs Debian's ``makedumpfile`` on ``/proc/vmcore`` and writes a kdump-compressed dump into the run's results
folder over 9p, then powers off. The cycle ends recorded ``failed`` with outcome ``crashed`` and the dump's path.

Crash points: ``preserve`` (after the sessions are preserved, before the kexec), ``retrieve`` and ``restore``
(the same moment, two names: in the next kernel, after the session and its files were retrieved).

Dump level 23 (zero, page-cache, private page-cache and free pages excluded) keeps every page the kernel
allocated for itself, which is where KHO and LUO keep their state: the outgoing FDT, the preserved-memory radix
tree, the ``kho_block`` lists and the LUO/memfd serialization pages, the ``luo_session`` and ``luo_file`` objects,
the memfds' inodes and page-cache xarrays and every ``struct page``. It drops the memfds' data (shmem folios are
page-cache pages): their pfns stay readable, their contents do not. Level 31 would also drop user pages, and
Debian 12's makedumpfile 1.7.2 predates slab becoming a page type (Linux 6.10): it looks for ``PG_slab``, which
7.2 no longer exports, reads the word a slab page keeps where ``page->mapping`` would be as an anonymous
mapping and drops the slab as user memory. On the first real dump at level 31 the preserved memfds' shmem
inodes were gone ("Excluded page"); user pages are therefore kept.

The agent half of this module runs on the target (standard library only); the host half builds the request and
reads what the agent and the capture kernel left."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.lab.errors import InvalidCycle, LabError, ShareFileError, ShareFileMalformed
from workbench.lab.liveupdate import KEXEC_FILE_ON_CRASH, kexec_file_load
from workbench.lab.share_files import open_share_file, read_share_tail

if TYPE_CHECKING:
    from workbench.lab.target import Target
    from workbench.lab.workload import Workload

__all__ = [
    "CRASH_POINTS",
    "CRASHKERNEL",
    "CRASHKERNEL_MB",
    "CRASH_KHO_SCRATCH",
    "DUMP_LEVEL",
    "DUMP_FILE",
    "TargetCrashed",
    "crash_pause_point",
    "check_crash",
    "capture_cmdline",
    "capture_request",
    "load_capture_kernel",
    "capture_facts",
    "crash_now",
    "claim_dump",
    "makedumpfile_output",
    "coexistence",
]

#: the moments ``--crash-after`` can panic the target at; ``retrieve`` and ``restore`` name the same one
CRASH_POINTS = ("preserve", "retrieve", "restore")
#: memory reserved for the capture kernel, in MiB: its lean kernel, the busybox initramfs and makedumpfile over 9p
#: fit in it; the lab VM adds it to the memory the workload needs (``QemuTarget.memory_for``)
CRASHKERNEL_MB = 128
#: the ``crashkernel=`` boot argument's value
CRASHKERNEL = f"{CRASHKERNEL_MB}M"
#: KHO's scratch areas (lowmem, global, per node) in a crashing cycle. By default KHO sizes its lowmem scratch at
#: 200 % of the memory the kernel reserved below 4 GiB, the crash reservation included: with crashkernel=192M a
#: 1 GiB guest asked for 456 MiB of contiguous lowmem on top of the 192 MiB reservation, which failed on some
#: boots (the kernel's randomized physical address splits RAM) and disabled KHO. Fixed sizes keep both; the
#: lowmem area must also hold the next kernel's own crash reservation, which it makes from scratch memory only.
CRASH_KHO_SCRATCH = "320M,16M,32M"
#: makedumpfile's dump level (see the module's docstring for what it keeps)
DUMP_LEVEL = 23
#: the dump's name in the results folder, written as ``<name>.part`` and renamed when makedumpfile succeeded
DUMP_FILE = "vmcore-crash.kdump"
#: what makedumpfile printed, in the results folder (the initramfs writes it)
MAKEDUMPFILE_LOG = "makedumpfile.log"
#: the most bytes of makedumpfile's log the host looks at (its end)
MAKEDUMPFILE_LOG_LIMIT = 4096
KDUMP_MAGIC = b"KDUMP   "


class TargetCrashed(LabError):
    """The target panicked on purpose (``--crash-after``) and its capture kernel wrote a kdump: raised inside the
    cycle's record, so that it is recorded ``failed`` (no live update completed) with the dump's path; the caller
    gets the result with ``outcome`` ``crashed`` and ``vmcore``."""

    def __init__(self, result: dict[str, Any]):
        super().__init__(
            f"the target panicked on purpose after {result['crashed_after']} (--crash-after); its capture kernel "
            f"wrote the kdump {result['vmcore']}"
        )
        self.result = result


def crash_pause_point(point: str) -> str:
    """The agent's pause point at which ``point`` (one of :data:`CRASH_POINTS`) crashes the target."""
    if point not in CRASH_POINTS:
        raise InvalidCycle(f"--crash-after takes {', '.join(CRASH_POINTS)}, not {point!r}")
    return "preserve" if point == "preserve" else "restore"


def check_crash(point: str | None, workload: Workload, target: Target) -> None:
    """Raises :class:`InvalidCycle` when a cycle cannot crash at ``point`` (None: no crash asked for).

    :param point: the ``--crash-after`` point
    :param workload: the cycle's workload: its agent must stop there (its ``crash_points``)
    :param target: the cycle's target: it must reserve memory for and boot a capture kernel (its ``supports_kdump``)
    """
    if point is None:
        return
    crash_pause_point(point)
    if not target.supports_kdump:
        raise InvalidCycle(f"--crash-after needs the lab VM (qemu target): the {target.label} target has no kdump")
    if point not in workload.crash_points:
        where = f"after {', '.join(workload.crash_points)} only" if workload.crash_points else "at no point"
        raise InvalidCycle(
            f"--crash-after {point} needs a workload whose agent stops there; the {workload.name} workload's agent "
            f"can crash the target {where}"
        )


def capture_cmdline(tcg: bool, level: int = DUMP_LEVEL) -> str:
    """The capture kernel's command line: one CPU, devices reset, the initramfs's ``kdump`` phase.

    :param tcg: the VM runs under TCG (skip the timer check that a loaded host can fail)
    :param level: makedumpfile's dump level
    """
    args = ["console=ttyS0", "panic=-1", "loglevel=6", "wb.phase=kdump", f"wb.dumplevel={level}"]
    args += [f"wb.dumpfile={DUMP_FILE}", "nr_cpus=1", "irqpoll", "reset_devices"]
    if tcg:
        args.append("no_timer_check")
    return " ".join(args)


def capture_request(point: str, kernel: Path, initrd: Path, tcg: bool) -> dict[str, Any]:
    """The request's ``faults.crash_after``: where to crash and the capture kernel to load first.

    :param point: one of :data:`CRASH_POINTS`
    :param kernel: the capture kernel's bzImage (the kernel that runs at the crash), a path the target sees
    :param initrd: the lab initramfs
    :param tcg: the VM runs under TCG
    """
    return {
        "point": point,
        "pause": crash_pause_point(point),
        "kernel": str(kernel),
        "initrd": str(initrd),
        "cmdline": capture_cmdline(tcg),
        "level": DUMP_LEVEL,
    }


# -- in the target ---------------------------------------------------------------------------------------------
def load_capture_kernel(kernel: str, initrd: str, cmdline: str) -> None:
    """``kexec_file_load(KEXEC_FILE_ON_CRASH)``: the kernel a panic boots into. Raises ``OSError`` naming why the
    kernel refused it (no ``crashkernel=`` reservation, or one too small: ``EADDRNOTAVAIL``/``ENOMEM``).

    :param kernel: the capture kernel's bzImage
    :param initrd: its initramfs
    :param cmdline: its command line (:func:`capture_cmdline`)
    """
    try:
        kexec_file_load(kernel, initrd, cmdline, flags=KEXEC_FILE_ON_CRASH)
    except OSError as exc:
        if exc.errno not in (errno.ENOMEM, errno.EINVAL, errno.EADDRNOTAVAIL):
            raise
        raise OSError(exc.errno, f"{exc.strerror} (is memory reserved with crashkernel=, and large enough?)") from None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _hex_lines(text: str | None) -> list[int]:
    return [int(line, 16) for line in (text or "").split() if line.startswith("0x")]


def capture_facts(iomem: str | None = None) -> dict[str, Any]:
    """What the running kernel says about kdump and KHO: the crash reservation (``/proc/iomem``'s ``Crash
    kernel``, as [start, end] inclusive), whether a capture kernel is loaded, and the KHO scratch areas (debugfs).

    :param iomem: ``/proc/iomem``'s text (default: read it; root sees real addresses)
    """
    text = iomem if iomem is not None else (_read("/proc/iomem") or "")
    crash = [
        [int(m.group(1), 16), int(m.group(2), 16)]
        for m in re.finditer(r"^\s*([0-9a-f]+)-([0-9a-f]+) : Crash kernel$", text, re.MULTILINE)
    ]
    scratch_phys = _hex_lines(_read("/sys/kernel/debug/kho/out/scratch_phys"))
    scratch_len = _hex_lines(_read("/sys/kernel/debug/kho/out/scratch_len"))
    loaded = _read("/sys/kernel/kexec_crash_loaded")
    size = _read("/sys/kernel/kexec_crash_size")
    return {
        "crash_kernel": crash,
        "crash_size": int(size) if size and size.isdigit() else None,
        "capture_loaded": loaded == "1" if loaded is not None else None,
        "kho_scratch": [[p, n] for p, n in zip(scratch_phys, scratch_len, strict=False)],
    }


def crash_now() -> None:
    """Panics the running kernel (sysrq ``c``). Returns only if the kernel ignored it."""
    os.sync()
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("c")


# -- on the host -----------------------------------------------------------------------------------------------
def claim_dump(results: Path, name: object, into: Path) -> Path:
    """Moves the dump the capture kernel wrote into the results folder (untrusted: a regular file named as asked,
    no link, a kdump header) to the run's folder ``into``; returns its new path.

    :param results: the results folder the guest writes (the 9p share)
    :param name: the file name the capture kernel reported
    :param into: the run's folder
    :raises ShareFileError: the name is not :data:`DUMP_FILE`, or the file is missing, a symlink or not a regular
        file, or was replaced while it was moved
    :raises ShareFileMalformed: the file is not kdump-compressed
    """
    source = results / DUMP_FILE
    if name != DUMP_FILE:
        raise ShareFileError(f"the capture kernel reported the dump {name!r}, not {DUMP_FILE!r}", source)
    fd, opened = open_share_file(results, DUMP_FILE)
    try:
        magic = os.pread(fd, len(KDUMP_MAGIC), 0)
        if magic != KDUMP_MAGIC:
            raise ShareFileMalformed(f"{source} is not a kdump-compressed file (magic {magic!r})", source)
        target = into / DUMP_FILE
        os.replace(source, target)
        moved = os.lstat(target)
        if (moved.st_dev, moved.st_ino) != (opened.st_dev, opened.st_ino):
            os.unlink(target)
            raise ShareFileError(f"{source} was replaced while it was moved into {into}: refused", source)
    except OSError as exc:
        raise ShareFileError(f"{source} cannot be moved into {into}: {exc.strerror or exc}", source) from None
    finally:
        os.close(fd)
    return target


def makedumpfile_output(results: Path, limit: int = MAKEDUMPFILE_LOG_LIMIT) -> str:
    """The end (at most ``limit`` bytes) of what makedumpfile printed in the capture kernel, from the results
    folder; empty when the file is missing, a symlink or not a regular file.

    :param results: the results folder the guest writes (the 9p share)
    :param limit: how many bytes from its end to read
    """
    try:
        return read_share_tail(results, MAKEDUMPFILE_LOG, limit=limit).decode(errors="replace")
    except ShareFileError:
        return ""


def _overlap(a: list[int], b: list[int]) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[1] + 1


def coexistence(facts: dict[str, Any], dumped: bool, point: str, sessions: int) -> dict[str, Any]:
    """The finding whether KHO and kdump coexist in the kernel that crashed: a crash reservation and a capture
    kernel loaded while sessions were preserved (or retrieved), a dump written, and where the reservation lies
    against the KHO scratch areas. Before the kexec it lies beside them (both are carved out at boot); in the next
    kernel it lies inside the lowmem scratch area, since a kernel booted by KHO allocates only from scratch memory
    until its memory map is up: the scratch area must be larger than the reservation.

    :param facts: :func:`capture_facts` from the agent, taken just before the crash
    :param dumped: whether the capture kernel wrote the dump
    :param point: the crash point
    :param sessions: how many sessions were preserved (``preserve``) or retrieved (``restore``) at the crash
    """
    crash, scratch = facts.get("crash_kernel") or [], facts.get("kho_scratch") or []
    inside = [[c, s] for c in crash for s in scratch if _overlap(c, s)]
    coexist = bool(crash) and bool(facts.get("capture_loaded")) and dumped
    where = "before the kexec" if point == "preserve" else "in the next kernel, after retrieving"
    ranges = ", ".join(f"{c[0]:#x}-{c[1]:#x}" for c in crash) or "none"
    placement = (
        f"inside KHO scratch ({', '.join(f'{s[0]:#x}+{s[1] >> 20} MiB' for _, s in inside)})"
        if inside
        else f"beside the {len(scratch)} KHO scratch area(s)"
    )
    done = "preserved" if point == "preserve" else "retrieved"
    if coexist:
        finding = (
            f"KHO and kdump coexist {where}: the crash reservation ({ranges}) lies {placement}, the capture kernel "
            f"loaded with {sessions} session(s) {done}, and it wrote the dump"
        )
    else:
        missing = [
            why
            for ok, why in (
                (bool(crash), "no crash reservation in /proc/iomem"),
                (bool(facts.get("capture_loaded")), "no capture kernel loaded"),
                (dumped, "the capture kernel wrote no dump"),
            )
            if not ok
        ]
        finding = f"KHO and kdump did not coexist {where}: {'; '.join(missing)}"
    return {
        "coexist": coexist,
        "point": point,
        "crash_in_scratch": bool(inside),
        "sessions": sessions,
        "finding": finding,
    }


def crash_result(
    point: str,
    vmcore: Path,
    vmlinux: Path | None,
    prepare: dict[str, Any],
    restore: dict[str, Any],
    makedumpfile_log: str,
    session: str,
) -> dict[str, Any]:
    """The result of a cycle that crashed on purpose: ``outcome`` ``crashed``, never ``verified``, the dump
    (``vmcore``, ``vmlinux``), the guest's phase times and kernel releases, ``kdump`` (what the crashed kernel said
    about its reservation, the capture kernel's load time, makedumpfile's output) and ``kho_kdump``
    (:func:`coexistence`).

    :param point: the crash point
    :param vmcore: the dump, in the run's folder
    :param vmlinux: the crashed kernel's vmlinux, when it is a lab kernel
    :param prepare: the agent's state before the kexec
    :param restore: the agent's state after it (empty for a crash before the kexec)
    :param makedumpfile_log: the end of makedumpfile's output in the capture kernel
    :param session: the cycle's session name, when the agent did not record it
    """
    crashed = restore if crash_pause_point(point) == "restore" else prepare
    facts = dict(crashed.get("kdump") or {})
    phases = {**prepare.get("phases", {}), **restore.get("phases", {})}
    sessions = len(prepare.get("sessions") or []) or 1
    said = [line for line in makedumpfile_log.splitlines() if line.strip() and "%]" not in line]  # no progress bars
    facts.update(dump_level=DUMP_LEVEL, dump_bytes=vmcore.stat().st_size, makedumpfile="\n".join(said))
    return {
        "verified": False,
        "outcome": "crashed",
        "crashed_after": point,
        "vmcore": str(vmcore),
        "vmlinux": str(vmlinux) if vmlinux else None,
        "session": prepare.get("session", session),
        "phases": phases,
        "memfds": [],
        "pages_checked": 0,
        "kernel_release_before": prepare.get("kernel_release_before"),
        "kernel_release_after": restore.get("kernel_release_after"),
        "kdump": facts,
        "kho_kdump": coexistence(facts, True, point, sessions),
    }
