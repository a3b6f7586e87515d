"""``bench.conversion``: anonymous memory into memfds, on this machine (``target`` host) or inside the lab VM
with every conversion preserved, kexec'd and verified (``target`` vm)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.experiments.recording import record_summary
from workbench.experiments.registry import Experiment, register
from workbench.records import RecordStore

__all__ = ["record_bench_conversion", "record_bench_conversion_vm", "HOST", "VM"]

_HOST_PARAMS = {"sizes", "threads", "strategies", "repeats", "pipe_sizes"}
_VM_PARAMS = {"sizes", "threads", "strategies", "kernel"}


def record_bench_conversion(
    store: RecordStore,
    params: dict[str, Any],
    *,
    output: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Every strategy on this machine for ``params`` (``sizes`` and ``pipe_sizes`` in bytes, ``threads``,
    ``strategies``, ``repeats``) into a ``bench.conversion`` record; returns its summary and JSON file."""
    import pandas as pd

    from workbench.kernels.conversion import run_conversion
    from workbench.kernels.conversion.summary import summarize

    def body(run) -> dict[str, Any]:
        frame, limits = run_conversion(
            params["sizes"],
            params["threads"],
            params["strategies"],
            params["repeats"],
            params["pipe_sizes"],
            progress=progress,
        )
        summary = summarize(frame, limits, params)
        summary["tables"] = {"conversion": frame, "limits": pd.DataFrame([limits])}
        return summary

    return record_summary(store, "bench.conversion", params, body, output=output)


def record_bench_conversion_vm(
    store: RecordStore,
    params: dict[str, Any],
    *,
    output: str | os.PathLike[str] | None = None,
    on_event: Callable[[Any], None] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Every strategy inside the lab VM for ``params`` (``sizes`` in bytes, ``threads``, ``strategies``,
    ``kernel``: a lab kernel name or None) into a ``bench.conversion`` record whose cycles are recorded too;
    returns its summary and JSON file."""
    from workbench.kernels.conversion.summary import summarize_vm
    from workbench.lab.conversion_bench import bench_in_vm

    def body(run) -> dict[str, Any]:
        frame, cycles = bench_in_vm(
            params["sizes"],
            params["threads"],
            params["strategies"],
            store=store,
            kernel=params["kernel"],
            on_event=on_event,
        )
        summary = summarize_vm(frame, cycles, params)
        summary["tables"] = {"conversion_vm": frame}
        return summary

    return record_summary(store, "bench.conversion", params, body, output=output)


_MEASURED = ("strategies.*.bytes_per_s", "strategies.*.ratio_to_memcpy", "strategies.*_s", "*memcpy_bytes_per_s")

HOST = register(
    Experiment(
        "bench.conversion",
        lambda store, params: record_bench_conversion(store, params)[0]["record_id"],
        exact=("all_verified", "strategies.*.verified", "strategies.*.available", "sizes.*", "strategies.*.size"),
        measured=(*_MEASURED, "alloc_*", "fault_*"),
        tolerance=0.5,
        accepts=lambda params: params.get("target", "host") == "host" and set(params) >= _HOST_PARAMS,
        describe="anonymous memory into memfds on this machine",
    )
)

VM = register(
    Experiment(
        "bench.conversion",
        lambda store, params: record_bench_conversion_vm(store, params)[0]["record_id"],
        exact=(
            "all_verified",
            "strategies.*.verified",
            "strategies.*.size",
            "sizes.*",
            "strategies.*.moved_pages",
            "strategies.*.copied_pages",
            "refused.*",
        ),
        measured=(*_MEASURED, "anon_to_survived_s.*"),
        tolerance=1.0,
        accepts=lambda params: params.get("target") == "vm" and set(params) >= _VM_PARAMS,
        describe="anonymous memory into memfds in the lab VM, preserved, kexec'd and verified",
    )
)
