"""One preserve → kexec → restore cycle, driven from the host and recorded.

The host boots the lab kernel in QEMU; the initramfs runs :mod:`workbench.lab.agent`, which prepares, preserves,
loads the next kernel and kexecs; the next kernel's initramfs runs the agent again to restore, verify and finish.
Progress arrives as ``WB-MARK`` lines on the serial console, each timestamped on arrival with the host's monotonic
clock. The guest's clocks restart at the kexec, the host's does not: the blackout is the host time from the
``kexec`` mark (printed just before ``reboot(LINUX_REBOOT_CMD_KEXEC)``) to the agent's first line in the new
kernel. Results come back as files in a writable 9p share."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from workbench.environment import REPO_ROOT
from workbench.lab import criu as lab_criu
from workbench.lab.accel import AccelChoice, choose_accelerator
from workbench.lab.guest_conversion import ConversionSpec, conversion_request, resolve_specs
from workbench.lab.guest_conversion import summarize as summarize_conversion
from workbench.lab.initramfs import build_initramfs
from workbench.lab.kernel import LabKernel, build_kernel, cache_root, parse_config, require_live_update
from workbench.lab.liveupdate import check_session_name
from workbench.lab.qemu import QemuVM, SerialLine, VMConfig, qemu_version
from workbench.records import RecordStore, open_store

__all__ = ["CycleParams", "CycleFailed", "CycleCancelled", "CycleEvent", "run_cycle", "record_cycle", "PHASES"]

PAUSE_POINTS = ("prepare", "preserve", "restore")
PHASES = ("boot", "prepare", "convert", "preserve", "load", "kexec", "restore", "verify", "finish")
MARK = "WB-MARK "
_WAITING = {"load": "loading the next kernel", "restore": "retrieving the session", "verify": "verifying"}


@dataclass
class CycleParams:
    """What one cycle does. Sizes in bytes."""

    memfds: int = 2
    memfd_size: int = 64 << 20
    session: str = "workbench"
    tokens: list[int] | None = None
    seed: int = 0
    memory_mb: int | None = None
    cpus: int = 2
    tcg_threads: str = "single"  # "multi": one host thread per vCPU under TCG (faster, see VMConfig)
    next_kernel: str | None = None
    next_config: str | None = None
    kho_scratch: str | None = None
    kernel_args: str = ""
    live_update: bool = True
    pause_after: list[str] = field(default_factory=list)
    dump_after: list[str] = field(default_factory=list)
    dump_format: str = "elf"
    ram_file: bool = False
    faults: dict[str, Any] = field(default_factory=dict)
    qemu_args: list[str] = field(default_factory=list)
    timeout_s: float | None = None
    return_timeout_s: float | None = None
    # workload "criu": a process kept alive with CRIU (workbench.lab.criu); the memfd fields above do not apply
    workload: str = "memfd"
    anon_size: int = 64 << 20
    memfd_region: int = 0
    region_kind: str = "tmpfile"
    images: str = "direct"
    criu: str = "/usr/sbin/criu"
    criu_kdat: str = "probe"
    lazy_pages: bool = False
    # anonymous memory converted into the memfds in the target before preservation (workbench.lab.guest_conversion)
    convert: list[str] = field(default_factory=list)
    convert_copier: str = ""
    convert_threads: int = 1
    pipe_size: int = 0
    convert_limits: bool = False

    def resolved_tokens(self) -> list[int]:
        return list(self.tokens) if self.tokens is not None else [1000 + i for i in range(self.memfds)]

    def resolved_memory_mb(self) -> int:
        if self.memory_mb:
            return self.memory_mb
        if self.workload == "criu":
            return lab_criu.criu_memory_mb(self)
        total_mb = self.memfds * self.memfd_size / (1 << 20)
        copies = 3 if self.convert else 2  # the anonymous sources exist beside the memfds until converted
        return int(max(1024, math.ceil((640 + copies * total_mb) / 256) * 256))

    def conversion_specs(self) -> list[ConversionSpec]:
        return resolve_specs(self.convert, self.memfds, self.convert_copier, self.convert_threads, self.pipe_size)

    def agent_request(self) -> dict[str, Any]:
        """The request.json fields every target shares."""
        request = {
            "memfds": self.memfds,
            "memfd_size": self.memfd_size,
            "session": self.session,
            "tokens": self.resolved_tokens(),
            "seed": self.seed,
            "faults": self.faults,
        }
        if self.convert:
            request.update(conversion_request(self.conversion_specs(), self.convert_limits))
        return request

    def phases_before_load(self) -> tuple[str, ...]:
        """The agent's phases before it loads the next kernel, in order."""
        return ("prepare", "convert", "preserve") if self.convert else ("prepare", "preserve")

    def validate(self) -> None:
        check_session_name(self.session)
        if self.workload not in ("memfd", "criu"):
            raise ValueError(f"the workload is memfd or criu, not {self.workload!r}")
        if self.workload == "criu":
            lab_criu.validate_criu(self)
        if self.memfds < 0:
            raise ValueError("the number of memfds cannot be negative")
        if self.memfd_size <= 0 or self.memfd_size % 4096:
            raise ValueError(f"memfd size {self.memfd_size} is not a positive multiple of the 4096-byte page size")
        if len(self.resolved_tokens()) != self.memfds:
            raise ValueError(f"{len(self.resolved_tokens())} tokens given for {self.memfds} memfds")
        for phase in self.dump_after:
            if phase not in ("preserve", "restore"):
                raise ValueError(f"--dump-after takes preserve or restore, not {phase!r}")
        for phase in self.pause_after:
            if phase not in PAUSE_POINTS:
                raise ValueError(f"a cycle can pause after {', '.join(PAUSE_POINTS)}, not {phase!r}")
        if self.tcg_threads not in ("single", "multi"):
            raise ValueError(f"TCG threads are single or multi, not {self.tcg_threads!r}")
        if self.dump_format not in ("elf", "kdump-zlib"):
            raise ValueError("dump format is elf or kdump-zlib")
        if self.convert and self.workload != "memfd":
            raise ValueError("--convert applies to the memfd workload (CRIU makes its own memfds)")
        self.conversion_specs()


