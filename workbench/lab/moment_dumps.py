"""Dumping a lab VM at the moments of a live update that no pause of a cycle reaches, by stopping the guest at the
kernel function that begins each one (QEMU's gdbstub, :class:`~workbench.lab.gdb_remote.GdbRemote`).

A cycle that systemd drives (the ``guest`` target) cannot pause, and some moments are never a pause anyway: the
sessions serialized at the kexec, the next kernel before LUO deserializes what it was handed, the sessions
deserialized but not retrieved, the session finished and closed. :data:`MOMENT_STOPS` names the function whose
entry is each; :class:`MomentDumps` sets a breakpoint at ``machine_kexec`` first (the end of the previous kernel)
and only once that is hit at the next kernel's functions, so that the previous kernel's own opens and closes of
``/dev/liveupdate`` are not taken for the next kernel's. At each hit it writes an ELF vmcore (QMP
``dump-guest-memory``) and lets the guest go on. The kernel must boot with ``nokaslr`` (:data:`KERNEL_ARGS`): the
next kernel's addresses are then the previous one's."""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from workbench.lab.capture import KEXEC_STOP_FUNCTION, attach_gdbstub, release_gdbstub
from workbench.lab.errors import InvalidCycle
from workbench.lab.gdb_remote import GdbRemote, GdbRemoteError
from workbench.lab.qemu import QemuVM

__all__ = ["MOMENT_STOPS", "KERNEL_ARGS", "MomentDumps", "check_moments"]

#: moment -> the kernel function at whose entry the guest is in it, in the order a live update reaches them
MOMENT_STOPS = {
    "serialized": KEXEC_STOP_FUNCTION,
    "next_kernel_pending": "luo_session_deserialize",
    "deserialized": "luo_session_retrieve",
    "finished": "luo_session_release",
}
#: what the kernel command line needs for the breakpoints to hold in the next kernel
KERNEL_ARGS = "nokaslr"


def check_moments(moments: list[str]) -> None:
    """Raises :class:`InvalidCycle` naming the moments that can be dumped when ``moments`` holds another."""
    unknown = [m for m in moments if m not in MOMENT_STOPS]
    if unknown:
        raise InvalidCycle(f"--dump-at takes {', '.join(MOMENT_STOPS)}, not {', '.join(map(repr, unknown))}")


@dataclass
class MomentDumps:
    """Dumps ``vm`` at each of ``moments`` (names of :data:`MOMENT_STOPS`) into ``folder`` as
    ``vmcore-<moment>.elf``. :meth:`arm` before the kexec, with the gdbstub open on ``gdb_socket``; :meth:`finish`
    after the cycle. ``dumps`` maps each moment reached to its file, ``errors`` says what went wrong (a moment
    never reached is not an error: :meth:`missing` names it)."""

    vm: QemuVM
    vmlinux: Path
    gdb_socket: Path
    folder: Path
    moments: list[str]
    timeout_s: float = 1800.0
    dumps: dict[str, Path] = field(default_factory=dict)
    #: moment -> (host monotonic time the guest stopped there, seconds it stayed stopped), dumped or not
    stops: dict[str, tuple[float, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: the kernel's KASLR slide found at :meth:`arm` (0 with ``nokaslr``)
    slide: int | None = field(default=None, init=False)
    _gdb: GdbRemote | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def arm(self) -> None:
        """Stops the guest, finds the kernel's slide, sets the breakpoint at ``machine_kexec`` and lets it run."""
        check_moments(self.moments)
        gdb, symbols, slide = attach_gdbstub(self.vm, self.gdb_socket, self.vmlinux, list(MOMENT_STOPS.values()))
        try:
            addresses = {moment: symbols[name] + slide for moment, name in MOMENT_STOPS.items()}
            first = addresses["serialized"]
            armed = {first: ("serialized", gdb.insert_breakpoint(first))}
            gdb.resume()
        except BaseException:
            release_gdbstub(gdb)
            raise
        self.slide = slide
        self._gdb = gdb
        self._thread = threading.Thread(target=self._follow, args=(gdb, armed, addresses), daemon=True, name="dumps")
        self._thread.start()

    def _follow(self, gdb: GdbRemote, armed: dict[int, tuple[str, str]], addresses: dict[str, int]) -> None:
        try:
            while armed and not self._stop.is_set():
                try:
                    reply = gdb.wait_stop(1.0)
                except TimeoutError:
                    continue
                stopped = time.monotonic()
                rip = gdb.rip()
                if rip not in armed:
                    raise GdbRemoteError(f"the guest stopped at {rip:#x} ({reply}), at none of the breakpoints")
                moment, kind = armed.pop(rip)
                gdb.remove_breakpoint(rip, kind)
                if moment in self.moments:
                    path = self.folder / f"vmcore-{moment}.elf"
                    self.vm.qmp().execute("dump-guest-memory", paging=False, protocol=f"file:{path}")
                    self.dumps[moment] = path
                if moment == "serialized":  # the next kernel's functions, from now on
                    for later in self.moments:
                        if later != "serialized":
                            armed[addresses[later]] = (later, gdb.insert_breakpoint(addresses[later]))
                self.stops[moment] = (stopped, time.monotonic() - stopped)
                gdb.resume()
        except Exception:  # noqa: BLE001 (reported by finish() and the cycle's result)
            self.errors.append(traceback.format_exc(limit=3))

    def held_between(self, start: float, end: float) -> float:
        """Seconds the guest stood stopped at the moments reached between host times ``start`` and ``end``
        (what a blackout measured on the host over that span includes and a cycle without dumps would not)."""
        return sum(held for when, held in self.stops.values() if start <= when <= end)

    def missing(self) -> list[str]:
        """The moments asked for and not dumped."""
        return [m for m in self.moments if m not in self.dumps]

    def finish(self, timeout: float = 60.0) -> None:
        """Stops following, removes what is still armed and detaches (the guest runs on)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._gdb is not None:
            with contextlib.suppress(Exception):
                self._gdb.interrupt(10.0)  # the gdbstub takes a detach from a stopped guest
            release_gdbstub(self._gdb)
            self._gdb = None
