"""``workbench kernel``: the lab kernels (build, info, list)."""

from __future__ import annotations

import click

from workbench.cli.common import json_option
from workbench.cli.output import emit_json, fail

__all__ = ["kernel"]


@click.group()
def kernel() -> None:
    """The lab kernels: Linux 7.2 or 7.3 from Debian's linux-source packages with KHO/LUO, optionally changed by
    variants and patches, built once (through ccache) and cached."""


def _kernel_options(f):
    """--version (and its old name --series), --variant, --patch, --base."""
    f = click.option("--base", help="Base configuration: defconfig or lean (default: defconfig).")(f)
    f = click.option(
        "--patch",
        "patches",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False),
        help="A patch of your own, applied with patch -p1 after the variants' patches (repeatable).",
    )(f)
    f = click.option(
        "--variant",
        "variants",
        multiple=True,
        metavar="NAME",
        help="A variant from workbench/lab/kconfig/variants/ (repeatable; they compose in order).",
    )(f)
    f = click.option("--series", hidden=True, help="Old name of --version.")(f)
    return click.option("--version", "version", help="Kernel version: 7.2 or 7.3 (default: 7.2).")(f)


def _spec(version, series, variants, patches, base):
    from pathlib import Path

    from workbench.lab.errors import LabError
    from workbench.lab.kernel import DEFAULT_VERSION, KernelSpec
    from workbench.lab.kernel_config import DEFAULT_BASE

    if version and series and version != series:
        fail(f"--version {version} and --series {series} disagree; give one")
    try:
        return KernelSpec(
            version or series or DEFAULT_VERSION,
            tuple(variants),
            tuple(Path(p) for p in patches),
            base or DEFAULT_BASE,
        )
    except LabError as exc:
        fail(str(exc))


@kernel.command("build")
@_kernel_options
@click.option("--jobs", "-j", type=int, help="Parallel jobs (default: CPUs + 1).")
@json_option
def build(version, series, variants, patches, base, jobs, as_json) -> None:
    """Build a lab kernel, or return the cached one at once. The JSON has the kernel's fields, "cached" (nothing
    was built now) and its build's "build_seconds", "objects" compiled and "ccache" hits and misses."""
    from workbench.lab.errors import LabError
    from workbench.lab.kernel import build_kernel, cached_kernel

    spec = _spec(version, series, variants, patches, base)
    try:
        cached = cached_kernel(spec)
        lab = cached or build_kernel(spec, jobs=jobs, progress=not as_json)
    except LabError as exc:
        fail(str(exc))
    info = {**lab.as_dict(), "cached": cached is not None}
    if as_json:
        emit_json(info)
    elif cached:
        click.echo(f"lab kernel {lab.release} (cached): {lab.path}")
    else:
        rate = f", ccache hit rate {lab.ccache['hit_rate']:.0%}" if lab.ccache else ""
        click.echo(
            f"lab kernel {lab.release} (built in {lab.build_seconds:.0f} s, {lab.objects} objects{rate}): {lab.path}"
        )


@kernel.command("info")
@_kernel_options
@json_option
def info(version, series, variants, patches, base, as_json) -> None:
    """Where a cached lab kernel is, if it is built."""
    from workbench.lab.kernel import cache_root, cached_kernel

    spec = _spec(version, series, variants, patches, base)
    lab = cached_kernel(spec)
    data = {"built": lab is not None, "config_hash": spec.config().hash(), "cache": str(cache_root() / "kernels")}
    if lab:
        data.update(lab.as_dict())
    if as_json:
        emit_json(data)
    else:
        for k, v in data.items():
            click.echo(f"{k}: {v}")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@kernel.command("list")
@json_option
def list_(as_json) -> None:
    """Every cached lab kernel: name, release, variants, patches, config hash, size on disk, build time."""
    from workbench.lab.kernel import list_kernels

    rows = []
    for lab in list_kernels():
        rows.append(
            {
                "name": lab.name,
                "version": lab.version,
                "release": lab.release,
                "variants": list(lab.variants),
                "patches": list(lab.patches),
                "patch_hash": lab.patch_hash,
                "base": lab.base,
                "config_hash": lab.config_hash,
                "size_bytes": lab.disk_usage(),
                "build_seconds": lab.build_seconds,
                "built_at": lab.built_at,
                "path": str(lab.path),
            }
        )
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("(no lab kernel built yet: `workbench kernel build`)")
        return
    header = ("NAME", "RELEASE", "BASE", "CONFIG", "PATCHES", "SIZE", "BUILD", "PATH")
    table = [
        (
            r["name"],
            r["release"],
            r["base"] or "-",
            r["config_hash"],
            ", ".join(r["patches"]) or "-",
            _size(r["size_bytes"]),
            f"{r['build_seconds']:.0f} s" if r["build_seconds"] is not None else "-",
            r["path"],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in (header, *table)) for i in range(len(header))]
    for row in (header, *table):
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