@dataclass(frozen=True)
class CycleEvent:
    """Something the host saw: ``phase`` events carry name and status (begin/end/failed), ``line`` a console
    line, ``state`` a coarse state (booting, running, paused, done, failed)."""

    kind: str
    name: str = ""
    status: str = ""
    seconds: float | None = None
    text: str = ""
    host_time: float = 0.0


class CycleFailed(RuntimeError):
    """A cycle did not complete. ``phase`` says where, ``serial_log`` what the target printed (the serial console
    of a VM; the agent's output over SSH, ``log_name`` says which)."""

    def __init__(
        self,
        message: str,
        phase: str,
        serial_log: Path | None,
        record_id: str | None = None,
        log_name: str = "serial log",
    ):
        super().__init__(message)
        self.phase = phase
        self.serial_log = serial_log
        self.record_id = record_id
        self.log_name = log_name

    def __str__(self) -> str:
        where = f"; {self.log_name}: {self.serial_log}" if self.serial_log else ""
        return f"cycle failed in phase {self.phase}: {self.args[0]}{where}"


class CycleCancelled(KeyboardInterrupt):
    """The user cancelled the cycle; the VM was torn down."""


def _parse_mark(line: SerialLine) -> tuple[str, dict] | None:
    pos = line.text.find(MARK)
    if pos < 0:
        return None
    rest = line.text[pos + len(MARK) :].strip()
    event, _, payload = rest.partition(" ")
    try:
        data = json.loads(payload) if payload.startswith("{") else {"text": payload}
    except json.JSONDecodeError:
        data = {"text": payload}
    return event, data


def _config_of(next_kernel: Path, explicit: str | None) -> str | None:
    candidates = [Path(explicit)] if explicit else [next_kernel.parent / "config", next_kernel.parent / ".config"]
    for c in candidates:
        if c.exists():
            return c.read_text()
    return None


class LineSource(Protocol):
    """Where a target's agent output arrives: a VM's serial console or an SSH channel (see :class:`QemuVM`)."""

    lines: list[SerialLine]

    @property
    def running(self) -> bool: ...

    def wait_for(
        self,
        predicate: Callable[[SerialLine], bool],
        timeout: float,
        start: int = 0,
        cancel: threading.Event | None = None,
    ) -> tuple[int, SerialLine] | None: ...


