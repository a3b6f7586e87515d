"""A lab VM whose init starts Debian's OpenSSH server (the host's ``/usr/sbin/sshd`` through the 9p root), for the
tests of :mod:`workbench.lab.ssh`: the SSH target proven against a real sshd and a real kexec."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from workbench.environment import REPO_ROOT
from workbench.lab.inventory import LabHost

__all__ = ["SSHD_CONFIG", "SshdLabVM", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (free when this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SSHD_CONFIG = """\
Port 22
HostKey {guest}/ssh_host_ed25519_key
AuthorizedKeysFile {guest}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile /run/sshd.pid
UseDNS no
PrintMotd no
PrintLastLog no
Subsystem sftp /usr/lib/openssh/sftp-server
"""


class SshdLabVM:
    """The lab kernel in QEMU running Debian's OpenSSH server (the host's ``/usr/sbin/sshd`` through the 9p root),
    started by the guest's init with ``wb.sshd=`` and ``wb.phase=shell``, reachable on a free loopback port.

    Per VM: a fresh ed25519 host key and sshd_config in its results share (the guest's ``/tmp/wb-results``, which
    survives the kexec), a client key pair and a known_hosts file in ``workdir``. Use as a context manager: the VM
    is stopped on leaving, whatever happened. :meth:`host` is the :class:`LabHost` to run cycles against."""

    GUEST_DIR = "/tmp/wb-results"

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "vm",
        kernel=None,
        live_update: bool = True,
        memory_mb: int = 1024,
        cpus: int = 2,
        boot_timeout_s: float = 300.0,
        boot_attempts: int = 3,
    ):
        self.workdir = Path(workdir)
        self.name = name
        self.kernel = kernel
        self.live_update = live_update
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.boot_timeout_s = boot_timeout_s
        self.boot_attempts = boot_attempts
        self.failed_boots: list[str] = []  # serial tails of boots that died before init (retried)
        self.guest = self.workdir / "guest"
        self.client_key = self.workdir / "client_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.port: int | None = None
        self.vm = None
        self.initrd: Path | None = None
        self.accel = None

    def _keygen(self, path: Path, comment: str) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> SshdLabVM:
        from workbench.lab.accel import choose_accelerator
        from workbench.lab.initramfs import build_initramfs
        from workbench.lab.kernel import build_kernel, cache_root
        from workbench.lab.qemu import QemuVM, VMConfig

        self.kernel = self.kernel or build_kernel()
        self.initrd = build_initramfs()
        self.guest.mkdir(parents=True, exist_ok=True)
        host_key = self.guest / "ssh_host_ed25519_key"
        if not host_key.exists():
            self._keygen(host_key, f"workbench-{self.name}-host")
        if not self.client_key.exists():
            self._keygen(self.client_key, f"workbench-{self.name}-client")
        (self.guest / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        (self.guest / "sshd_config").write_text(SSHD_CONFIG.format(guest=self.GUEST_DIR))
        self.port = free_port()
        kind, b64 = host_key.with_suffix(".pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {kind} {b64}\n")
        # no_timer_check: a TCG guest on a busy host can fail the IO-APIC timer check and panic at boot
        args = ["console=ttyS0", "panic=-1", "loglevel=6", "no_timer_check", "wb.phase=shell"]
        if self.live_update:
            args += ["kho=on", "liveupdate=on"]
        args += [f"wb.python={sys.executable}", f"wb.repo={REPO_ROOT}", "wb.sshd=/usr/sbin/sshd"]
        guest_cache = cache_root() / "guest-cache"
        (guest_cache / "numba").mkdir(parents=True, exist_ok=True)
        self.accel = choose_accelerator(self.kernel.bzimage, self.initrd)
        config = VMConfig(
            kernel=self.kernel.bzimage,
            initrd=self.initrd,
            cmdline=" ".join(args),
            memory_mb=self.memory_mb,
            cpus=self.cpus,
            accel=self.accel.accel,
            shares={
                "hostroot": (Path("/"), True),
                "wbresults": (self.guest, False),
                "wbcache": (guest_cache, False),
            },
            ssh_port=self.port,
        )
        for attempt in range(1, self.boot_attempts + 1):
            self.vm = QemuVM(config, self.workdir / ("vm" if attempt == 1 else f"vm-boot{attempt}"))
            try:
                self.vm.start()
                hit = self.vm.wait_for(
                    lambda ln: any(m in ln.text for m in ("WB-MARK ready", "WB-MARK init-error", "Kernel panic")),
                    self.boot_timeout_s,
                )
                if hit is not None and "WB-MARK ready" in hit[1].text:
                    break
                if hit is not None and "init-error" in hit[1].text:
                    raise RuntimeError(f"the sshd lab VM {self.name} failed in init: {self.vm.serial_text()[-1500:]}")
                # the guest kernel died while booting (under TCG on a loaded host, e.g. "IO-APIC + timer doesn't
                # work"): that is not what a test is about, boot again
                self.vm.stop()
                self.failed_boots.append(self.vm.serial_text()[-3000:])
                if attempt == self.boot_attempts:
                    raise RuntimeError(
                        f"the sshd lab VM {self.name} did not come up in {attempt} boots: {self.failed_boots[-1]}"
                    )
            except BaseException:
                self.stop()
                raise
        if "WB-MARK sshd-started" not in self.vm.serial_text():
            self.stop()
            log = self.guest / "sshd.log"
            raise RuntimeError(f"sshd did not start in {self.name}: {log.read_text() if log.exists() else ''}")
        return self

    def host(self, **changes: Any) -> LabHost:
        """This VM as a :class:`LabHost`: root with the client key, the per-run known_hosts, the host's Python and
        checkout (seen through 9p), the results share, and the lab kernel and initramfs as the next kernel."""
        base = LabHost(
            name=self.name,
            host="127.0.0.1",
            port=self.port,
            user="root",
            key=str(self.client_key),
            known_hosts=str(self.known_hosts),
            python=sys.executable,
            workbench=str(REPO_ROOT),
            results_dir=self.GUEST_DIR,
            next_kernel=str(self.kernel.bzimage),
            next_initrd=str(self.initrd),
            env={"NUMBA_CACHE_DIR": "/tmp/wb-cache/numba"},
            connect_timeout_s=60.0,
        )
        return dataclasses.replace(base, **changes)

    def marks(self) -> list[tuple[str, float]]:
        """The WB-MARK lines of the serial console (init's marks) with their host times."""
        return [(ln.text.split("WB-MARK ", 1)[1], ln.host_time) for ln in self.vm.lines if "WB-MARK " in ln.text]

    def stop(self) -> None:
        if self.vm is not None:
            self.vm.stop()

    def __enter__(self) -> SshdLabVM:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
