"""The blackout's anatomy: where the seconds between the ``kexec`` mark and the agent's first mark in the next
kernel went, as named phases on the host's clock.

A cycle's ``blackout_s`` is host time from the agent's ``kexec`` mark to its ``agent-start`` mark in the next
kernel. In between, the next kernel prints its boot on the serial console, and the host stamps every line with
its monotonic clock on arrival (:class:`~workbench.lab.qemu.SerialLine`). The phases are the spans between lines
that mark a point of the boot, in order:

``kexec_to_console``
    the kexec mark → the next kernel's first console line: the old kernel's shutdown, the jump, purgatory,
    decompression and the first instants of ``setup_arch()`` (with ``earlycon`` the console prints from there).
``early_boot``
    → "mem auto-init:" (``report_meminit()``, the last line ``mm_core_init()`` prints before KHO restores the
    preserved memory), less ``memmap_init``, which lies inside it.
``memmap_init``
    struct page initialisation: ``free_area_init()``'s messages ("Zone ranges:" … "pages in unavailable ranges")
    to the first line after them, plus the deferred part where the kernel has one ("node N deferred pages
    initialised in Mms", its own milliseconds, taken out of ``initcalls``).
``kho_restore``
    → the first line after KHO restored the preserved memory (normally ``SLUB:``): 7.2 and 7.3 print nothing
    when ``kho_memory_init()`` succeeds, and ``memblock_free_all()`` follows it without a message, so this span
    holds both. It is KHO's: in seven 2 × 64 MiB cycles of a 1 GiB guest under TCG it took 0.04-0.31 s after the
    kexec, 0.012-0.046 s on the same guests' cold boots.
``initcalls``
    → the end of the initcalls ("Freeing unused kernel image (initmem) memory", or "Run /init as init process"
    when that is missing): the rest of ``start_kernel()``, the SMP bring-up and every initcall, LUO's among them.
    With ``initcall_debug`` on the command line, LUO's and KHO's own initcalls are named in
    :attr:`BlackoutAnatomy.liveupdate_initcalls` (the kernel's microseconds).
``kernel_to_init``
    → "Run /init as init process".
``agent_start``
    /init → the agent's first mark: busybox, the 9p mounts, Python starting the agent (the lab's own cost).
``retrieve``
    the agent's first mark → the end of the workload's first phase after the kexec (``restore``): after the
    blackout, so not part of ``blackout_s``.

How lines are placed on the host clock: each boundary is the host arrival time of its line. Under TCG the guest's
printk clock is no measure of host time (before the TSC is calibrated every line says 0.000000, and in one boot
on a loaded host here it then ran tens of times faster than the host's), so printk times serve only where the console
delivered several lines at once: a line that arrived in one read with later lines is placed back by its printk
delta to the last of them, never before the previous read arrived. A boundary the console did not show (a
``loglevel`` that hides ``KERN_INFO``, a character QEMU's serial port dropped) leaves the span around it
unattributed: that time is ``unexplained_s``, and the boundary is listed in :attr:`BlackoutAnatomy.missing`.

What the console costs (TCG, measured here): 8 interleaved cold boots of each kind on a quiet host took a median
1.62 s from QEMU's start to /init with ``loglevel=6``, 1.76 s with :data:`CONSOLE_ARGS` (``loglevel=7`` and
``earlycon``: about 255 more lines, 22 KB), and 1.96 s with ``initcall_debug`` on top (about 790 more, 64 KB). So
the anatomy's console costs some 0.14 s, under 2 % of a 2 × 64 MiB blackout (8-12 s here); ``initcall_debug``
costs 0.2 s more on a quiet host and 0.7 s more (the ``initcalls`` phase, three interleaved pairs of cycles) on a
loaded one, 2-7 % of the blackout: up to more than the ~5 % a measurement may cost, so it is not on by default.
Pass ``loglevel=8 initcall_debug`` in the target's ``kernel_args`` to name LUO's initcalls (each took under 5 ms
here, once 16 ms; those before the TSC is calibrated are counted in whole jiffies)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.lab.errors import LabError
from workbench.lab.protocol import Event, parse_mark

__all__ = [
    "CONSOLE_ARGS",
    "PHASES",
    "NoBlackoutInLog",
    "Segment",
    "BlackoutAnatomy",
    "anatomy_console_args",
    "blackout_anatomy",
    "read_serial_log",
    "anatomy_of_serial_log",
]

#: what the kernel command line needs for the anatomy: KERN_INFO on the console ("Run /init as init process", the
#: memmap and meminit lines) and an early console on ttyS0, so that the lines printed before ``console_init()``
#: (the memmap, KHO's restore) arrive when printed instead of in one burst when the console registers
CONSOLE_ARGS = ("loglevel=7", "earlycon=uart8250,io,0x3f8,115200")

#: the phases, in the order of the boot
PHASES = (
    "kexec_to_console",
    "early_boot",
    "memmap_init",
    "kho_restore",
    "initcalls",
    "kernel_to_init",
    "agent_start",
    "retrieve",
)

UNEXPLAINED = "unexplained"

_PRINTK = re.compile(r"^\[\s*(\d+\.\d+)\]\s?")
_SERIAL_LOG = re.compile(r"^\[\s*(\d+\.\d+)\] ?(.*)$")
_BANNER = "Linux version "
_MEMMAP_HEADINGS = r"Zone ranges:|Movable zone start|Early memory node ranges|Initmem setup node"
_MEMMAP_START = re.compile(rf"^(?:{_MEMMAP_HEADINGS})")
#: free_area_init()'s lines: the headings, the zones and node ranges under them, memmap_init()'s holes
_MEMMAP = re.compile(
    rf"^(?:{_MEMMAP_HEADINGS}|On node \d+, zone \S+: \d+ pages in unavailable ranges"
    r"|\s+(?:node\s+\d+:|Node \d+:|[A-Z][A-Za-z0-9]*\s))"
)
_MEMINIT = re.compile(r"^mem auto-init:")
_SLUB = re.compile(r"^SLUB: HWalign")
_DEFERRED = re.compile(r"node \d+ deferred pages initiali[sz]ed in (\d+)ms")
_INITMEM_FREED = re.compile(r"^Freeing unused kernel (?:image \(initmem\) )?memory")
_RUN_INIT = re.compile(r"^Run \S+ as init process")
_INITCALL = re.compile(r"initcall (\w+)\+0x[0-9a-f]+/0x[0-9a-f]+ returned -?\d+ after (\d+) usecs")
_LIVEUPDATE_INITCALL = re.compile(r"^(?:liveupdate|luo|kho|memfd_luo)")


class NoBlackoutInLog(LabError, ValueError):
    """A serial log without a blackout to dissect: no ``kexec`` mark, or no agent start after it."""


def anatomy_console_args(args: Sequence[str]) -> list[str]:
    """``args`` (a kernel command line as a list) with the console the anatomy needs (:data:`CONSOLE_ARGS`): its
    ``loglevel=`` replaced, ``earlycon`` added."""
    return [a for a in args if not a.startswith("loglevel=")] + list(CONSOLE_ARGS)


@dataclass(frozen=True)
class Segment:
    """One span of the timeline: ``phase`` (one of :data:`PHASES`, or ``unexplained``), from ``start_s`` to
    ``end_s``, seconds of host time after the ``kexec`` mark."""

    phase: str
    start_s: float
    end_s: float

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


@dataclass
class BlackoutAnatomy:
    """The blackout as contiguous :class:`Segment` s from the ``kexec`` mark (``blackout_s`` long, then
    ``retrieve`` after it); ``kernel_blackout_s``: the kexec mark → "Run /init" (None when the kernel did not print it);
    ``missing``: boundaries the console did not show; ``liveupdate_initcalls``: LUO's and KHO's initcalls with
    their seconds, when ``initcall_debug`` printed them; ``console_lines``: the next kernel's console lines before
    the agent started."""

    blackout_s: float
    segments: list[Segment]
    kernel_blackout_s: float | None = None
    missing: list[str] = field(default_factory=list)
    liveupdate_initcalls: dict[str, float] = field(default_factory=dict)
    console_lines: int = 0

    @property
    def phases(self) -> dict[str, float]:
        """Seconds per named phase, in the order of the boot (a phase in two pieces, like ``early_boot`` around
        ``memmap_init``, summed); ``retrieve`` last, after the blackout."""
        totals: dict[str, float] = {}
        for segment in self.segments:
            if segment.phase != UNEXPLAINED:
                totals[segment.phase] = totals.get(segment.phase, 0.0) + segment.seconds
        return {name: totals[name] for name in PHASES if name in totals}

    @property
    def unexplained_s(self) -> float:
        """The blackout's seconds that no named phase holds."""
        return sum((s.seconds for s in self.segments if s.phase == UNEXPLAINED), 0.0)

    @property
    def agent_start_s(self) -> float | None:
        """/init → the agent's first mark (None when the kernel did not print "Run /init")."""
        return None if self.kernel_blackout_s is None else self.blackout_s - self.kernel_blackout_s

    def as_result(self) -> dict[str, Any]:
        """The fields a cycle's result gets: ``kernel_blackout_s``, ``agent_start_s``, ``blackout_phases``,
        ``unexplained_s``, ``blackout_timeline`` (the segments), and ``blackout_missing`` and
        ``liveupdate_initcalls`` when there are any."""
        result: dict[str, Any] = {
            "kernel_blackout_s": self.kernel_blackout_s,
            "agent_start_s": self.agent_start_s,
            "blackout_phases": self.phases,
            "unexplained_s": self.unexplained_s,
            "blackout_timeline": [
                {"phase": s.phase, "start_s": s.start_s, "end_s": s.end_s, "seconds": s.seconds} for s in self.segments
            ],
        }
        if self.missing:
            result["blackout_missing"] = list(self.missing)
        if self.liveupdate_initcalls:
            result["liveupdate_initcalls"] = dict(self.liveupdate_initcalls)
        return result


