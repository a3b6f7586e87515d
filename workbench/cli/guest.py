"""``workbench guest``: Debian guest root file systems for the lab VM (build, list, boot)."""

from __future__ import annotations

import click

from workbench.cli.common import data_option, json_option
from workbench.cli.output import emit_json, fail

__all__ = ["guest"]


@click.group()
def guest() -> None:
    """Debian guests: a root file system from Debian packages (minimal, with systemd, CRIU and Python), built once
    with mmdebstrap through this machine's Debian mirror and cached; the lab VM boots it with systemd as PID 1."""


def _size(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


@guest.command("build")
@click.option("--suite", default="sid", show_default=True, help="The Debian suite to build from.")
@click.option("--rebuild", is_flag=True, help="Build again even when cached (a new entry if versions changed).")
@json_option
def build(suite, rebuild, as_json) -> None:
    """Build a guest, or return the cached one at once. The JSON has the guest's fields (its key, path, package
    versions of systemd, CRIU and Python, "build_seconds", "size_bytes") and "cached" (nothing was built now)."""
    from workbench.lab.errors import LabError
    from workbench.lab.guest.image import GuestSpec, build_guest, cached_guest

    try:
        spec = GuestSpec(suite)
        cached = None if rebuild else cached_guest(spec)
        image = cached or build_guest(spec, rebuild=rebuild)
    except LabError as exc:
        fail(str(exc))
    if as_json:
        emit_json({**image.as_dict(), "cached": cached is not None})
    else:
        how = "cached" if cached else f"built in {image.build_seconds:.0f} s"
        click.echo(
            f"guest {image.name} ({how}, {_size(image.size_bytes)}, systemd {image.version_of('systemd')}, "
            f"criu {image.version_of('criu')}): {image.path}"
        )


@guest.command("list")
@json_option
def list_(as_json) -> None:
    """Every cached guest: name, key, systemd and CRIU versions, size on disk, build time."""
    from workbench.lab.guest.image import list_guests

    rows = [g.as_dict() for g in list_guests()]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("(no guest built yet: `workbench guest build`)")
        return
    header = ("NAME", "KEY", "SYSTEMD", "CRIU", "SIZE", "BUILD", "BUILT AT", "PATH")
    table = [
        (
            r["name"],
            r["key"],
            r["systemd"] or "-",
            r["criu"] or "-",
            _size(r["size_bytes"]),
            f"{r['build_seconds']:.0f} s",
            r["built_at"],
            r["path"],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in (header, *table)) for i in range(len(header))]
    for row in (header, *table):
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@guest.command("boot")
@click.option("--guest", "name", default="debian-sid", show_default=True, help="The guest to boot.")
@click.option("--kernel", help="The lab kernel (default: the lab's default kernel).")
@click.option("--memory", "memory_mb", type=int, help="Guest RAM in MiB (default: 1024).")
@json_option
@data_option
def boot(name, kernel, memory_mb, as_json, data_dir) -> None:
    """Boot a guest (built first if needed) with systemd as PID 1 until multi-user.target, then stop it, as a
    ``guest.boot`` record (the serial log in its folder). Reports the boot time on the host's clock and on
    systemd's (kernel to userspace, userspace to multi-user.target)."""
    from workbench.experiments.recording import record_summary
    from workbench.lab.errors import LabError
    from workbench.lab.guest.target import GuestTarget
    from workbench.records import open_store

    params = {"guest": name, "kernel": kernel, "memory_mb": memory_mb}

    def body(run) -> dict:
        return GuestTarget(kernel=kernel, memory_mb=memory_mb, guest=name).boot(run.artifacts_dir).as_dict()

    try:
        result, _ = record_summary(open_store(data_dir), "guest.boot", params, body)
    except LabError as exc:
        fail(str(exc))
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"{result['guest']} on {result['kernel']} ({result['accelerator']}): multi-user.target after "
            f"{result['kernel_to_multi_user_s']:.1f} s (kernel+initramfs {result['kernel_to_userspace_s']:.1f} s, "
            f"systemd {result['userspace_to_multi_user_s']:.1f} s; {result['host_multi_user_s']:.1f} s from QEMU's "
            f"start), PID 1 {result['pid1']}, systemd {result['systemd']}; record {result['record_id']}, serial log "
            f"{result['serial_log']}"
        )
