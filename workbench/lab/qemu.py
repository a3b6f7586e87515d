"""A lab VM in QEMU: the serial console read line by line with host timestamps, a QMP socket, 9p shares, and a
teardown that leaves no QEMU process behind (success, failure, timeout, Ctrl-C, or our own death)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workbench.lab.qmp import QMPClient

__all__ = ["VMConfig", "QemuVM", "SerialLine", "qemu_binary", "qemu_version", "running_vms"]


def qemu_binary() -> str:
    return os.environ.get("WORKBENCH_QEMU", "qemu-system-x86_64")


def qemu_version() -> str:
    try:
        out = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unavailable"
    return out.splitlines()[0] if out else "unknown"


@dataclass
class VMConfig:
    """What to boot and how. ``shares`` maps a 9p mount tag to (host path, read-only)."""

    kernel: Path
    initrd: Path
    cmdline: str
    memory_mb: int = 1024
    cpus: int = 2
    accel: str = "tcg"
    # TCG with one host thread for all vCPUs: multi-threaded TCG (QEMU's default) sometimes lets a vCPU run a
    # stale translation of kernel text that another vCPU just patched (jump labels), which the guest reports as
    # "Oops: int3" early in boot (4 of 90 boots here; none of 90 with thread=single, boot time unchanged)
    tcg_threads: str = "single"
    shares: dict[str, tuple[Path, bool]] = field(default_factory=dict)
    ram_file: Path | None = None
    ssh_port: int | None = None
    extra_args: list[str] = field(default_factory=list)

    def argv(self, serial_sock: Path, qmp_sock: Path) -> list[str]:
        cpu = "host,-arch-capabilities" if self.accel == "kvm" else "max"
        accel = f"tcg,thread={self.tcg_threads}" if self.accel == "tcg" else self.accel
        args = [
            qemu_binary(),
            "-machine",
            "q35",
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-m",
            f"{self.memory_mb}M",
            "-smp",
            str(self.cpus),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(self.kernel),
            "-initrd",
            str(self.initrd),
            "-append",
            self.cmdline,
            "-chardev",
            f"socket,id=ser0,path={serial_sock},server=on,wait=on",
            "-serial",
            "chardev:ser0",
            "-qmp",
            f"unix:{qmp_sock},server=on,wait=off",
            "-device",
            "vmcoreinfo",
            "-device",
            "virtio-rng-pci",
        ]
        if self.ram_file is not None:
            args += [
                "-object",
                f"memory-backend-file,id=ram0,size={self.memory_mb}M,mem-path={self.ram_file},share=on",
                "-machine",
                "memory-backend=ram0",
            ]
        for tag, (path, readonly) in self.shares.items():
            opts = f"local,path={path},mount_tag={tag},security_model=none,multidevs=remap"
            args += ["-virtfs", opts + (",readonly=on" if readonly else "")]
        if self.ssh_port is not None:
            args += [
                "-netdev",
                f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                "-device",
                "virtio-net-pci,netdev=net0",
            ]
        return args + self.extra_args


@dataclass(frozen=True)
class SerialLine:
    host_time: float  # time.monotonic() on the host when the line arrived
    text: str


def pump_lines(
    recv: Callable[[], bytes],
    stop_errors: tuple[type[BaseException], ...],
    log,
    t0: float,
    lines: list[SerialLine],
    cond: threading.Condition,
    on_line: Callable[[SerialLine], None] | None,
) -> bytes:
    """Reads ``recv()`` until it returns nothing or raises one of ``stop_errors``. Each complete line becomes a
    :class:`SerialLine` stamped with the host's monotonic time on arrival, written to ``log`` with its offset from
    ``t0``, appended to ``lines`` (``cond`` notified) and passed to ``on_line``. Returns the unterminated rest."""
    buf = b""
    while True:
        try:
            chunk = recv()
        except stop_errors:
            break
        if not chunk:
            break
        now = time.monotonic()
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for raw in complete:
            line = SerialLine(now, raw.decode(errors="replace").rstrip("\r"))
            log.write(f"[{now - t0:10.3f}] {line.text}\n")
            with cond:
                lines.append(line)
                cond.notify_all()
            if on_line is not None:
                on_line(line)
    return buf


def wait_for_line(
    lines: list[SerialLine],
    cond: threading.Condition,
    predicate: Callable[[SerialLine], bool],
    timeout: float,
    start: int,
    cancel: threading.Event | None,
    alive: Callable[[], bool],
) -> tuple[int, SerialLine] | None:
    """The first of ``lines`` (appended under ``cond``, which is notified on each) from index ``start`` on that
    satisfies ``predicate``, as (index, line); None on timeout, on ``cancel``, or once ``alive()`` is false and no
    line matched."""
    deadline = time.monotonic() + timeout
    i = start
    with cond:
        while True:
            while i < len(lines):
                if predicate(lines[i]):
                    return i, lines[i]
                i += 1
            if cancel is not None and cancel.is_set():
                return None
            if not alive():
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            cond.wait(min(remaining, 0.2))


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()


VM_INFO = "vm.json"


def running_vms() -> list[dict]:
    """The lab VMs running on this machine now (their QEMU process alive), newest first: pid, QMP socket, run
    folder, RAM file, kernel command line, start time (epoch seconds)."""
    import tempfile

    found = []
    for info in Path(tempfile.gettempdir()).glob(f"wbvm-*/{VM_INFO}"):
        try:
            about = json.loads(info.read_text())
            alive = b"qemu" in Path(f"/proc/{about['pid']}/cmdline").read_bytes()
        except (OSError, ValueError, KeyError):
            continue
        if alive:
            found.append(about)
    return sorted(found, key=lambda about: about["started"], reverse=True)


class QemuVM:
    """One running VM. Use as a context manager: leaving the block always stops QEMU.

    ``on_line`` is called from the reader thread for every serial line (with the host's monotonic time)."""

    def __init__(self, config: VMConfig, workdir: Path, on_line: Callable[[SerialLine], None] | None = None):
        self.config = config
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        # unix socket paths are limited to 107 bytes: keep them short, in a private temporary folder
        import tempfile

        self._sockdir = Path(tempfile.mkdtemp(prefix="wbvm-"))
        self.serial_sock = self._sockdir / "serial"
        self.qmp_sock = self._sockdir / "qmp"
        self.serial_log = workdir / "serial.log"
        self.qemu_log = workdir / "qemu.log"
        self.on_line = on_line
        self.lines: list[SerialLine] = []
        self._lines_cond = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._qmp: QMPClient | None = None
        self.started_at: float | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, connect_timeout: float = 30.0) -> QemuVM:
        argv = self.config.argv(self.serial_sock, self.qmp_sock)
        (self.workdir / "qemu.cmdline").write_text(" ".join(argv) + "\n")
        self._qemu_log_file = open(self.qemu_log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._qemu_log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.started_at = time.monotonic()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                sock.connect(str(self.serial_sock))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sock.close()
                    self.stop()
                    raise RuntimeError(
                        f"QEMU did not start (exit {self.proc.returncode}): {self.qemu_log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)
        self._reader = threading.Thread(target=self._read_serial, args=(sock,), daemon=True, name="serial")
        self._reader.start()
        about = {
            "pid": self.proc.pid,
            "qmp": str(self.qmp_sock),
            "workdir": str(self.workdir),
            "ram_file": str(self.config.ram_file) if self.config.ram_file else None,
            "memory_mb": self.config.memory_mb,
            "cmdline": self.config.cmdline,
            "started": time.time(),
        }
        (self._sockdir / VM_INFO).write_text(json.dumps(about))
        return self

    def __enter__(self) -> QemuVM:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 2.0) -> None:
        """Stops QEMU: QMP quit, then SIGTERM, then SIGKILL. Safe to call more than once."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.qmp(timeout=1.0).execute("quit")
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self._reader is not None:
            self._reader.join(timeout=5)
        with contextlib.suppress(AttributeError, OSError):
            self._qemu_log_file.close()
        for p in (self.serial_sock, self.qmp_sock, self._sockdir / VM_INFO):
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._sockdir.rmdir()

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- serial ----------------------------------------------------------------------------------------------
    def _read_serial(self, sock: socket.socket) -> None:
        assert self.started_at is not None  # set by start() before this thread runs
        with open(self.serial_log, "w", buffering=1) as log, sock:
            buf = pump_lines(
                lambda: sock.recv(65536), (OSError,), log, self.started_at, self.lines, self._lines_cond, self.on_line
            )
            if buf:
                log.write(buf.decode(errors="replace") + "\n")
        with self._lines_cond:
            self._lines_cond.notify_all()

    def wait_for(
        self,
        predicate: Callable[[SerialLine], bool],
        timeout: float,
        start: int = 0,
        cancel: threading.Event | None = None,
    ) -> tuple[int, SerialLine] | None:
        """The first serial line from index ``start`` on that satisfies ``predicate``; None on timeout or when QEMU
        exits first. Returns (index, line)."""
        return wait_for_line(
            self.lines,
            self._lines_cond,
            predicate,
            timeout,
            start,
            cancel,
            alive=lambda: self.running or (self._reader is not None and self._reader.is_alive()),
        )

    def serial_text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    # -- QMP -------------------------------------------------------------------------------------------------
    def qmp(self, timeout: float = 30.0) -> QMPClient:
        if self._qmp is None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    self._qmp = QMPClient(self.qmp_sock, timeout=max(timeout, 5.0))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline or not self.running:
                        raise
                    time.sleep(0.05)
        return self._qmp

    def release_qmp(self) -> None:
        """Closes this object's QMP connection (the next :meth:`qmp` reconnects). QEMU serves one QMP client at a
        time: another client, such as drgn's ``set_qemu_qmp``, can only connect after this."""
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    def dump_guest_memory(self, path: Path, fmt: str = "elf") -> Path:
        """Writes a vmcore of the guest (QMP ``dump-guest-memory``); ``fmt`` is ``elf`` or ``kdump-zlib``."""
        args = {"paging": False, "protocol": f"file:{path}"}
        if fmt != "elf":
            args["format"] = fmt
        self.qmp().execute("dump-guest-memory", **args)
        return path