@dataclass(frozen=True)
class _KernelLine:
    arrived: float  # host arrival
    printk: float | None  # the kernel's timestamp; None for a line without one
    text: str  # without the timestamp


def _printk_split(text: str) -> tuple[float | None, str]:
    match = _PRINTK.match(text)
    if match is None:
        return None, text
    return float(match.group(1)), text[match.end() :]


def _next_kernel_lines(lines: Iterable[tuple[float, str]], t_kexec: float, t_agent: float) -> list[_KernelLine]:
    """The next kernel's console lines that arrived between the kexec mark and the agent's start: from its banner
    on, or from the first printk time below an earlier one (the old kernel's "Starting new kernel" comes first)."""
    stamped = []
    for arrived, text in lines:
        if t_kexec <= arrived <= t_agent:
            printk, rest = _printk_split(text)
            if printk is not None:
                stamped.append(_KernelLine(arrived, printk, rest))
    start = next((i for i, line in enumerate(stamped) if line.text.startswith(_BANNER)), None)
    if start is None:
        start = next(
            (i for i in range(1, len(stamped)) if stamped[i].printk < stamped[i - 1].printk),  # type: ignore[operator]
            0 if stamped and stamped[0].printk == 0.0 else None,
        )
    return [] if start is None else stamped[start:]


