"""``workbench bench conversion``."""

from __future__ import annotations

import math
from typing import Any

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, run_recorded

__all__ = ["conversion_cmd", "summarize", "summarize_vm"]

_STRATEGY_FIELDS = (
    "bytes_per_s",
    "ratio_to_memcpy",
    "seconds",
    "alloc_s",
    "copy_s",
    "copier",
    "threads",
    "pipe_size",
    "pipe_size_obtained",
    "size",
)


_TABLE_COLUMNS = [
    "strategy",
    "copier",
    "size",
    "threads",
    "pipe_size",
    "seconds",
    "alloc_s",
    "copy_s",
    "bytes_per_s",
    "ratio_to_memcpy",
    "verified",
    "reason",
]


def _plain(value: Any) -> Any:
    """``value`` as plain JSON: numpy scalars as Python ones, NaN and infinities as ``None``."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _strategy_summary(rows) -> dict[str, Any]:
    """The fastest available combination at the largest size measured, and whether every combination verified."""
    available = rows[rows["available"]]
    summary: dict[str, Any] = {
        "available": bool(len(available)),
        "verified": bool(len(available)) and bool(available["verified"].all()),
        "reason": "; ".join(dict.fromkeys(reason for reason in rows["reason"] if reason)),
    }
    largest = available[available["size"] == available["size"].max()]
    if len(largest):
        best = largest.loc[largest["bytes_per_s"].idxmax()]
        summary.update({field: _plain(best[field]) for field in _STRATEGY_FIELDS})
    else:
        summary.update(dict.fromkeys(_STRATEGY_FIELDS))
    return summary


def summarize(frame, limits: dict[str, float], params: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of a :func:`~workbench.kernels.conversion.run_conversion` result: the parameters, the
    limits, per strategy its best ``bytes_per_s`` and ``ratio_to_memcpy``, and every row."""
    strategies = {name: _strategy_summary(rows) for name, rows in frame.groupby("strategy", sort=False)}
    return {
        **params,
        **{key: _plain(value) for key, value in limits.items()},
        "all_verified": all(s["verified"] for s in strategies.values() if s["available"]),
        "unavailable": {name: s["reason"] for name, s in strategies.items() if not s["available"]},
        "strategies": strategies,
        "rows": [{key: _plain(value) for key, value in row.items()} for row in frame.to_dict("records")],
    }


@click.command("conversion")
@click.option(
    "--size", "sizes", type=SIZE, multiple=True, help="Bytes of anonymous memory to convert; repeat (default 256M)."
)
@click.option(
    "--threads",
    "thread_counts",
    type=click.IntRange(1),
    multiple=True,
    help="Threads for the parallel copies; repeat (default: 1 and the CPU count).",
)
@click.option("--strategy", "strategies", multiple=True, help="Only this strategy; repeat (default: all).")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True, help="Best of this many runs.")
@click.option(
    "--pipe-size", "pipe_sizes", type=SIZE, multiple=True, help="Pipe buffer for vmsplice; repeat (default 64K, 1M)."
)
@click.option(
    "--target",
    type=click.Choice(["host", "vm"]),
    default="host",
    show_default=True,
    help="host: this machine; vm: inside the lab VM, each conversion then preserved by LUO, kexec'd, restored "
    "and verified (one cycle per size and thread count, one memfd per strategy).",
)
@click.option("--kernel", help="vm: the lab kernel to boot (7.2, 7.3, 7.2+deferred-init, a path; default 7.2).")
@json_option
@data_option
@output_option
def conversion_cmd(
    sizes, thread_counts, strategies, repeats, pipe_sizes, target, kernel, as_json, data_dir, output
) -> None:
    """Anonymous memory into memfds (copies, write, vmsplice+splice, process_vm_readv, huge pages), each
    verified page by page, against the machine's memcpy bandwidth and page allocation rate."""
    if target == "vm":
        _in_vm(sizes, thread_counts, strategies, kernel, as_json, data_dir, output)
        return
    if kernel:
        raise click.UsageError("--kernel is for --target vm (the host runs its own kernel)")
    from workbench.kernels.conversion import (
        DEFAULT_PIPE_SIZES,
        STRATEGIES,
        check_arguments,
        default_thread_counts,
        run_conversion,
    )

    params = {
        "sizes": list(sizes or (256 << 20,)),
        "threads": list(thread_counts or default_thread_counts()),
        "strategies": list(strategies or STRATEGIES),
        "repeats": repeats,
        "pipe_sizes": list(pipe_sizes or DEFAULT_PIPE_SIZES),
    }
    try:
        check_arguments(params["sizes"], params["threads"], params["strategies"], repeats)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    def body(run) -> dict[str, Any]:
        import pandas as pd

        frame, limits = run_conversion(
            params["sizes"], params["threads"], params["strategies"], repeats, params["pipe_sizes"], progress=True
        )
        summary = summarize(frame, limits, params)
        summary["tables"] = {"conversion": frame, "limits": pd.DataFrame([limits])}
        return summary

    _record_and_report(params, body, _TABLE_COLUMNS, "some conversions did not verify", as_json, data_dir, output)


