"""``workbench cycle``: one preserve → kexec → restore cycle on a target."""

from __future__ import annotations

import sys

import click

from workbench.cli.common import SIZE, data_option, json_option, output_option, write_json_atomic
from workbench.cli.output import emit_json, fail


@click.command("cycle")
@click.option(
    "--target",
    default="qemu",
    show_default=True,
    help="qemu (the lab VM on this machine) or ssh:HOST[,HOST...]: hosts from the inventory by name, or "
    "user@host[:port]; several hosts run at once.",
)
@click.option("--memfds", type=click.IntRange(0), default=2, show_default=True, help="Number of memfds to preserve.")
@click.option("--memfd-size", type=SIZE, default="64M", show_default=True, help="Size of each memfd.")
@click.option("--session", default="workbench", show_default=True, help="LUO session name (at most 63 bytes).")
@click.option("--token", "tokens", type=int, multiple=True, help="Token of each memfd (default 1000, 1001, ...).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fill pattern.")
@click.option("--memory", "memory", type=SIZE, help="Guest RAM (default: enough for the memfds, at least 1G).")
@click.option("--cpus", type=click.IntRange(1), default=2, show_default=True, help="Guest CPUs.")
@click.option("--next-kernel", type=click.Path(dir_okay=False), help="bzImage to kexec into (a path on the SSH host).")
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
@click.option(
    "--workload",
    type=click.Choice(["memfd", "criu"]),
    default="memfd",
    show_default=True,
    help="memfd: preserve memfds; criu: keep a running process alive with CRIU (qemu target).",
)
@click.option("--anon", "anon_size", type=SIZE, default="64M", show_default=True, help="criu: anonymous memory.")
@click.option(
    "--memfd-region", type=SIZE, default="0", show_default=True, help="criu: shmem memory LUO preserves directly."
)
@click.option(
    "--region-kind",
    type=click.Choice(["tmpfile", "memfd"]),
    default="tmpfile",
    show_default=True,
    help="criu: the region is an unlinked tmpfs file (CRIU skips it) or a memfd (CRIU 3.17 dumps it too).",
)
@click.option(
    "--images",
    type=click.Choice(["direct", "copy"]),
    default="direct",
    show_default=True,
    help="criu: preserve CRIU's tmpfs image files as they are, or copy them into memfds.",
)
@click.option("--criu", "criu_path", default="/usr/sbin/criu", show_default=True, help="criu: the CRIU binary.")
@click.option(
    "--criu-kdat",
    type=click.Choice(["probe", "carry"]),
    default="probe",
    show_default=True,
    help="criu: CRIU probes the next kernel, or gets its probe cache through LUO (same kernel only).",
)
@click.option("--lazy-pages", is_flag=True, help="criu: restore with criu lazy-pages (memory follows the resume).")
@click.option(
    "--convert",
    "convert",
    help="Fill the memfds from anonymous memory in the target with these conversion strategies (STRATEGY or "
    "one per memfd, comma-separated; see workbench bench conversion), then preserve them.",
)
@click.option("--convert-copier", default="", help="convert: copy loop of the copy strategies (numpy, numba).")
@click.option("--convert-threads", type=click.IntRange(1), default=1, show_default=True, help="convert: threads.")
@click.option("--pipe-size", type=SIZE, default="0", help="convert: pipe buffer size of the vmsplice strategies.")
@click.option("--timeout", "timeout_s", type=float, help="Seconds to wait for any one step (default: by size).")
@click.option(
    "--return-timeout", "return_timeout_s", type=float, help="Seconds to wait for the target after the kexec."
)
@click.option("--inventory", type=click.Path(dir_okay=False), help="Lab hosts (default: lab-hosts.toml in --data).")
@click.option("--ssh-key", type=click.Path(dir_okay=False), help="ssh: private key (overrides the inventory).")
@click.option("--known-hosts", type=click.Path(dir_okay=False), help="ssh: known_hosts file (default ~/.ssh/...).")
@click.option("--next-initrd", help="ssh: the next kernel's initrd on the host.")
@click.option("--results-dir", help="ssh: results folder on the host, on disk (default /var/tmp/workbench/<record>).")
@click.option("--dry-run", is_flag=True, help="ssh: check, prepare, preserve and load, then undo it all; no kexec.")
@click.option(
    "--i-really-want-to-kexec-this-machine",
    "allow_this_machine",
    is_flag=True,
    help="ssh: allow a target that is the machine the workbench runs on.",
)
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
    workload,
    anon_size,
    memfd_region,
    region_kind,
    images,
    criu_path,
    criu_kdat,
    lazy_pages,
    convert,
    convert_copier,
    convert_threads,
    pipe_size,
    timeout_s,
    return_timeout_s,
    inventory,
    ssh_key,
    known_hosts,
    next_initrd,
    results_dir,
    dry_run,
    allow_this_machine,
    as_json,
    data_dir,
    output,
) -> None:
    """Preserve memfds in a LUO session, kexec, restore them and verify every page; recorded as lab.cycle."""
    from workbench.lab.cycle import CycleFailed, CycleParams, run_cycle
    from workbench.lab.kernel import KernelBuildError, KernelWithoutLiveUpdate
    from workbench.records import open_store

    if target != "qemu" and not target.startswith("ssh:"):
        fail(f"unknown target {target!r}: use qemu or ssh:HOST[,HOST...]")
    if target == "qemu" and (dry_run or allow_this_machine or ssh_key or known_hosts or next_initrd or results_dir):
        fail(
            "--dry-run, --ssh-key, --known-hosts, --next-initrd, --results-dir and "
            "--i-really-want-to-kexec-this-machine are for ssh: targets",
            2,
        )
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
        return_timeout_s=return_timeout_s,
        workload=workload,
        anon_size=anon_size,
        memfd_region=memfd_region,
        region_kind=region_kind,
        images=images,
        criu=criu_path,
        criu_kdat=criu_kdat,
        lazy_pages=lazy_pages,
        convert=[s.strip() for s in convert.split(",")] if convert else [],
        convert_copier=convert_copier,
        convert_threads=convert_threads,
        pipe_size=pipe_size,
    )
    if workload == "criu" and target != "qemu":
        fail("--workload criu runs on the qemu target only", 2)
    if target.startswith("ssh:"):
        _run_ssh_targets(
            target[4:],
            params,
            data_dir=data_dir,
            inventory=inventory,
            overrides={
                "key": ssh_key,
                "known_hosts": known_hosts,
                "next_initrd": next_initrd,
                "results_dir": results_dir,
            },
            dry_run=dry_run,
            allow_this_machine=allow_this_machine,
            as_json=as_json,
            output=output,
        )
        return
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
        _echo_result(result, "", "host clock")
    if not result["verified"]:
        sys.exit(3)


