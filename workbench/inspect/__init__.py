"""Inspect KHO/LUO state with drgn: in a running kernel, a running lab VM, or a crash dump.

* :mod:`~workbench.inspect.program` — open a kernel (:func:`open_live`, :func:`open_vm`, :func:`open_vmcore`) with
  checked debug info (:mod:`~workbench.inspect.debug_info`); the exceptions are in :mod:`~workbench.inspect.errors`
* :mod:`~workbench.inspect.vmcoreinfo`, :mod:`~workbench.inspect.vmlinux`, :mod:`~workbench.inspect.vmcore` — the
  kernel's VMCOREINFO (also found in raw guest RAM), its vmlinux, dump files
* :mod:`~workbench.inspect.kho` — ``kho_out``/``kho_in``: FDT, sub-nodes, preserved-memory radix tree, scratch,
  kexec metadata, a physical memory map
* :mod:`~workbench.inspect.luo` — LUO state, sessions, files, file handlers, FLBs
* :mod:`~workbench.inspect.memfd` — preserved memfds: inode, size, seals, folios
* :mod:`~workbench.inspect.moment` — which moment of a live update the kernel is at, and the evidence
* :mod:`~workbench.inspect.pending` — incoming sessions not yet deserialized, from the handover bytes
* :mod:`~workbench.inspect.agreement` — kernel objects against handover bytes, fact by fact
* :mod:`~workbench.inspect.plots` — the memory map and a sessions → files → folios sunburst

The helpers follow drgn's conventions: they take a ``drgn.Program`` or ``drgn.Object``, name the C type of each
argument in their docstrings, iterate with ``for_each_*``, and check structure members rather than versions.
"""

from workbench.inspect import errors
from workbench.inspect.agreement import handover_agreement
from workbench.inspect.debug_info import check_live_update_support, program_info
from workbench.inspect.errors import *  # noqa: F403 (every error, listed in errors.__all__)
from workbench.inspect.kho import kho_facts, kho_summary, memory_map, preserved_folios, scratch_areas
from workbench.inspect.luo import luo_facts, luo_files, luo_sessions, luo_summary
from workbench.inspect.memfd import preserved_memfd_folios, preserved_memfds
from workbench.inspect.moment import live_update_moment
from workbench.inspect.pending import pending_incoming_sessions
from workbench.inspect.program import open_live, open_vm, open_vmcore
from workbench.inspect.snapshot import Snapshot, snapshot

__all__ = [
    *errors.__all__,
    "open_live",
    "open_vm",
    "open_vmcore",
    "program_info",
    "check_live_update_support",
    "kho_facts",
    "kho_summary",
    "memory_map",
    "preserved_folios",
    "scratch_areas",
    "luo_facts",
    "luo_summary",
    "luo_sessions",
    "luo_files",
    "preserved_memfds",
    "preserved_memfd_folios",
    "live_update_moment",
    "pending_incoming_sessions",
    "handover_agreement",
    "Snapshot",
    "snapshot",
]
