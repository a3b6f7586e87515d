"""``workbench cycle``: one preserve → kexec → restore cycle on a target."""

from __future__ import annotations

import sys

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, write_json_atomic
from workbench.cli.output import emit_json, fail


@click.command("cycle")
@click.option("--target", default="qemu", show_default=True, help="qemu (the lab VM on this machine).")
@click.option("--memfds", type=click.IntRange(0), default=2, show_default=True, help="Number of memfds to preserve.")
@click.option("--memfd-size", type=SIZE, default="64M", show_default=True, help="Size of each memfd.")
@click.option("--session", default="workbench", show_default=True, help="LUO session name (at most 63 bytes).")
@click.option("--token", "tokens", type=int, multiple=True, help="Token of each memfd (default 1000, 1001, ...).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fill pattern.")
@click.option("--memory", "memory", type=SIZE, help="Guest RAM (default: enough for the memfds, at least 1G).")
@click.option("--cpus", type=click.IntRange(1), default=2, show_default=True, help="Guest CPUs.")
@click.option("--next-kernel", type=click.Path(exists=True, dir_okay=False), help="bzImage to kexec into.")
@click.option("--next-config", type=click.Path(exists=True, dir_okay=False), help="The next kernel's .config.")
@click.option("--kho-scratch", help="kho_scratch= boot parameter, e.g. 16M,64M,32M.")
@click.option("--kernel-args", default="", help="Extra kernel command line arguments.")
@click.option(
    "--dump-after",
    "dump_after",
    multiple=True,
    type=click.Choice(["preserve", "restore"]),
    help="Write a vmcore of the guest after this phase into the run's folder.",
)
@click.option("--dump-format", type=click.Choice(["elf", "kdump-zlib"]), default="elf", show_default=True)
@click.option("--timeout", "timeout_s", type=float, help="Seconds to wait for any one step (default: by size).")
@json_option
@data_option
@output_option
def cycle(
    target,
    memfds,
    memfd_size,
    session,
    tokens,
    seed,
    memory,
    cpus,
    next_kernel,
    next_config,
    kho_scratch,
    kernel_args,
    dump_after,
    dump_format,
    timeout_s,
    as_json,
    data_dir,
    output,
) -> None:
    """Preserve memfds in a LUO session, kexec, restore them and verify every page; recorded as lab.cycle."""
    from workbench.lab.cycle import CycleFailed, CycleParams, run_cycle
    from workbench.lab.kernel import KernelBuildError, KernelWithoutLiveUpdate
    from workbench.records import open_store

    if target != "qemu":
        fail(f"unknown target {target!r}: use qemu")
    params = CycleParams(
        memfds=memfds,
        memfd_size=memfd_size,
        session=session,
        tokens=list(tokens) if tokens else None,
        seed=seed,
        memory_mb=memory // (1 << 20) if memory else None,
        cpus=cpus,
        next_kernel=next_kernel,
        next_config=next_config,
        kho_scratch=kho_scratch,
        kernel_args=kernel_args,
        dump_after=list(dump_after),
        dump_format=dump_format,
        timeout_s=timeout_s,
    )
    progress = None
    if not as_json:

        def progress(event):
            if event.kind == "phase" and event.status == "end":
                secs = f" {event.seconds:.3f} s" if event.seconds is not None else ""
                click.echo(f"  {event.name} done{secs}", err=True)
            elif event.kind == "state":
                click.echo(f"[{event.name}] {event.text}".rstrip(), err=True)

    try:
        result = run_cycle(params, store=open_store(data_dir), on_event=progress)
    except (ValueError, FileNotFoundError, KernelWithoutLiveUpdate, KernelBuildError) as exc:
        fail(str(exc), 2)
    except CycleFailed as exc:
        if as_json:
            emit_json(
                {
                    "verified": False,
                    "error": str(exc),
                    "failed_phase": exc.phase,
                    "serial_log": str(exc.serial_log),
                    "record_id": exc.record_id,
                }
            )
        fail(f"{exc} (record {exc.record_id})")
    if output:
        write_json_atomic(output, result)
    if as_json:
        emit_json(result)
    else:
        verdict = "verified" if result["verified"] else "NOT VERIFIED"
        click.echo(
            f"{verdict}: {result['pages_checked']} pages in {len(result['memfds'])} memfds, session "
            f"{result['session']!r}, {result['kernel_release_before']} -> {result['kernel_release_after']}"
        )
        for name, secs in result["phases"].items():
            click.echo(f"  {name:>9}: {secs:.3f} s")
        click.echo(f"  blackout: {result['blackout_s']:.3f} s (host clock); record {result['record_id']}")
    if not result["verified"]:
        sys.exit(3)
