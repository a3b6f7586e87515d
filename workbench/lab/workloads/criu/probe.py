"""Asking CRIU what it thinks of the lab kernel: one boot of the lab VM that runs a shell script in the guest, no
kexec (:func:`run_probe`)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workbench.environment import REPO_ROOT
from workbench.lab.accel import choose_accelerator
from workbench.lab.errors import ShareFileError
from workbench.lab.initramfs import build_initramfs
from workbench.lab.kernel import LabKernel, build_kernel
from workbench.lab.protocol import Event, Request, state_file
from workbench.lab.qemu import QemuVM, VMConfig
from workbench.lab.qemu_target import guest_cache, lab_kernel_args
from workbench.lab.share_files import read_share_bytes, read_share_json
from workbench.lab.workloads.criu import CRIU_KERNEL_ARGS, CRIU_PATH
from workbench.lab.workloads.criu.program import build_nft_shim, build_workload

__all__ = ["run_probe", "PROBE_OUTPUT_LIMIT"]

#: the most of the probe's output the host reads back
PROBE_OUTPUT_LIMIT = 1 << 20


def run_probe(
    script: str,
    *,
    kernel: LabKernel | None = None,
    kernel_args: str = CRIU_KERNEL_ARGS,
    memory_mb: int = 1024,
    timeout_s: float = 600,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Boots the lab VM once and runs ``script`` (``/bin/sh -c``) in the guest's chroot, as root, with ``$WB_CRIU``
    (the CRIU binary) and ``$WB_RESULTS`` (a writable folder the host keeps) set. Returns the script's output and
    exit status, the error if the agent failed, and where the serial log is."""
    kernel = kernel or build_kernel()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="wb-criu-probe-"))
    results = workdir / "guest"
    results.mkdir(parents=True, exist_ok=True)
    Request(
        workload="criu",
        session="wb-criu-probe",
        workload_fields={
            "probe": script,
            "criu": CRIU_PATH,
            "workload_binary": str(build_workload()),
            "probe_timeout": timeout_s,
            "criu_preload": str(build_nft_shim()),
        },
    ).write(results)
    initrd = build_initramfs()
    accel = choose_accelerator(kernel.bzimage, initrd)
    args = lab_kernel_args() + [f"wb.python={sys.executable}", f"wb.repo={REPO_ROOT}", *kernel_args.split()]
    config = VMConfig(
        kernel=kernel.bzimage,
        initrd=initrd,
        cmdline=" ".join(args),
        memory_mb=memory_mb,
        accel=accel.accel,
        shares={
            "hostroot": (Path("/"), True),
            "wbresults": (results, False),
            "wbcache": (guest_cache(), False),
        },
    )
    t0 = time.monotonic()
    done, failed = f"WB-MARK {Event.DONE}", f"WB-MARK {Event.ERROR}"
    with QemuVM(config, workdir) as vm:
        hit = vm.wait_for(lambda ln: done in ln.text or failed in ln.text, timeout_s + 300)
        vm.wait_exit(30)
    try:
        state = read_share_json(results, state_file("prepare"))
    except ShareFileError:
        state = {}
    try:
        output = read_share_bytes(results, "probe.txt", limit=PROBE_OUTPUT_LIMIT).decode(errors="replace")
    except ShareFileError:
        output = ""
    return {
        "output": output,
        "rc": state.get("probe_rc"),
        "error": state.get("error", {}).get("message") if hit is None or failed in hit[1].text else None,
        "kernel_args": kernel_args,
        "seconds": time.monotonic() - t0,
        "serial_log": str(vm.serial_log),
        "results": str(results),
    }