def _record_and_report(params, body, columns, failure: str, as_json, data_dir, output) -> None:
    """Runs ``body`` as a ``bench.conversion`` record, prints the JSON or the table of ``columns``; exit status 1
    when a row did not verify."""
    summary = run_recorded("bench.conversion", params, body, data_dir=data_dir, output=output, as_json=as_json)
    if not as_json:
        import pandas as pd

        from workbench.cli.output import emit_frame

        emit_frame(pd.DataFrame(summary["rows"])[columns])
    if not summary["all_verified"]:
        click.echo(f"workbench: {failure}: see the rows with verified false", err=True)
        raise SystemExit(1)


_VM_COLUMNS = [
    "strategy",
    "copier",
    "size",
    "threads",
    "convert_s",
    "bytes_per_s",
    "ratio_to_memcpy",
    "preserve_s",
    "blackout_s",
    "retrieve_s",
    "verify_s",
    "end_to_end_s",
    "verified",
]


def summarize_vm(frame, cycles: list[dict], params: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of :func:`~workbench.lab.conversion_bench.bench_in_vm`: per strategy (largest size, its
    fastest thread count) the conversion rate, ``ratio_to_memcpy`` against the guest's memcpy measured in the same
    boot, and the end-to-end time to a verified memfd after the kexec; the guest's limits; every row."""
    strategies: dict[str, Any] = {}
    for name, rows in frame.groupby("strategy", sort=False):
        largest = rows[rows["size"] == rows["size"].max()]
        best = largest.loc[largest["bytes_per_s"].idxmax()]
        strategies[name] = {key: _plain(best[key]) for key in _VM_COLUMNS if key != "strategy"}
        strategies[name]["verified"] = bool(rows["verified"].all())
    limits = cycles[-1].get("target_limits", {}) if cycles else {}
    return {
        **params,
        "target": "vm",
        "accelerator": cycles[-1].get("accelerator") if cycles else None,
        **{f"guest_{key}": _plain(value) for key, value in limits.items()},
        "memcpy_bytes_per_s": _plain(limits.get("memcpy_bytes_per_s")),
        "anon_to_survived_s": [c.get("anon_to_survived_s") for c in cycles],
        "cycle_records": [c.get("record_id") for c in cycles],
        "all_verified": bool(len(frame)) and bool(frame["verified"].all()) and all(c["verified"] for c in cycles),
        "unavailable": {},
        "strategies": strategies,
        "rows": [{key: _plain(value) for key, value in row.items()} for row in frame.to_dict("records")],
    }


def _in_vm(sizes, thread_counts, strategies, kernel, as_json, data_dir, output) -> None:
    from workbench.kernels.conversion import STRATEGIES
    from workbench.lab.conversion_bench import VM_SKIPPED, bench_in_vm
    from workbench.records import open_store

    chosen = list(strategies or [name for name in STRATEGIES if name not in VM_SKIPPED])
    unknown = [name for name in chosen if name not in STRATEGIES]
    if unknown:
        raise click.UsageError(f"unknown strategy {unknown[0]!r}: choose from {', '.join(STRATEGIES)}")
    params = {
        "target": "vm",
        "sizes": list(sizes or (64 << 20,)),
        "threads": list(thread_counts or (1,)),
        "strategies": chosen,
        "kernel": kernel,
        "skipped": {name: why for name, why in VM_SKIPPED.items() if name not in chosen},
    }

    def progress(event) -> None:
        if not as_json and event.kind == "phase" and event.status == "end":
            click.echo(f"  {event.name} done", err=True)

    def body(run) -> dict[str, Any]:
        frame, cycles = bench_in_vm(
            params["sizes"], params["threads"], chosen, store=open_store(data_dir), kernel=kernel, on_event=progress
        )
        summary = summarize_vm(frame, cycles, params)
        summary["tables"] = {"conversion_vm": frame}
        return summary

    failure = "some conversions did not survive the kexec intact"
    _record_and_report(params, body, _VM_COLUMNS, failure, as_json, data_dir, output)
