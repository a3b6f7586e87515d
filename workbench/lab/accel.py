"""Choosing QEMU's accelerator by a bounded boot probe, not by the presence of ``/dev/kvm``.

On nested-virtualisation hosts ``/dev/kvm`` exists and trivial guests run, yet Linux stalls in its decompressor or
dies on an emulation failure. So the lab kernel is booted under KVM with ``wb.phase=probe`` (the initramfs prints a
marker and powers off); KVM is used only if the marker arrives in time. The decision is cached per host boot,
QEMU version and kernel."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.environment import boot_id
from workbench.lab.kernel import cache_root
from workbench.lab.qemu import QemuVM, VMConfig, qemu_version

__all__ = ["AccelChoice", "choose_accelerator", "probe_kvm", "probe_failure_detail"]

PROBE_TIMEOUT_S = 25.0


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str
    probe_s: float | None = None


def probe_kvm(kernel: Path, initrd: Path, timeout_s: float = PROBE_TIMEOUT_S) -> AccelChoice:
    """Boots ``kernel`` under KVM for at most ``timeout_s`` and reports whether it reached user space."""
    if os.environ.get("WORKBENCH_ACCEL") in ("tcg", "kvm"):
        accel = os.environ["WORKBENCH_ACCEL"]
        return AccelChoice(accel, f"forced by WORKBENCH_ACCEL={accel}")
    if not os.path.exists("/dev/kvm"):
        return AccelChoice("tcg", "/dev/kvm does not exist")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice("tcg", "/dev/kvm is not accessible to this user")
    config = VMConfig(kernel=kernel, initrd=initrd, cmdline="console=ttyS0 wb.phase=probe panic=-1", accel="kvm")
    with tempfile.TemporaryDirectory(prefix="wb-kvm-probe-") as tmp:
        started = time.monotonic()
        vm = QemuVM(config, Path(tmp))
        try:
            vm.start()
        except RuntimeError as exc:
            return AccelChoice("tcg", f"QEMU refused KVM: {str(exc)[-300:]}")
        try:
            hit = vm.wait_for(lambda line: "WB-MARK probe-ok" in line.text, timeout_s)
            elapsed = time.monotonic() - started
            if hit is not None:
                return AccelChoice("kvm", f"a KVM guest reached user space in {elapsed:.1f} s", elapsed)
            detail = probe_failure_detail(vm.serial_text(), vm.qemu_log.read_text() if vm.qemu_log.exists() else "")
            return AccelChoice(
                "tcg", f"/dev/kvm exists but Linux did not boot under KVM within {timeout_s:.0f} s ({detail})", elapsed
            )
        finally:
            vm.stop()


def _is_qemu_chatter(line: str) -> bool:
    """QEMU's informational lines (``info: QEMU waiting for connection on: disconnected:unix:...`` for each
    server socket), which say nothing about why a guest failed."""
    return "QEMU waiting for connection on:" in line or line.startswith("info: ") or ": info: " in line


def probe_failure_detail(console: str, qemu_output: str) -> str:
    """What a KVM probe that did not reach user space shows of its failure: the lines QEMU printed that are not its
    informational chatter (an emulation failure, an error), then the end of the guest's console.

    :param console: the guest's serial console text
    :param qemu_output: what QEMU printed on its standard output and error"""
    parts = []
    qemu_lines = [line.strip() for line in qemu_output.splitlines() if line.strip() and not _is_qemu_chatter(line)]
    if qemu_lines:
        parts.append(f"QEMU printed: {' | '.join(qemu_lines)[-300:]}")
    tail = " | ".join(line.strip() for line in console[-200:].strip().splitlines() if line.strip())
    parts.append(f"last console output: {tail}" if tail else "no console output at all")
    return "; ".join(parts)


def choose_accelerator(kernel: Path, initrd: Path) -> AccelChoice:
    """The cached probe result for this host boot, QEMU and kernel; probes on first use. A choice forced by
    ``WORKBENCH_ACCEL`` is not cached: it holds only while the variable is set."""
    if os.environ.get("WORKBENCH_ACCEL") in ("tcg", "kvm"):
        return probe_kvm(kernel, initrd)
    key = hashlib.sha256(f"{boot_id()}|{qemu_version()}|{kernel.stat().st_size}|{kernel}".encode()).hexdigest()[:16]
    path = cache_root() / "accel" / f"{key}.json"
    if path.exists():
        return AccelChoice(**json.loads(path.read_text()))
    choice = probe_kvm(kernel, initrd)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(choice)))
    return choice
