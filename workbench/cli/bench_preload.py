"""``workbench bench preload``: the runtime price of memfd from birth on a real Debian program."""

from __future__ import annotations

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, print_summary
from workbench.cli.output import fail

__all__ = ["preload_cmd"]


@click.command("preload")
@click.option("--program", default="redis-server", show_default=True, help="The Debian program to run (redis-server).")
@click.option("--tests", default="set,get", show_default=True, help="redis-benchmark tests, comma-separated, in order.")
@click.option("--requests", type=click.IntRange(1), default=200_000, show_default=True, help="Requests per test.")
@click.option("--keyspace", type=click.IntRange(1), default=100_000, show_default=True, help="Random keys drawn from.")
@click.option("--value-size", type=click.IntRange(1), default=256, show_default=True, help="Bytes per value.")
@click.option("--pipeline", type=click.IntRange(1), default=16, show_default=True, help="Pipelined requests.")
@click.option("--clients", type=click.IntRange(1), default=50, show_default=True, help="Connections.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True, help="Servers per mode, interleaved.")
@click.option("--threshold", type=SIZE, default="1M", show_default=True, help="Smallest mapping given a birth memfd.")
@json_option
@data_option
@output_option
def preload_cmd(
    program, tests, requests, keyspace, value_size, pipeline, clients, repeats, threshold, as_json, data_dir, output
) -> None:
    """A program's throughput and page faults with and without the memfd-from-birth LD_PRELOAD library, side by
    side in one run (fresh servers, modes interleaved): medians per mode and ratios preload / plain, the share of
    its memory in birth memfds, and a check of its data."""
    from workbench.experiments.bench_preload import record_bench_preload
    from workbench.lab.preload import PreloadError
    from workbench.lab.preload_bench import PreloadBench
    from workbench.records import open_store

    bench = PreloadBench(
        program=program,
        tests=[t.strip().lower() for t in tests.split(",") if t.strip()],
        requests=requests,
        keyspace=keyspace,
        value_size=value_size,
        pipeline=pipeline,
        clients=clients,
        repeats=repeats,
        threshold=threshold,
    )
    try:
        bench.validate()
    except PreloadError as exc:
        raise click.UsageError(str(exc)) from None

    def progress(row) -> None:
        if not as_json:
            click.echo(
                f"repeat {row['repeat']} {row['mode']}: {row['birth_memfds']} birth memfds, "
                f"rss {row['rss_bytes'] >> 20} MiB, data {'ok' if row['data_ok'] else 'WRONG'}",
                err=True,
            )

    try:
        summary, path = record_bench_preload(open_store(data_dir), bench.as_dict(), output=output, on_server=progress)
    except PreloadError as exc:
        fail(str(exc))
    print_summary(summary, path, as_json)
