"""Moving a process's anonymous memory into memfds, which LUO can preserve: every way Linux offers, timed and
verified page by page.

A *source* is ``size`` bytes of anonymous private memory that has been touched (filled with a deterministic
pattern, distinct on every page) together with the XXH3-64 fingerprint of each of its pages
(:mod:`~workbench.kernels.conversion.sources`). A *strategy* creates a memfd and moves the source's bytes into it
(:mod:`~workbench.kernels.conversion.strategies`, its copy loops in :mod:`~workbench.kernels.conversion.copy`);
the benchmark (:mod:`~workbench.kernels.conversion.bench`) fingerprints the memfd's pages and compares them with
the source's, and puts the times beside the machine's limits measured in the same run
(:mod:`~workbench.kernels.conversion.limits`). Where root can read physical frames,
:mod:`~workbench.kernels.conversion.page_identity` tells moved pages from copied ones, and
:mod:`~workbench.kernels.conversion.huge_pages` sets up what the huge-page strategies need (the lab VM's agent).

Every name of the submodules that other modules use is here too, so ``conversion.run_conversion`` and ``from
workbench.kernels.conversion import STRATEGIES`` work."""

from workbench.kernels.conversion.bench import (
    COLUMNS,
    LIMITS_MAX_SIZE,
    check_arguments,
    default_thread_counts,
    measure_strategy,
    run_conversion,
    verify_memfd,
)
from workbench.kernels.conversion.copy import compile_kernels
from workbench.kernels.conversion.limits import first_touch_seconds, measure_limits, memcpy_seconds
from workbench.kernels.conversion.sources import AnonymousSource, RemoteSource, Source, make_source
from workbench.kernels.conversion.strategies import (
    DEFAULT_PIPE_SIZES,
    STRATEGIES,
    WRITE_CHUNK,
    Converted,
    Options,
    Strategy,
    convert_copy_fallocate,
    convert_copy_fresh,
    convert_copy_populate,
    convert_hugetlb,
    convert_memfd_from_birth,
    convert_process_vm_readv,
    convert_pwrite,
    convert_thp_shmem,
    convert_vmsplice_gift,
    convert_vmsplice_splice,
    convert_write,
    hugetlb_unavailable,
    thp_shmem_unavailable,
)

__all__ = [
    "COLUMNS",
    "DEFAULT_PIPE_SIZES",
    "LIMITS_MAX_SIZE",
    "STRATEGIES",
    "WRITE_CHUNK",
    "AnonymousSource",
    "Converted",
    "Options",
    "RemoteSource",
    "Source",
    "Strategy",
    "check_arguments",
    "compile_kernels",
    "convert_copy_fallocate",
    "convert_copy_fresh",
    "convert_copy_populate",
    "convert_hugetlb",
    "convert_memfd_from_birth",
    "convert_process_vm_readv",
    "convert_pwrite",
    "convert_thp_shmem",
    "convert_vmsplice_gift",
    "convert_vmsplice_splice",
    "convert_write",
    "default_thread_counts",
    "first_touch_seconds",
    "hugetlb_unavailable",
    "make_source",
    "measure_limits",
    "measure_strategy",
    "memcpy_seconds",
    "run_conversion",
    "thp_shmem_unavailable",
    "verify_memfd",
]