def _printed_at(lines: list[_KernelLine], t_kexec: float) -> list[float]:
    """When each line was printed, on the host clock: its arrival, or, for a line that arrived in one read with
    later lines, that arrival less its printk delta to the last of them (while the printk times go forward), never
    before the previous read arrived."""
    times: list[float] = []
    previous_read = t_kexec
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j].arrived == lines[i].arrived:
            j += 1
        read = lines[i:j]
        for k, line in enumerate(read):
            at = line.arrived
            if line.printk:  # 0.0: the clock was not running yet, no delta means anything
                last = line.printk
                for later in read[k + 1 :]:
                    if not later.printk:
                        continue
                    if later.printk < last:
                        break
                    last = later.printk
                at = max(previous_read, line.arrived - (last - line.printk))
            times.append(at)
        previous_read = lines[i].arrived
        i = j
    return times


def _first(lines: list[_KernelLine], pattern: re.Pattern[str], start: int) -> int | None:
    return next((i for i in range(start, len(lines)) if pattern.search(lines[i].text)), None)


@dataclass(frozen=True)
class _Point:
    phase: str  # the phase that begins here
    at: float | None  # host time; None when the console did not show it
    required: bool  # without it the span around it cannot be named
    name: str  # what it is, for BlackoutAnatomy.missing