class MarkRunner:
    """What every target shares: events from the agent's ``WB-MARK`` lines, waiting for marks on a
    :class:`LineSource`, the agent's error, the result built from the agent's JSON files. Subclasses set
    ``source`` and implement ``execute()``."""

    log_name = "serial log"
    kexec_ends_at_agent = True  # the kexec phase ends at the agent's first line in the next kernel

    def __init__(
        self,
        params: CycleParams,
        run,
        on_event: Callable[[CycleEvent], None] | None,
        cancel: threading.Event | None,
    ):
        self.p = params
        self.run = run
        self.on_event = on_event or (lambda e: None)
        self.cancel = cancel or threading.Event()
        self.workdir: Path = run.artifacts_dir
        self.results = self.workdir / "guest"
        self.results.mkdir(parents=True, exist_ok=True)
        self.marks: list[tuple[str, dict, float]] = []
        self._pos = 0  # lines before this index have been consumed by wait_mark
        self.phase = "boot"
        self.source: LineSource | None = None

    @property
    def log_path(self) -> Path | None:
        return None

    def fail(self, message: str, phase: str | None = None) -> CycleFailed:
        return CycleFailed(message, phase or self.phase, self.log_path, log_name=self.log_name)

    def source_stopped(self, what: str) -> str:
        return f"the target stopped while {what}"

    def failure_details(self) -> dict[str, Any]:
        """Extra facts recorded with a failed run."""
        return {}

    def execute(self) -> dict[str, Any]:
        raise NotImplementedError

    def emit(self, **kw) -> None:
        self.on_event(CycleEvent(**kw))

    def on_line(self, line: SerialLine) -> None:
        self.emit(kind="line", text=line.text, host_time=line.host_time)
        parsed = _parse_mark(line)
        if parsed is None:
            return
        event, data = parsed
        self.marks.append((event, data, line.host_time))
        if event == "phase-begin":
            self.emit(kind="phase", name=data["phase"], status="begin", host_time=line.host_time)
        elif event == "phase-end":
            self.emit(kind="phase", name=data["phase"], status="end", seconds=data.get("s"), host_time=line.host_time)
        elif event == "kexec":
            self.emit(kind="phase", name="kexec", status="begin", host_time=line.host_time)
        elif event == "agent-start" and data.get("phase") == "restore" and self.kexec_ends_at_agent:
            self.emit(kind="phase", name="kexec", status="end", host_time=line.host_time)

    # -- waiting ---------------------------------------------------------------------------------------------
    def wait_mark(self, events: tuple[str, ...], timeout: float, what: str) -> tuple[str, dict, float]:
        source = self.source
        assert source is not None
        start = self._pos
        deadline = time.monotonic() + timeout
        while True:
            if self.cancel.is_set():
                raise CycleCancelled()
            remaining = deadline - time.monotonic()
            hit = source.wait_for(
                lambda ln: (m := _parse_mark(ln)) is not None and m[0] in events + ("error", "init-error"),
                timeout=max(0.0, min(remaining, 0.5)),
                start=start,
                cancel=self.cancel,
            )
            if hit is not None:
                index, line = hit
                self._pos = index + 1
                event, data = _parse_mark(line)  # type: ignore[misc]
                if event in ("error", "init-error"):
                    phase = data.get("phase") or self.phase
                    detail = self._agent_error() or data.get("message") or data.get("text")
                    raise self.fail(f"the agent reported: {detail}", phase)
                return event, data, line.host_time
            if self.cancel.is_set():
                raise CycleCancelled()
            if not source.running:
                raise self.fail(self.source_stopped(what))
            if time.monotonic() >= deadline:
                raise self.fail(f"timed out after {timeout:.0f} s {what}")
            start = len(source.lines)

    def _agent_error(self) -> str | None:
        for name in ("restore.json", "prepare.json"):
            path = self.results / name
            if path.exists():
                err = json.loads(path.read_text()).get("error")
                if err:
                    return f"{err['type']}: {err['message']}"
        return None

    def agent_result(self, prepare: dict, restore: dict, t_kexec: float, t_back: float) -> dict[str, Any]:
        """The result fields every target reports, from the agent's prepare.json and restore.json and the host's
        times of the kexec and of the target's return."""
        guest_phases = {**prepare.get("phases", {}), **restore.get("phases", {})}
        before = ("prepare", "convert", "preserve", "load")
        phases = {name: guest_phases[name] for name in before if name in guest_phases}
        phases["kexec"] = t_back - t_kexec
        for name in ("restore", "verify", "finish"):
            if name in guest_phases:
                phases[name] = guest_phases[name]
        memfds = restore.get("memfds", [])
        result = {
            "verified": bool(restore.get("verified")) and bool(restore.get("finished")),
            "pages_checked": restore.get("pages_checked", 0),
            "session": prepare.get("session", self.p.session),
            "phases": phases,
            "blackout_s": t_back - t_kexec,
            "kernel_release_before": prepare.get("kernel_release_before"),
            "kernel_release_after": restore.get("kernel_release_after"),
            "kernel_release": {
                "before": prepare.get("kernel_release_before"),
                "after": restore.get("kernel_release_after"),
            },
            "memfds": memfds,
            "differing_pages": {str(m["memfd"]): m["differing_pages"] for m in memfds if m["differing_count"]},
            "hash": prepare.get("hash_impl"),
        }
        if "modify_after_preserve" in prepare:
            result["modify_after_preserve"] = prepare["modify_after_preserve"]
        if prepare.get("conversions"):
            result.update(summarize_conversion(prepare, restore, phases, result["blackout_s"]))
        if restore.get("events") or prepare.get("events"):
            result["events"] = prepare.get("events", []) + restore.get("events", [])
        return result


