"""The conversion strategies inside the lab VM, each followed by LUO preservation and a kexec
(``workbench bench conversion --target vm``): one ``converted`` cycle per (size, threads), one memfd per strategy."""

from __future__ import annotations

import pandas as pd

from workbench.lab.cycle import run_cycle
from workbench.lab.params import CycleParams
from workbench.lab.qemu_target import QemuTarget
from workbench.lab.workloads.converted import ConvertedMemfdWorkload

__all__ = ["VM_SKIPPED", "bench_in_vm"]

#: strategies a VM bench leaves out unless asked, with the reason: none since the agent sets up shmem THP and a
#: hugetlb pool itself, and records LUO's refusal of a kind of memfd in the strategy's row
VM_SKIPPED: dict[str, str] = {}


def bench_in_vm(
    sizes: list[int],
    thread_counts: list[int],
    strategies: list[str],
    *,
    store=None,
    kernel=None,
    on_event=None,
) -> tuple[pd.DataFrame, list[dict]]:
    """For every size (bytes) and thread count one cycle converting one memfd per strategy, the guest's own memcpy
    bandwidth and fault rate measured in the same boot; ``kernel`` is the :class:`~workbench.lab.kernel.LabKernel`
    or the name of the kernel to boot (default: the lab kernel). Returns (rows, one per strategy and cycle; the
    cycles' results). Each row has the strategy's page identity (``moved_pages``, ``copied_pages``,
    ``pages_converted``, ``huge_pages``, ``page_identity_explanation``) and, when LUO refused its kind of memfd,
    ``preserve_refused``."""
    cycles, rows = [], []
    for size in sizes:
        for threads in thread_counts:
            workload = ConvertedMemfdWorkload(
                memfds=len(strategies),
                memfd_size=size,
                convert=list(strategies),
                convert_threads=threads,
                convert_limits=True,
            )
            # under TCG, guest threads need host threads
            target = QemuTarget(kernel=kernel, tcg_threads="multi" if threads > 1 else "single")
            result = run_cycle(
                workload, CycleParams(session="wb-convert"), target=target, store=store, on_event=on_event
            )
            cycles.append(result)
            for row in result.get("conversions", []):
                rows.append(
                    {
                        **row,
                        "anon_to_survived_s": result["anon_to_survived_s"],
                        "cycle_record": result["record_id"],
                        "guest_memcpy_bytes_per_s": result["target_limits"].get("memcpy_bytes_per_s"),
                        "guest_fault_pages_per_s": result["target_limits"].get("fault_pages_per_s"),
                        "accelerator": result.get("accelerator"),
                    }
                )
    return pd.DataFrame(rows), cycles