def _points(lines: list[_KernelLine], printed: list[float]) -> list[_Point]:
    """The boundaries in the next kernel's lines, in boot order (the ``kexec`` mark before them)."""

    def at(index: int | None) -> float | None:
        return None if index is None else printed[index]

    console = 0 if lines else None
    memmap_start = _first(lines, _MEMMAP_START, 0) if lines else None
    memmap_end = None
    if memmap_start is not None:
        memmap_end = memmap_start
        while memmap_end < len(lines) and _MEMMAP.search(lines[memmap_end].text):
            memmap_end += 1
        if memmap_end == len(lines):
            memmap_start = memmap_end = None
    after_memmap = memmap_end if memmap_end is not None else 0
    kho = None
    meminit = _first(lines, _MEMINIT, after_memmap) if lines else None
    if meminit is not None:
        while meminit + 1 < len(lines) and _MEMINIT.search(lines[meminit + 1].text):
            meminit += 1
        kho = meminit + 1 if meminit + 1 < len(lines) else None
    if kho is None and lines:
        meminit, kho = None, _first(lines, _SLUB, after_memmap)
    after_kho = (kho + 1) if kho is not None else after_memmap
    initcalls_end = _first(lines, _INITMEM_FREED, after_kho) if lines else None
    run_init = _first(lines, _RUN_INIT, initcalls_end if initcalls_end is not None else after_kho) if lines else None
    if run_init is None and lines:
        initcalls_end = None  # without /init there is nothing to tell initcalls from kernel_to_init by

    deferred_s = None
    deferred_end = None
    stop = run_init if run_init is not None else len(lines)
    for i in range(after_kho, stop):
        match = _DEFERRED.search(lines[i].text)
        if match:
            deferred_s = max(deferred_s or 0.0, int(match.group(1)) / 1000)
            deferred_end = i
    deferred_start_at = None
    if deferred_end is not None and kho is not None:
        deferred_start_at = max(printed[kho], printed[deferred_end] - deferred_s)  # type: ignore[operator]
    else:
        deferred_end = None

    points = [
        _Point("early_boot", at(console), True, "the next kernel's first console line"),
        _Point("memmap_init", at(memmap_start), False, "the memmap messages (Zone ranges)"),
        _Point("early_boot", at(memmap_end), False, "the line after the memmap messages"),
        _Point("kho_restore", at(meminit), True, "mem auto-init (the last line before KHO's restore)"),
        _Point("initcalls", at(kho), True, "the first line after KHO's restore"),
        _Point("memmap_init", deferred_start_at, False, "the deferred memmap"),
        _Point("initcalls", at(deferred_end), False, "node N deferred pages initialised"),
        _Point("kernel_to_init", at(initcalls_end), False, "Freeing unused kernel image (initmem) memory"),
        _Point("agent_start", at(run_init), True, "Run /init as init process"),
    ]
    return points


def _liveupdate_initcalls(lines: list[_KernelLine]) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in lines:
        match = _INITCALL.search(line.text)
        if match and _LIVEUPDATE_INITCALL.match(match.group(1)):
            found[match.group(1)] = int(match.group(2)) / 1e6
    return found


