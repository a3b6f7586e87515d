"""The ``qemu`` target: the lab kernel booted in a QEMU VM on this machine (:mod:`workbench.lab.qemu`), its
busybox initramfs running the agent over the host's read-only root (:mod:`workbench.lab.initramfs`)."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.elf import ElfError
from workbench.environment import REPO_ROOT
from workbench.lab.accel import AccelChoice, choose_accelerator
from workbench.lab.blackout_anatomy import anatomy_console_args, blackout_anatomy
from workbench.lab.errors import InvalidCycle, PreflightUnavailable, ShareFileError, TargetLost
from workbench.lab.initramfs import build_initramfs
from workbench.lab.kdump import (
    CRASH_KHO_SCRATCH,
    CRASHKERNEL,
    CRASHKERNEL_MB,
    DUMP_FILE,
    capture_request,
    claim_dump,
    crash_pause_point,
    crash_result,
    makedumpfile_output,
)
from workbench.lab.kernel import LabKernel, build_kernel, cache_root, require_live_update, resolve_kernel
from workbench.lab.params import CycleParams
from workbench.lab.preflight import Preflight, accepted_strings, preflight
from workbench.lab.protocol import Event, Request, continue_flag, state_file
from workbench.lab.qemu import QemuVM, VMConfig, qemu_version
from workbench.lab.runner import CycleEvent, MarkRunner
from workbench.lab.target import Target, register
from workbench.lab.workload import Workload

__all__ = ["QemuTarget", "DUMP_POINTS", "guest_cache", "lab_kernel_args"]

DUMP_POINTS = ("preserve", "restore")
DUMP_FORMATS = ("elf", "kdump-zlib")


def guest_cache() -> Path:
    """The cache folder the guest writes through 9p (numba's compiled kernels survive between boots)."""
    path = cache_root() / "guest-cache"
    (path / "numba").mkdir(parents=True, exist_ok=True)
    return path


def lab_kernel_args(phase: str = "prepare", *, tcg: bool = False, live_update: bool = True) -> list[str]:
    """The lab VM's kernel command line: serial console, no reboot on panic, the agent's phase, KHO and LUO on, and
    where the guest finds this machine's Python and the repository."""
    args = ["console=ttyS0", "panic=-1", "loglevel=6", f"wb.phase={phase}"]
    if tcg:
        args.append("no_timer_check")  # under a loaded TCG host the IO-APIC timer check can fail spuriously
    if live_update:
        args += ["kho=on", "liveupdate=on"]
    return args


def _config_of(next_kernel: Path, explicit: str | None) -> str | None:
    candidates = [Path(explicit)] if explicit else [next_kernel.parent / "config", next_kernel.parent / ".config"]
    for c in candidates:
        if c.exists():
            return c.read_text()
    return None


@register
@dataclass
class QemuTarget(Target):
    """``kernel``: the lab kernel to boot, a :class:`LabKernel` or a name (``7.2``, ``7.3``, ``7.2+deferred-init``,
    a path; see :func:`~workbench.lab.kernel_name.parse_kernel_name`), built on first use (default: the lab's
    default kernel);
    ``memory_mb``: guest RAM (default: what the workload needs); ``cpus``; ``tcg_threads``: ``single`` (all vCPUs
    on one host thread, the default: see :class:`VMConfig`) or ``multi``; ``kho_scratch``, ``kernel_args``: the
    boot command line; ``live_update``: boot with ``kho=on liveupdate=on``; ``dump_after``: phases after which a
    vmcore of the guest goes into the run's folder, in ``dump_format``; ``ram_file``: guest RAM in a file the host
    can read; ``qemu_args``: more QEMU arguments."""

    name = "qemu"
    supports_kdump = True

    kernel: LabKernel | str | None = None
    memory_mb: int | None = None
    cpus: int = 2
    tcg_threads: str = "single"
    kho_scratch: str | None = None
    kernel_args: str = ""
    live_update: bool = True
    dump_after: list[str] = field(default_factory=list)
    dump_format: str = "elf"
    ram_file: bool = False
    qemu_args: list[str] = field(default_factory=list)
    #: the kernel to kexec into, found by :meth:`prepare` (None: the one that booted)
    next: LabKernel | Path | None = field(default=None, init=False, repr=False, compare=False)

    def validate(self, workload: Workload, params: CycleParams) -> None:
        super().validate(workload, params)
        for phase in self.dump_after:
            if phase not in DUMP_POINTS:
                raise InvalidCycle(f"--dump-after takes {' or '.join(DUMP_POINTS)}, not {phase!r}")
        if self.tcg_threads not in ("single", "multi"):
            raise InvalidCycle(f"TCG threads are single or multi, not {self.tcg_threads!r}")
        if self.dump_format not in DUMP_FORMATS:
            raise InvalidCycle(f"dump format is {' or '.join(DUMP_FORMATS)}, not {self.dump_format!r}")
        if self.cpus < 1:
            raise InvalidCycle("a VM needs at least one CPU")
        if self.memory_mb is not None and self.memory_mb < 256:
            raise InvalidCycle(f"guest memory {self.memory_mb} MiB is too small: give at least 256M")

    def prepare(self, workload: Workload, params: CycleParams) -> None:
        if isinstance(self.kernel, str):
            self.kernel = resolve_kernel(self.kernel)
        self.kernel = self.kernel or build_kernel()
        require_live_update(self.kernel.config_file.read_text(), f"the lab kernel {self.kernel.bzimage}")
        self.next = self.next_kernel(params)

    @property
    def following(self) -> LabKernel | Path | str | None:
        """The kernel the cycle kexecs into: :attr:`next`, or the one that boots when the cycle names none."""
        return self.next if self.next is not None else self.kernel

    def preflight(self, params: CycleParams) -> Preflight:
        """The preflight of the kexec from the booted lab kernel into the next one (itself when none is named);
        unavailable for a next kernel given as a bare bzImage, or a kernel whose source tree or vmlinux is not at
        hand."""
        nxt = self.following
        if not isinstance(nxt, LabKernel) or not isinstance(self.kernel, LabKernel):
            raise PreflightUnavailable("the next kernel is a bare bzImage: its handover formats cannot be read")
        try:
            return preflight(self.kernel, nxt)
        except (OSError, ElfError) as exc:  # a prebuilt kernel without its source tree or a readable vmlinux
            raise PreflightUnavailable(str(exc)) from None

    @staticmethod
    def next_kernel(params: CycleParams) -> LabKernel | Path | None:
        """The kernel to kexec into: a :class:`LabKernel` for a kernel name (built on first use), the bzImage for a
        file given with its config beside it or ``next_config``, None for the one that booted."""
        if not params.next_kernel:
            return None
        nxt = Path(params.next_kernel)
        if not nxt.is_file():
            if "/" in params.next_kernel and not nxt.exists():
                raise FileNotFoundError(f"next kernel {nxt} does not exist")
            lab = resolve_kernel(params.next_kernel)
            require_live_update(lab.config_file.read_text(), f"the next kernel {lab.name}")
            return lab
        text = _config_of(nxt, params.next_config)
        if text is None:
            raise InvalidCycle(
                f"cannot tell whether {nxt} supports KHO/LUO: put its config beside it (config or .config) "
                "or pass --next-config"
            )
        require_live_update(text, f"the next kernel {nxt}")
        return nxt

    def memory_for(self, workload: Workload, crash_after: str | None = None) -> int:
        """The guest RAM in MiB: ``memory_mb`` when given, else what ``workload`` needs plus, for a cycle that
        crashes on purpose, the capture kernel's ``crashkernel=`` reservation, which the kernel takes out of it.

        :param workload: the cycle's workload
        :param crash_after: the cycle's ``--crash-after`` point (None: no crash)
        """
        if self.memory_mb:
            return self.memory_mb
        reserved = CRASHKERNEL_MB if crash_after and "crashkernel=" not in self.kernel_args else 0
        return workload.memory_mb() + reserved

    def record_params(self) -> dict[str, Any]:
        kernel = self.kernel.name if isinstance(self.kernel, LabKernel) else self.kernel
        return {
            "kernel": kernel,
            "memory_mb": self.memory_mb,
            "cpus": self.cpus,
            "tcg_threads": self.tcg_threads,
            "kho_scratch": self.kho_scratch,
            "kernel_args": self.kernel_args,
            "live_update": self.live_update,
            "dump_after": list(self.dump_after),
            "dump_format": self.dump_format,
            "ram_file": self.ram_file,
            "qemu_args": list(self.qemu_args),
        }

    def runner(self, workload, params, run, on_event, cancel, on_pause) -> MarkRunner:
        return QemuRunner(self, workload, params, run, on_event, cancel, on_pause)


class QemuRunner(MarkRunner):
    """Boots the lab VM, waits for the agent's marks through the kexec and back, pauses and dumps on request."""

    def __init__(
        self,
        target: QemuTarget,
        workload: Workload,
        params: CycleParams,
        run,
        on_event: Callable[[CycleEvent], None] | None,
        cancel: threading.Event | None,
        on_pause: Callable[[str, QemuVM], None] | None,
    ):
        super().__init__(workload, params, run, on_event, cancel)
        self.target = target
        self.kernel: LabKernel = target.kernel  # type: ignore[assignment]
        self.on_pause = on_pause
        self.vm: QemuVM | None = None
        self.vmcores: dict[str, str] = {}

    @property
    def log_path(self) -> Path | None:
        return self.vm.serial_log if self.vm is not None else None

    def source_stopped(self, what: str) -> str:
        return f"the VM stopped while {what} (QEMU exit {self.vm.proc.returncode})"

    def live_preflight_accepts(self) -> list[str] | None:
        """What the next kernel accepts, for the agent's live check before the kexec (None: no check, when the
        cycle has no preflight, is forced, or kexecs into a bare bzImage)."""
        nxt = self.target.following
        if not self.p.preflight or self.p.force or not isinstance(nxt, LabKernel):
            return None
        return accepted_strings(nxt)

    def execute(self) -> dict[str, Any]:
        p, t, w = self.p, self.target, self.workload
        initrd = build_initramfs()
        nxt = t.next
        next_kernel = nxt.bzimage if isinstance(nxt, LabKernel) else (nxt or self.kernel.bzimage)
        accel = choose_accelerator(self.kernel.bzimage, initrd)
        self.run.update_environment(
            target_kernel_release=self.kernel.release,
            target_config_hash=self.kernel.config_hash,
            target_kernel_version=self.kernel.version,
            accelerator=accel.accel,
            accelerator_reason=accel.reason,
            qemu_version=qemu_version(),
            next_kernel_release=nxt.release if isinstance(nxt, LabKernel) else None if nxt else self.kernel.release,
        )
        tcg = accel.accel == "tcg"
        if tcg:
            self.run.update_environment(tcg_threads=t.tcg_threads)
        boot_timeout = 240 if tcg else 90
        work_timeout = (120 + 240 * w.timeout_bytes() / (1 << 30)) * (1 if tcg else 0.25)
        if p.timeout_s:
            boot_timeout = work_timeout = p.timeout_s
        pause_after = sorted(set(p.pause_after) | set(t.dump_after))
        crash = p.faults.crash_after
        faults = {**p.faults.to_request(), **w.faults()}
        if crash:
            capture = next_kernel if crash_pause_point(crash) == "restore" else self.kernel.bzimage
            faults["crash_after"] = capture_request(crash, capture, initrd, tcg)
        Request(
            workload=w.name,
            session=p.session,
            next_kernel=str(next_kernel),
            next_initrd=str(initrd),
            pause_after=pause_after,
            faults=faults,
            workload_fields=w.request(),
            preflight_accepts=self.live_preflight_accepts(),
        ).write(self.results)
        args = anatomy_console_args(lab_kernel_args(tcg=tcg, live_update=t.live_update))
        if t.kho_scratch:
            args.append(f"kho_scratch={t.kho_scratch}")
        elif crash:
            args.append(f"kho_scratch={CRASH_KHO_SCRATCH}")
        args += [f"wb.python={sys.executable}", f"wb.repo={REPO_ROOT}"]
        args += t.kernel_args.split()
        args += [a for a in w.kernel_args() if a.partition("=")[0] + "=" not in t.kernel_args]
        if crash and "crashkernel=" not in t.kernel_args:
            args.append(f"crashkernel={CRASHKERNEL}")
        config = VMConfig(
            kernel=self.kernel.bzimage,
            initrd=initrd,
            cmdline=" ".join(args),
            memory_mb=t.memory_for(w, crash),
            cpus=t.cpus,
            accel=accel.accel,
            tcg_threads=t.tcg_threads,
            shares={
                "hostroot": (Path("/"), True),
                "wbresults": (self.results, False),
                "wbcache": (guest_cache(), False),
            },
            ram_file=(self.workdir / "guest-ram") if t.ram_file else None,
            extra_args=list(t.qemu_args),
        )
        self.emit(kind="state", name="booting", text=f"{accel.accel}: {accel.reason}")
        self.vm = QemuVM(config, self.workdir, on_line=self.on_line)
        self.source = self.vm
        t_boot = time.monotonic()
        with self.vm:
            self.emit(kind="phase", name="boot", status="begin", host_time=t_boot)
            _, _, t_agent = self.wait_mark((Event.AGENT_START,), boot_timeout, "waiting for the agent to start")
            self.emit(kind="phase", name="boot", status="end", seconds=t_agent - t_boot, host_time=t_agent)
            self.emit(kind="state", name="running")
            crash_timeout = boot_timeout + work_timeout
            if crash and crash_pause_point(crash) == "preserve":
                before = w.phases_before_kexec
                self.wait_phases(before[: before.index("preserve") + 1], pause_after, work_timeout)
                return self.capture(crash, crash_timeout, t_boot, t_agent, accel)
            self.wait_phases(w.phases_before_kexec, pause_after, work_timeout)
            self.phase = "kexec"
            _, _, t_kexec = self.wait_mark((Event.KEXEC,), work_timeout, "waiting for the kexec")
            back_timeout = p.return_timeout_s or boot_timeout
            _, _, t_init = self.wait_mark(
                (Event.INIT,), back_timeout, "waiting for the next kernel to boot (it did not come back)"
            )
            _, _, t_back = self.wait_mark(
                (Event.AGENT_START,), back_timeout, "waiting for the agent in the next kernel (it did not come back)"
            )
            if crash:
                after = w.phases_after_kexec
                self.wait_phases(after[: after.index("restore") + 1], pause_after, work_timeout)
                return self.capture(crash, crash_timeout, t_boot, t_agent, accel)
            self.wait_phases(w.phases_after_kexec, pause_after, work_timeout)
            self.phase = "finish"
            self.wait_mark((Event.DONE,), work_timeout, "finishing the session")
            self.vm.wait_exit(30)
            self.emit(kind="state", name="done")
        return self.collect(t_boot, t_agent, t_kexec, t_init, t_back, accel)

    def capture(self, point: str, timeout: float, t_boot: float, t_agent: float, accel: AccelChoice) -> dict:
        """After the crash at ``point``: waits for the panic, the capture kernel and its dump, then QEMU's exit;
        the crashed cycle's result (:func:`~workbench.lab.kdump.crash_result`)."""
        self.phase = "crash"
        _, _, t_crash = self.wait_mark((Event.CRASH,), timeout, f"waiting for the panic after {point}")
        self.emit(kind="state", name="crashing", text=f"panic after {point}: the capture kernel takes over")
        self.phase = "kdump"
        t_start = math.nan
        try:
            _, _, t_start = self.wait_mark((Event.KDUMP_START,), timeout, "waiting for the capture kernel to boot")
            ends = (Event.KDUMP_SAVED, Event.KDUMP_ERROR)
            event, data, t_end = self.wait_mark(ends, timeout, "waiting for the kdump")
            marks_seen = True
        except TargetLost:
            # The capture kernel renames its dump into place only when makedumpfile succeeded: a dump there with its
            # marks missing (a serial console that dropped characters) is a saved dump; claim_dump still checks it.
            if not (self.results / DUMP_FILE).is_file():
                raise
            event, data, t_end, marks_seen = Event.KDUMP_SAVED, {"file": DUMP_FILE}, time.monotonic(), False
        self.vm.wait_exit(30)
        tail = makedumpfile_output(self.results)
        if event == Event.KDUMP_ERROR:
            raise self.fail(f"makedumpfile failed in the capture kernel (exit {data.get('rc')}): {tail.strip()}")
        try:
            vmcore = claim_dump(self.results, data.get("file"), self.workdir)
        except ShareFileError as exc:
            raise self.fail(str(exc)) from None
        states = [self.read_state(p) if (self.results / state_file(p)).exists() else {} for p in ("prepare", "restore")]
        crashed = self.target.following if crash_pause_point(point) == "restore" else self.kernel
        vmlinux = crashed.vmlinux if isinstance(crashed, LabKernel) else None
        result = crash_result(point, vmcore, vmlinux, *states, tail, self.p.session)
        if self.vmcores:
            result["vmcores"] = {**self.vmcores, "crash": str(vmcore)}
        result["kdump"].update(crash_to_capture_s=t_start - t_crash, capture_s=t_end - t_crash, marks_seen=marks_seen)
        result.update(
            {
                "boot_s": t_agent - t_boot,
                "accelerator": accel.accel,
                "accelerator_reason": accel.reason,
                "memory_mb": self.target.memory_for(self.workload, self.p.faults.crash_after),
                "serial_log": str(self.vm.serial_log),
                "run_dir": str(self.workdir),
            }
        )
        return result

    def paused(self, phase: str, timeout: float) -> None:
        self.wait_mark((Event.PAUSED,), timeout, f"waiting for the pause after {phase}")
        self.emit(kind="state", name="paused", text=phase)
        try:
            if phase in self.target.dump_after:
                fmt = self.target.dump_format
                path = self.workdir / f"vmcore-{phase}.{'elf' if fmt == 'elf' else 'kdump'}"
                self.vm.dump_guest_memory(path, fmt)
                self.vmcores[phase] = str(path)
            if self.on_pause is not None:
                self.on_pause(phase, self.vm)
        finally:
            (self.results / continue_flag(phase)).write_text("go\n")
        self.emit(kind="state", name="running")

    def blackout_anatomy(self, t_kexec: float, t_back: float) -> dict[str, Any]:
        """The blackout as named phases (:mod:`workbench.lab.blackout_anatomy`) from the console lines after the
        kexec mark, ``retrieve`` ending with the workload's first phase after the kexec."""
        first = self.workload.phases_after_kexec[:1]
        t_retrieved = next(
            (t for e, d, t in self.marks if e == Event.PHASE_END and t >= t_back and d.get("phase") in first), None
        )
        after = [(line.host_time, line.text) for line in self.vm.lines if line.host_time >= t_kexec]
        return blackout_anatomy(after, t_kexec, t_back, t_retrieved).as_result()

    def collect(self, t_boot, t_agent, t_kexec, t_init, t_back, accel: AccelChoice) -> dict[str, Any]:
        prepare, restore = self.read_state("prepare"), self.read_state("restore")
        result = self.agent_result(prepare, restore, t_kexec, t_back)
        result.update(self.blackout_anatomy(t_kexec, t_back))
        result.update(
            {
                "blackout_breakdown": {"kexec_to_init_s": t_init - t_kexec, "init_to_agent_s": t_back - t_init},
                "boot_s": t_agent - t_boot,
                "accelerator": accel.accel,
                "accelerator_reason": accel.reason,
                "memory_mb": self.target.memory_for(self.workload, self.p.faults.crash_after),
                "serial_log": str(self.vm.serial_log),
                "run_dir": str(self.workdir),
            }
        )
        if self.vmcores:
            result["vmcores"] = self.vmcores
            result["vmcore"] = next(iter(self.vmcores.values())) if len(self.vmcores) == 1 else self.vmcores
            result["vmlinux"] = str(self.kernel.vmlinux)
        return result
