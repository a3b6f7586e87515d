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

__all__ = ["AccelChoice", "choose_accelerator", "probe_kvm"]

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
            tail = vm.serial_text()[-200:].strip().replace("\n", " | ")
            qemu_log = (Path(tmp) / "qemu.log").read_text()[-300:].strip() if (Path(tmp) / "qemu.log").exists() else ""
            detail = qemu_log or (f"last console output: {tail}" if tail else "no console output at all")
            return AccelChoice(
                "tcg", f"/dev/kvm exists but Linux did not boot under KVM within {timeout_s:.0f} s ({detail})", elapsed
            )
        finally:
            vm.stop()


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