def _run_ssh_targets(
    spec, params, *, data_dir, inventory, overrides, dry_run, allow_this_machine, as_json, output
) -> None:
    """``--target ssh:HOST[,HOST...]``: one host gives one result object (like qemu), several a list, one entry
    per host in the order given; the exit status is non-zero if any host failed."""
    from workbench.lab.cycle import CycleFailed
    from workbench.lab.inventory import InventoryError, default_inventory_path, load_inventory, resolve_hosts
    from workbench.lab.ssh import failure_result, run_ssh_cycle, run_ssh_cycles
    from workbench.records import open_store

    try:
        inv = load_inventory(inventory or default_inventory_path(data_dir), missing_ok=inventory is None)
        hosts = [h.replace(**overrides) for h in resolve_hosts(spec, inv)]
    except InventoryError as exc:
        fail(str(exc), 2)
    store = open_store(data_dir)
    several = len(hosts) > 1

    def progress(host, event):
        prefix = f"{host}: " if several else ""
        if event.kind == "phase" and event.status == "end":
            secs = f" {event.seconds:.3f} s" if event.seconds is not None else ""
            click.echo(f"  {prefix}{event.name} done{secs}", err=True)
        elif event.kind == "state":
            click.echo(f"{prefix}[{event.name}] {event.text}".rstrip(), err=True)

    if not several:
        host = hosts[0]
        try:
            result = run_ssh_cycle(
                host,
                params,
                store=store,
                on_event=None if as_json else (lambda e: progress(host.name, e)),
                dry_run=dry_run,
                allow_this_machine=allow_this_machine,
            )
        except ValueError as exc:
            fail(str(exc), 2)
        except CycleFailed as exc:
            if as_json:
                emit_json(failure_result(host.name, exc))
            fail(f"{exc} (record {exc.record_id})")
        results = [result]
    else:
        try:
            results = run_ssh_cycles(
                hosts,
                params,
                store=store,
                on_event=None if as_json else progress,
                dry_run=dry_run,
                allow_this_machine=allow_this_machine,
            )
        except ValueError as exc:
            fail(str(exc), 2)
    if output:
        write_json_atomic(output, results if several else results[0])
    if as_json:
        emit_json(results if several else results[0])
    else:
        for r in results:
            _echo_ssh_result(r)
    bad = [r for r in results if not (r.get("verified") or (r.get("dry_run") and "error" not in r))]
    if bad:
        failed = [r for r in bad if "error" in r]
        if failed and not as_json and several:
            click.echo(f"{len(failed)} of {len(results)} hosts failed", err=True)
        sys.exit(1 if failed else 3)


def _echo_ssh_result(r: dict) -> None:
    host = r.get("host")
    if "error" in r:
        click.echo(f"{host}: FAILED in {r.get('failed_phase')}: {r['error']} (record {r.get('record_id')})")
        return
    if r.get("dry_run"):
        click.echo(
            f"{host}: dry run OK: prepared, preserved and loaded {r['would_kexec']['kernel']}, then undid it "
            f"({', '.join(r['stood_down'].get('undone', []))}); record {r['record_id']}"
        )
        return
    _echo_result(r, f"{host}: ", "host clock, kexec to first command")


def _echo_result(result: dict, prefix: str, blackout_clock: str) -> None:
    """A finished cycle in a few lines: verdict, phases, blackout, conversions, process downtime."""
    verdict = "verified" if result["verified"] else "NOT VERIFIED"
    click.echo(
        f"{prefix}{verdict}: {result['pages_checked']} pages in {len(result['memfds'])} memfds, session "
        f"{result['session']!r}, {result['kernel_release_before']} -> {result['kernel_release_after']}"
    )
    for name, secs in result["phases"].items():
        click.echo(f"  {name:>9}: {secs:.3f} s")
    click.echo(f"  blackout: {result['blackout_s']:.3f} s ({blackout_clock}); record {result['record_id']}")
    for row in result.get("conversions", []):
        click.echo(
            f"  memfd {row['memfd']} {row['strategy']}/{row['copier']}: converted in {row['convert_s']:.3f} s, "
            f"end to end {row['end_to_end_s']:.3f} s"
        )
    if result.get("anon_to_survived_s") is not None:
        click.echo(f"  anonymous memory -> survived the kexec: {result['anon_to_survived_s']:.3f} s")
    if result.get("workload") == "criu" and result.get("downtime_s") is not None:
        click.echo(f"  process downtime: {result['downtime_s']:.3f} s (freeze to first instruction, host clock)")
