"""``workbench bench``: benchmarks, each recorded and written to a JSON file. One module per benchmark."""

from __future__ import annotations

import importlib

import click


@click.group()
def bench() -> None:
    """Benchmarks: throughput measured side by side with the machine's own limits in the same run."""


for _module, _name in (
    ("workbench.cli.bench_hash", "hash_cmd"),
    ("workbench.cli.bench_conversion", "conversion_cmd"),
    ("workbench.cli.bench_metadata", "metadata_cmd"),
    ("workbench.cli.bench_model", "model_cmd"),
    ("workbench.cli.bench_blackout", "blackout_cmd"),
    ("workbench.cli.bench_preload", "preload_cmd"),
):
    try:
        bench.add_command(getattr(importlib.import_module(_module), _name))
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:
            raise
