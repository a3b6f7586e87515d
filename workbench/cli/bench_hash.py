"""``workbench bench hash``."""

from __future__ import annotations

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, run_recorded


@click.command("hash")
@click.option("--size", type=SIZE, default="1G", show_default=True, help="Bytes of memory to hash.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True, help="Best of this many runs.")
@json_option
@data_option
@output_option
def hash_cmd(size, repeats, as_json, data_dir, output) -> None:
    """Page fingerprint (XXH3-64 per 4 KiB page) throughput against a plain parallel read of the same memory."""
    from workbench.kernels.pagehash import benchmark

    run_recorded(
        "bench.hash",
        {"size": size, "repeats": repeats},
        lambda run: benchmark(size, repeats),
        data_dir=data_dir,
        output=output,
        as_json=as_json,
    )
