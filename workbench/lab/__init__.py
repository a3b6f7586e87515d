"""The lab: the lab kernel, the QEMU target, the agent that runs on targets, and the preserve → kexec → restore
cycle. ``from workbench.lab import run_cycle, CycleParams`` is the entry point.

Names are imported lazily: the agent imports ``workbench.lab.agent`` on the target, where nothing heavier than
numpy should load."""

import importlib

__all__ = [
    "CycleCancelled",
    "CycleEvent",
    "CycleFailed",
    "CycleParams",
    "LabKernel",
    "build_kernel",
    "cached_kernel",
    "run_cycle",
]

_HOME = {
    "CycleCancelled": "workbench.lab.cycle",
    "CycleEvent": "workbench.lab.cycle",
    "CycleFailed": "workbench.lab.cycle",
    "CycleParams": "workbench.lab.cycle",
    "run_cycle": "workbench.lab.cycle",
    "LabKernel": "workbench.lab.kernel",
    "build_kernel": "workbench.lab.kernel",
    "cached_kernel": "workbench.lab.kernel",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'workbench.lab' has no attribute {name!r}")