class _CycleRunner(MarkRunner):
    """The QEMU target: the lab VM on this machine."""

    def __init__(
        self,
        params: CycleParams,
        kernel: LabKernel,
        run,
        on_event: Callable[[CycleEvent], None] | None,
        cancel: threading.Event | None,
        on_pause: Callable[[str, QemuVM], None] | None,
    ):
        super().__init__(params, run, on_event, cancel)
        self.kernel = kernel
        self.on_pause = on_pause
        self.vm: QemuVM | None = None
        self.vmcores: dict[str, str] = {}

    @property
    def log_path(self) -> Path | None:
        return self.vm.serial_log if self.vm is not None else None

    def source_stopped(self, what: str) -> str:
        return f"the VM stopped while {what} (QEMU exit {self.vm.proc.returncode})"

    # -- the cycle -------------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        p = self.p
        initrd = build_initramfs()
        next_kernel = Path(p.next_kernel) if p.next_kernel else self.kernel.bzimage
        accel = choose_accelerator(self.kernel.bzimage, initrd)
        self.run.update_environment(
            target_kernel_release=self.kernel.release,
            target_config_hash=self.kernel.config_hash,
            target_kernel_version=self.kernel.version,
            accelerator=accel.accel,
            accelerator_reason=accel.reason,
            qemu_version=qemu_version(),
        )
        tcg = accel.accel == "tcg"
        if tcg:
            self.run.update_environment(tcg_threads=p.tcg_threads)
        total_gib = p.memfds * p.memfd_size / (1 << 30)
        if p.workload == "criu":
            total_gib = 3 * (p.anon_size + p.memfd_region) / (1 << 30)
        boot_timeout = 240 if tcg else 90
        work_timeout = (120 + 240 * total_gib) * (1 if tcg else 0.25)
        if p.timeout_s:
            boot_timeout = work_timeout = p.timeout_s
        request = {
            **p.agent_request(),
            "next_kernel": str(next_kernel),
            "next_initrd": str(initrd),
            "pause_after": sorted(set(p.pause_after) | set(p.dump_after)),
        }
        if p.workload == "criu":
            request.update(lab_criu.criu_request(p))
        (self.results / "request.json").write_text(json.dumps(request, indent=1))
        args = ["console=ttyS0", "panic=-1", "loglevel=6", "wb.phase=prepare"]
        if tcg:
            args.append("no_timer_check")  # under a loaded TCG host the IO-APIC timer check can fail spuriously
        if p.live_update:
            args += ["kho=on", "liveupdate=on"]
        if p.kho_scratch:
            args.append(f"kho_scratch={p.kho_scratch}")
        args += [f"wb.python={sys.executable}", f"wb.repo={REPO_ROOT}"]
        if p.kernel_args:
            args += p.kernel_args.split()
        if p.workload == "criu" and "vdso=" not in p.kernel_args:
            args += lab_criu.CRIU_KERNEL_ARGS.split()
        guest_cache = cache_root() / "guest-cache"
        (guest_cache / "numba").mkdir(parents=True, exist_ok=True)
        config = VMConfig(
            kernel=self.kernel.bzimage,
            initrd=initrd,
            cmdline=" ".join(args),
            memory_mb=p.resolved_memory_mb(),
            cpus=p.cpus,
            accel=accel.accel,
            tcg_threads=p.tcg_threads,
            shares={
                "hostroot": (Path("/"), True),
                "wbresults": (self.results, False),
                "wbcache": (guest_cache, False),
            },
            ram_file=(self.workdir / "guest-ram") if p.ram_file else None,
            extra_args=list(p.qemu_args),
        )
        self.emit(kind="state", name="booting", text=f"{accel.accel}: {accel.reason}")
        self.vm = QemuVM(config, self.workdir, on_line=self.on_line)
        self.source = self.vm
        t_boot = time.monotonic()
        with self.vm:
            self.emit(kind="phase", name="boot", status="begin", host_time=t_boot)
            _, _, t_agent = self.wait_mark(("agent-start",), boot_timeout, "waiting for the agent to start")
            self.emit(kind="phase", name="boot", status="end", seconds=t_agent - t_boot, host_time=t_agent)
            self.emit(kind="state", name="running")
            for phase in (*p.phases_before_load(), "load") if p.workload != "criu" else lab_criu.PHASES_BEFORE:
                self.phase = phase
                self.wait_mark(("phase-end",), work_timeout, _WAITING.get(phase, f"in phase {phase}"))
                if phase in request["pause_after"]:
                    self.paused(phase, work_timeout)
            self.phase = "kexec"
            _, _, t_kexec = self.wait_mark(("kexec",), work_timeout, "waiting for the kexec")
            back_timeout = p.return_timeout_s or boot_timeout
            _, _, t_init = self.wait_mark(
                ("init",), back_timeout, "waiting for the next kernel to boot (it did not come back)"
            )
            _, _, t_back = self.wait_mark(
                ("agent-start",), back_timeout, "waiting for the agent in the next kernel (it did not come back)"
            )
            for phase in ("restore", "verify") if p.workload != "criu" else lab_criu.PHASES_AFTER:
                self.phase = phase
                self.wait_mark(("phase-end",), work_timeout, _WAITING.get(phase, f"in phase {phase}"))
                if phase in request["pause_after"]:
                    self.paused(phase, work_timeout)
            self.phase = "finish"
            self.wait_mark(("done",), work_timeout, "finishing the session")
            self.vm.wait_exit(30)
            self.emit(kind="state", name="done")
        return self.collect(t_boot, t_agent, t_kexec, t_init, t_back, accel)

    def paused(self, phase: str, timeout: float) -> None:
        self.wait_mark(("paused",), timeout, f"waiting for the pause after {phase}")
        self.emit(kind="state", name="paused", text=phase)
        try:
            if phase in self.p.dump_after:
                path = self.workdir / f"vmcore-{phase}.{'elf' if self.p.dump_format == 'elf' else 'kdump'}"
                self.vm.dump_guest_memory(path, self.p.dump_format)
                self.vmcores[phase] = str(path)
            if self.on_pause is not None:
                self.on_pause(phase, self.vm)
        finally:
            (self.results / f"continue-{phase}").write_text("go\n")
        self.emit(kind="state", name="running")

    def collect(self, t_boot, t_agent, t_kexec, t_init, t_back, accel: AccelChoice) -> dict[str, Any]:
        prepare = json.loads((self.results / "prepare.json").read_text())
        restore = json.loads((self.results / "restore.json").read_text())
        result = self.agent_result(prepare, restore, t_kexec, t_back)
        result.update(
            {
                "blackout_breakdown": {"kexec_to_init_s": t_init - t_kexec, "init_to_agent_s": t_back - t_init},
                "boot_s": t_agent - t_boot,
                "accelerator": accel.accel,
                "accelerator_reason": accel.reason,
                "memory_mb": self.p.resolved_memory_mb(),
                "serial_log": str(self.vm.serial_log),
                "run_dir": str(self.workdir),
            }
        )
        if self.p.workload == "criu":
            result = lab_criu.collect_criu(result, self.marks, prepare, restore)
        if self.vmcores:
            result["vmcores"] = self.vmcores
            result["vmcore"] = next(iter(self.vmcores.values())) if len(self.vmcores) == 1 else self.vmcores
            result["vmlinux"] = str(self.kernel.vmlinux)
        return result


