"""``workbench kernel``: the lab kernel."""

from __future__ import annotations

import click

from workbench.cli.common import json_option
from workbench.cli.output import emit_json, fail


@click.group()
def kernel() -> None:
    """The lab kernel: Linux 7.2 from Debian's linux-source package with KHO/LUO, built once and cached."""


@kernel.command("build")
@click.option("--series", default="7.2", show_default=True, help="Kernel series (Debian package linux-source-SERIES).")
@click.option("--jobs", "-j", type=int, help="Parallel jobs (default: CPUs + 1).")
@json_option
def build(series, jobs, as_json) -> None:
    """Build the lab kernel, or return the cached one at once."""
    from workbench.lab.kernel import KernelBuildError, build_kernel, cached_kernel

    cached = cached_kernel(series)
    try:
        lab = cached or build_kernel(series, jobs=jobs, progress=not as_json)
    except KernelBuildError as exc:
        fail(str(exc))
    info = {**lab.as_dict(), "cached": cached is not None}
    if as_json:
        emit_json(info)
    else:
        click.echo(f"lab kernel {lab.release} ({'cached' if cached else 'built'}): {lab.path}")


@kernel.command("info")
@click.option("--series", default="7.2", show_default=True)
@json_option
def info(series, as_json) -> None:
    """Where the cached lab kernel is, if it is built."""
    from workbench.lab.kernel import cache_root, cached_kernel, config_hash

    lab = cached_kernel(series)
    data = {"built": lab is not None, "config_hash": config_hash(), "cache": str(cache_root() / "kernels")}
    if lab:
        data.update(lab.as_dict())
    if as_json:
        emit_json(data)
    else:
        for k, v in data.items():
            click.echo(f"{k}: {v}")
