"""``workbench bench blackout``: the blackout with memory preserved against a plain kexec, in one run."""

from __future__ import annotations

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, print_summary

__all__ = ["blackout_cmd"]


def _shares(value: str) -> list[float]:
    shares = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        try:
            shares.append(float(part[:-1]) / 100 if part.endswith("%") else float(part))
        except ValueError:
            raise click.BadParameter(f"{part!r} is not a share of guest RAM (e.g. 0, 25%, 0.5)") from None
    return shares


def _sizes(value: str) -> list[int]:
    return [SIZE.convert(p.strip(), None, None) for p in value.split(",") if p.strip()]


@click.command("blackout")
@click.option("--memory", default="1G,2G,4G", show_default=True, help="Guest RAM sizes, comma-separated.")
@click.option(
    "--preserve",
    default="0,25%,50%",
    show_default=True,
    help="Shares of guest RAM to preserve (0 is the baseline: a kexec that preserves nothing, always run).",
)
@click.option(
    "--kernel",
    "kernels",
    default="7.2",
    show_default=True,
    help="Kernels, comma-separated (e.g. 7.2,7.2+deferred-init); ratios against the first.",
)
@click.option("--cpus", type=int, default=2, show_default=True, help="vCPUs of the lab VM.")
@click.option("--tcg-threads", type=click.Choice(["single", "multi"]), default="single", show_default=True)
@click.option("--repeat", type=int, default=1, show_default=True, help="Cycles per point.")
@json_option
@data_option
@output_option
def blackout_cmd(memory, preserve, kernels, cpus, tcg_threads, repeat, as_json, data_dir, output) -> None:
    """Blackout of cycles with preserved memory against a baseline kexec that preserves nothing, same guest and
    kernel, one run: blackout_ratio per guest RAM and share, the comparison between kernels, and slopes (seconds
    per GiB of RAM and per GiB preserved) with their standard errors. Every cycle is verified and recorded."""
    from workbench.lab.blackout_bench import BlackoutSweep, record_blackout_sweep
    from workbench.lab.errors import LabError
    from workbench.records import open_store

    sweep = BlackoutSweep(
        memory_mb=[size >> 20 for size in _sizes(memory)],
        shares=_shares(preserve),
        kernels=[k.strip() for k in kernels.split(",") if k.strip()],
        cpus=cpus,
        tcg_threads=tcg_threads,
        repeat=repeat,
    )
    try:
        sweep.validate()
    except LabError as exc:
        raise click.UsageError(str(exc)) from None

    def progress(row) -> None:
        if not as_json:
            click.echo(
                f"{row['kernel']} {row['memory_mb']} MiB, {row['share']:.0%} preserved: blackout "
                f"{row['blackout_s']:.2f} s ({row['record_id']})",
                err=True,
            )

    summary, path = record_blackout_sweep(sweep, open_store(data_dir), progress, output=output)
    print_summary(summary, path, as_json)