def _tables(result: dict[str, Any], marks: list[tuple[str, dict, float]]) -> dict[str, pd.DataFrame]:
    t0 = marks[0][2] if marks else 0.0
    return {
        "phases": pd.DataFrame({"phase": list(result["phases"]), "seconds": list(result["phases"].values())}),
        "memfds": pd.DataFrame(
            [{k: v for k, v in m.items() if k != "differing_pages"} for m in result["memfds"]],
            columns=["memfd", "token", "size", "expected_size", "pages", "differing_count"],
        ),
        "marks": pd.DataFrame(
            [{"event": e, "detail": json.dumps(d), "host_s": t - t0} for e, d, t in marks],
            columns=["event", "detail", "host_s"],
        ),
    }


def run_cycle(
    params: CycleParams | None = None,
    *,
    kernel: LabKernel | None = None,
    store: RecordStore | None = None,
    on_event: Callable[[CycleEvent], None] | None = None,
    cancel: threading.Event | None = None,
    on_pause: Callable[[str, QemuVM], None] | None = None,
) -> dict[str, Any]:
    """Runs one cycle in a lab VM and records it (kind ``lab.cycle``). Returns the result dict (see the CLI's
    ``--json``); raises :class:`CycleFailed` (recorded ``failed``, serial log kept) or :class:`CycleCancelled`
    (recorded ``interrupted``)."""
    params = params or CycleParams()
    params.validate()
    kernel = kernel or build_kernel()
    require_live_update(kernel.config_file.read_text(), f"the lab kernel {kernel.bzimage}")
    if params.next_kernel:
        nxt = Path(params.next_kernel)
        if not nxt.exists():
            raise FileNotFoundError(f"next kernel {nxt} does not exist")
        text = _config_of(nxt, params.next_config)
        if text is None:
            raise ValueError(
                f"cannot tell whether {nxt} supports KHO/LUO: put its config beside it (config or .config) "
                "or pass --next-config"
            )
        require_live_update(text, f"the next kernel {nxt}")
    store = store or open_store()
    return record_cycle(
        store,
        {"target": "qemu", **asdict(params)},
        lambda run: _CycleRunner(params, kernel, run, on_event, cancel, on_pause),
    )


