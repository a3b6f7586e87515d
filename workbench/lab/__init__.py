"""The lab: lab kernels, targets (the QEMU VM on this machine, SSH hosts), workloads (memfds, converted memory,
CRIU), the agent that runs on targets, and the preserve → kexec → restore cycle.

``from workbench.lab import run_cycle, MemfdWorkload, QemuTarget, CycleParams`` is the entry point; the protocols
for new workloads and targets are :mod:`workbench.lab.workload` and :mod:`workbench.lab.target`.

Names are imported lazily: the agent imports ``workbench.lab.agent`` on the target, where nothing heavier than
numpy should load."""

import importlib

__all__ = [
    "ConvertedMemfdWorkload",
    "CriuWorkload",
    "CycleCancelled",
    "CycleEvent",
    "CycleFailed",
    "CycleParams",
    "Faults",
    "LabError",
    "LabKernel",
    "MemfdWorkload",
    "PageRef",
    "QemuTarget",
    "build_kernel",
    "cached_kernel",
    "make_workload",
    "parse_targets",
    "run_cycle",
    "run_cycles",
]

_HOME = {
    "ConvertedMemfdWorkload": "workbench.lab.workloads.converted",
    "CriuWorkload": "workbench.lab.workloads.criu",
    "CycleCancelled": "workbench.lab.errors",
    "CycleEvent": "workbench.lab.runner",
    "CycleFailed": "workbench.lab.errors",
    "CycleParams": "workbench.lab.params",
    "Faults": "workbench.lab.faults",
    "LabError": "workbench.lab.errors",
    "LabKernel": "workbench.lab.kernel",
    "MemfdWorkload": "workbench.lab.workloads.memfd",
    "PageRef": "workbench.lab.faults",
    "QemuTarget": "workbench.lab.qemu_target",
    "build_kernel": "workbench.lab.kernel",
    "cached_kernel": "workbench.lab.kernel",
    "make_workload": "workbench.lab.workload",
    "parse_targets": "workbench.lab.target",
    "run_cycle": "workbench.lab.cycle",
    "run_cycles": "workbench.lab.cycle",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'workbench.lab' has no attribute {name!r}")