def blackout_anatomy(
    lines: Iterable[tuple[float, str]],
    t_kexec: float,
    t_agent: float,
    t_retrieved: float | None = None,
) -> BlackoutAnatomy:
    """The anatomy of one blackout. ``lines``: the console lines the host received after the ``kexec`` mark, as
    (host arrival time, text as received, the kernel's ``[ printk time]`` included); ``t_kexec``, ``t_agent``: the
    host times of the ``kexec`` mark and of the agent's first mark in the next kernel; ``t_retrieved``: the host
    time of the end of the workload's first phase after the kexec (the retrieve), if it ended. Any text is
    accepted: what the console did not show is ``unexplained_s``, never an error."""
    if not t_agent >= t_kexec:
        raise ValueError(f"the agent's start ({t_agent}) must not come before the kexec mark ({t_kexec})")
    kernel = _next_kernel_lines(lines, t_kexec, t_agent)
    points = _points(kernel, _printed_at(kernel, t_kexec))

    segments: list[Segment] = []
    start, phase, unexplained = t_kexec, "kexec_to_console", False
    missing = []
    for point in points:
        if point.at is None:
            if point.required:
                unexplained = True
                missing.append(point.name)
            continue
        at = min(max(point.at, start), t_agent)
        segments.append(Segment(UNEXPLAINED if unexplained else phase, start - t_kexec, at - t_kexec))
        start, phase, unexplained = at, point.phase, False
    segments.append(Segment(UNEXPLAINED if unexplained else phase, start - t_kexec, t_agent - t_kexec))
    if t_retrieved is not None and t_retrieved >= t_agent:
        segments.append(Segment("retrieve", t_agent - t_kexec, t_retrieved - t_kexec))

    kernel_blackout_s = next((s.start_s for s in segments if s.phase == "agent_start"), None)
    return BlackoutAnatomy(
        blackout_s=t_agent - t_kexec,
        segments=segments,
        kernel_blackout_s=kernel_blackout_s,
        missing=missing,
        liveupdate_initcalls=_liveupdate_initcalls(kernel),
        console_lines=len(kernel),
    )


def read_serial_log(path: str | Path) -> list[tuple[float, str]]:
    """A lab VM's ``serial.log`` as (host arrival seconds after the VM started, text) per line; a line without the
    host's stamp (an unterminated last line) gets the previous line's time."""
    lines: list[tuple[float, str]] = []
    with Path(path).open(encoding="utf-8", errors="replace") as log:
        for raw in log:
            raw = raw.rstrip("\n")
            match = _SERIAL_LOG.match(raw)
            if match:
                lines.append((float(match.group(1)), match.group(2)))
            elif lines:
                lines.append((lines[-1][0], raw))
    return lines


def anatomy_of_serial_log(path: str | Path) -> BlackoutAnatomy:
    """The anatomy of the blackout in a recorded ``serial.log``, its marks read from the log itself (the host's
    stamps there are milliseconds). Raises :class:`NoBlackoutInLog` when the log has no kexec mark or no agent
    start after it."""
    lines = read_serial_log(path)
    t_kexec = t_agent = t_retrieved = None
    for arrived, text in lines:
        mark = parse_mark(text)
        if mark is None:
            continue
        event, data = mark
        if t_kexec is None:
            if event == Event.KEXEC:
                t_kexec = arrived
        elif t_agent is None:
            if event == Event.AGENT_START:
                t_agent = arrived
        elif event == Event.PHASE_END:
            t_retrieved = arrived
            break
    if t_kexec is None or t_agent is None:
        what = "no kexec mark" if t_kexec is None else "no agent start after the kexec mark"
        raise NoBlackoutInLog(
            f"{path} has {what}: it holds no blackout (a cycle that never kexec'd or never came back)"
        )
    return blackout_anatomy([line for line in lines if line[0] >= t_kexec], t_kexec, t_agent, t_retrieved)