def record_cycle(store: RecordStore, record_params: dict[str, Any], make_runner: Callable[[Any], MarkRunner]) -> dict:
    """Runs ``make_runner(run).execute()`` inside a ``lab.cycle`` record with ``record_params``: a failure is
    recorded ``failed`` with its phase and log, a result that did not verify is recorded ``failed`` and returned,
    a dry run (``dry_run`` true in the result) is recorded ``ok``."""
    try:
        with store.run("lab.cycle", record_params) as run:
            runner = make_runner(run)
            try:
                result = runner.execute()
            except CycleFailed as exc:
                exc.record_id = run.id
                run.update_result(
                    failed_phase=exc.phase,
                    serial_log=str(exc.serial_log),
                    run_dir=str(runner.workdir),
                    **runner.failure_details(),
                )
                for name, frame in _tables({"phases": {}, "memfds": []}, runner.marks).items():
                    run.add_table(name, frame)
                runner.emit(kind="state", name="failed", text=str(exc))
                raise
            except CycleCancelled:
                runner.emit(kind="state", name="cancelled")
                raise
            result["record_id"] = run.id
            for name, frame in _tables(result, runner.marks).items():
                run.add_table(name, frame)
            run.update_result(**{k: v for k, v in result.items() if k != "record_id"})
            if not result["verified"] and not result.get("dry_run"):
                runner.emit(kind="state", name="unverified")
                raise Unverified(result)
    except Unverified:
        pass  # recorded as failed; the caller gets the result with verified false and the differing pages
    return result


class Unverified(RuntimeError):
    """Raised inside the record so that a cycle whose data came back different is recorded ``failed``."""

    def __init__(self, result: dict[str, Any]):
        counts = {m["memfd"]: m["differing_count"] for m in result["memfds"] if m["differing_count"]}
        sizes = [m for m in result["memfds"] if m["size"] != m["expected_size"]]
        detail = f"differing pages per memfd: {counts}" if counts else ""
        if sizes:
            detail += f" memfds with the wrong size: {[m['memfd'] for m in sizes]}"
        super().__init__(f"verification failed: {detail or 'no memfd came back'}")


def kernel_config_options(kernel: LabKernel) -> dict[str, str]:
    return parse_config(kernel.config_file.read_text())
