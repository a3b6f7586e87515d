"""``workbench bench hash``."""

from __future__ import annotations

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, print_summary


@click.command("hash")
@click.option("--size", type=SIZE, default="1G", show_default=True, help="Bytes of memory to hash.")
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True, help="Best of this many runs.")
@json_option
@data_option
@output_option
def hash_cmd(size, repeats, as_json, data_dir, output) -> None:
    """Page fingerprint (XXH3-64 per 4 KiB page) throughput against a plain parallel read of the same memory."""
    from workbench.experiments.bench_hash import record_bench_hash
    from workbench.records import open_store

    summary, path = record_bench_hash(open_store(data_dir), {"size": size, "repeats": repeats}, output=output)
    print_summary(summary, path, as_json)
