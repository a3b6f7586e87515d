"""``workbench bench metadata``."""

from __future__ import annotations

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, print_summary


def _folio_mix(ctx: click.Context, param: click.Parameter, value: str) -> dict[int, float]:
    from workbench.abi.design_space import parse_folio_mix

    try:
        return parse_folio_mix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


@click.command("metadata")
@click.option("--memory", type=SIZE, default="1T", show_default=True, help="Simulated host memory.")
@click.option(
    "--folio-mix",
    default="4K:1",
    show_default=True,
    callback=_folio_mix,
    help="Folio sizes and their shares of preserved memory, e.g. 4K:0.7,2M:0.3.",
)
@click.option(
    "--sparsity", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of memory not preserved."
)
@click.option(
    "--fragmentation",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="0: unpreserved memory comes in whole 2 MiB blocks; 1: it is scattered folio by folio.",
)
@click.option("--memfds", type=click.IntRange(1), default=16, show_default=True, help="Memfds holding the folios.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic map.")
@json_option
@data_option
@output_option
def metadata_cmd(memory, folio_mix, sparsity, fragmentation, memfds, seed, as_json, data_dir, output) -> None:
    """Preserved-memory metadata: size, encode and decode speed of the 7.2 KHO radix tree against a sparse
    bitmap map, a flat (pfn, order) array and the memfd folio arrays, on a synthetic host."""
    from workbench.abi.design_space import Workload
    from workbench.experiments.bench_metadata import metadata_params, record_bench_metadata
    from workbench.records import open_store

    try:
        workload = Workload(memory, folio_mix, sparsity, fragmentation, memfds, seed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    summary, path = record_bench_metadata(open_store(data_dir), metadata_params(workload), output=output)
    print_summary(summary, path, as_json)
