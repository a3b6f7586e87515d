"""Shared fixtures: the lab kernel, a record store, and one lab cycle inspected at every pause (``inspection``,
used by tests/inspect and tests/widgets; session-scoped, so one VM boot serves both).

The shared cycle preserves one 8 MiB memfd, pauses after prepare, preserve and restore, dumps an ELF vmcore after
preserve (and, from the callback, a kdump-zlib one), and backs guest RAM with a file so that both ways of reading
a running VM (QMP and the RAM file) can be compared. Everything the tests need is collected inside the callback,
as plain data, while the guest is paused: drgn programs on the VM hold QEMU's only QMP connection and must be
gone before the cycle continues.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def lab_kernel():
    """The cached lab kernel (7.2), built on first use."""
    from workbench.lab.kernel import build_kernel

    return build_kernel(progress=False)


@pytest.fixture
def store(tmp_path):
    from workbench.records import RecordStore

    return RecordStore(tmp_path / "data")


MEMFD_SIZE = 8 << 20
TOKENS = [1000]


@dataclass
class Inspection:
    """What the callback saw, per phase."""

    result: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    snapshots: dict[str, Any] = field(default_factory=dict)  # phase -> Snapshot over QMP
    ram_snapshots: dict[str, Any] = field(default_factory=dict)  # phase -> Snapshot over the guest RAM file
    abi_preserved: dict[str, Any] = field(default_factory=dict)  # phase -> ABI decoder's (pfn, order) frame
    serialized_folios: dict[str, Any] = field(default_factory=dict)  # phase -> memfd_luo_folio_ser frame
    kdump: Path | None = None
    cli_json: dict[str, Any] | None = None
    cli_error: str | None = None
    qmp_busy: str | None = None
    running_vms: list[tuple[str, str]] = field(default_factory=list)  # the inspector's choices while paused
    live_panel: dict[str, Any] = field(default_factory=dict)  # the inspector panel opened over QMP, after preserve
    errors: list[str] = field(default_factory=list)


def _collect(phase: str, vm, kernel, out: Inspection, data_dir: Path) -> None:
    from workbench.abi import DrgnMemory, decode_handover
    from workbench.inspect import QmpBusy, open_vm, snapshot
    from workbench.inspect.kho import kho_out_fdt
    from workbench.inspect.memfd import for_each_preserved_memfd, memfd_serialized_folios

    def guarded(what, fn):
        try:
            fn()
        except Exception:  # noqa: BLE001 - collected and asserted on by the tests
            out.errors.append(f"{phase} {what}: {traceback.format_exc()}")

    if phase == "prepare":

        def busy():
            vm.qmp()  # the lab's own client now holds QEMU's single QMP connection
            try:
                open_vm(str(vm.qmp_sock), kernel.vmlinux, timeout=2)
            except QmpBusy as exc:
                out.qmp_busy = str(exc)
            finally:
                vm.release_qmp()

        guarded("qmp busy", busy)

    def over_qmp():
        prog = open_vm(vm, kernel.vmlinux, method="qmp")
        out.snapshots[phase] = snapshot(prog)
        fdt = kho_out_fdt(prog)
        handover = decode_handover(DrgnMemory(prog), fdt.phys, strict=False)
        out.abi_preserved[phase] = handover.preserved()
        for _direction, _session, f in for_each_preserved_memfd(prog, "outgoing"):
            out.serialized_folios[phase] = memfd_serialized_folios(f)
        del prog, handover
        gc.collect()

    guarded("qmp", over_qmp)

    def over_ram():
        prog = open_vm(vm, kernel.vmlinux, method="ram-file")
        out.ram_snapshots[phase] = snapshot(prog)
        del prog
        gc.collect()

    guarded("ram-file", over_ram)

    if phase == "preserve":

        def kdump():
            path = vm.workdir / "vmcore-preserve.kdump"
            vm.dump_guest_memory(path, "kdump-zlib")
            vm.release_qmp()
            out.kdump = path

        guarded("kdump", kdump)

        def cli():
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "workbench.cli",
                    "inspect",
                    "--qmp",
                    str(vm.qmp_sock),
                    "--vmlinux",
                    str(kernel.vmlinux),
                    "--json",
                    "--data",
                    str(data_dir),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode:
                out.cli_error = proc.stderr[-3000:]
            else:
                out.cli_json = json.loads(proc.stdout)

        guarded("cli", cli)

        def panel():
            from workbench.records import RecordStore
            from workbench.widgets.inspector_panel import InspectorPanel

            widget = InspectorPanel(vmlinux=kernel.vmlinux, source="vm", store=RecordStore(data_dir))
            out.running_vms = list(widget.running.options)
            widget.running.value = str(vm.qmp_sock)  # picking the VM fills in its socket
            status = widget.start_and_wait(600)
            c = widget.controller
            out.live_panel = {
                "status": status,
                "error": c.error,
                "qmp_socket": widget.qmp_socket.value,
                "luo": c.luo_summary,
                "kho": c.kho_summary,
                "figures": len(widget.figures.outputs),
                "record_id": c.record_id,
            }
            del widget, c
            gc.collect()

        guarded("panel", panel)


@pytest.fixture(scope="session")
def inspection(lab_kernel, tmp_path_factory) -> Inspection:
    """Runs the shared cycle (one VM boot) and returns what was inspected at each pause."""
    from workbench.lab.cycle import run_cycle
    from workbench.lab.errors import CycleFailed
    from workbench.lab.params import CycleParams
    from workbench.lab.qemu_target import QemuTarget
    from workbench.lab.workloads.memfd import MemfdWorkload
    from workbench.records import RecordStore

    root = tmp_path_factory.mktemp("inspect-cycle")
    out = Inspection()
    workload = MemfdWorkload(memfds=1, memfd_size=MEMFD_SIZE, tokens=TOKENS)
    params = CycleParams(pause_after=["prepare", "preserve", "restore"])
    target = QemuTarget(lab_kernel, ram_file=True, dump_after=["preserve"])

    for attempt in (1, 2):
        try:
            out.result = run_cycle(
                workload,
                params,
                target=target,
                store=RecordStore(root / "data"),
                on_pause=lambda phase, vm, out=out: _collect(phase, vm, lab_kernel, out, root / "cli-data"),
            )
            break
        except CycleFailed as exc:
            # QEMU itself dying by a signal (seen once under TCG on a loaded host: exit -11 during the kexec) is
            # not the kernel under test failing: one retry, and only for that.
            if attempt == 2 or "QEMU exit -" not in str(exc):
                raise
            out = Inspection()
    out.run_dir = Path(out.result["run_dir"])
    out.cli_data = root / "cli-data"
    return out
