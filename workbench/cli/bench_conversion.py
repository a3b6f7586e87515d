"""``workbench bench conversion``."""

from __future__ import annotations

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, print_summary

__all__ = ["conversion_cmd"]


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
    from workbench.experiments.bench_conversion import record_bench_conversion
    from workbench.kernels.conversion.summary import TABLE_COLUMNS
    from workbench.records import open_store

    summary, path = record_bench_conversion(open_store(data_dir), params, output=output, progress=True)
    _report(summary, path, TABLE_COLUMNS, "some conversions did not verify", as_json)


def _report(summary, path, columns, failure: str, as_json) -> None:
    """Prints the JSON or the table of ``columns``; exit status 1 when a row did not verify."""
    print_summary(summary, path, as_json)
    if not as_json:
        import pandas as pd

        from workbench.cli.output import emit_frame

        emit_frame(pd.DataFrame(summary["rows"])[columns])
    if not summary["all_verified"]:
        click.echo(f"workbench: {failure}: see the rows with verified false", err=True)
        raise SystemExit(1)


def _in_vm(sizes, thread_counts, strategies, kernel, as_json, data_dir, output) -> None:
    from workbench.kernels.conversion import STRATEGIES
    from workbench.lab.conversion_bench import VM_SKIPPED
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

    from workbench.experiments.bench_conversion import record_bench_conversion_vm
    from workbench.kernels.conversion.summary import VM_COLUMNS

    summary, path = record_bench_conversion_vm(open_store(data_dir), params, output=output, on_event=progress)
    _report(summary, path, VM_COLUMNS, "some conversions did not survive the kexec intact", as_json)
