"""``workbench cycle``: one preserve → kexec → restore cycle on a target."""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from workbench.cli.common import SIZE, data_option, json_option, output_option
from workbench.cli.output import emit_json, fail
from workbench.lab.moment_dumps import MOMENT_STOPS
from workbench.records import write_json_atomic
from workbench.units import parse_size


def _parse_sizes(ctx, param, value: str | None) -> list[int] | None:
    """``--sizes 256M,16M,4K`` as bytes."""
    if value is None:
        return None
    try:
        return [parse_size(part) for part in value.split(",")]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


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
@click.option(
    "--kernel",
    "kernel",
    help="qemu: the lab kernel to boot: 7.2, 7.3, 7.2+deferred-init (variants after +), or a path; built on first "
    "use (default: 7.2).",
)
@click.option(
    "--next-kernel",
    help="The kernel to kexec into: a lab kernel name as for --kernel (qemu), or a bzImage path (on the SSH host).",
)
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
    "--crash-after",
    "crash_after",
    type=click.Choice(["preserve", "retrieve", "restore"]),
    help="qemu: panic the target at this point (preserve: before the kexec; retrieve or restore: in the next kernel "
    "after retrieving) for its capture kernel to write a kdump-compressed dump into the run's folder; the result "
    "names it (vmcore), for workbench inspect --vmcore.",
)
@click.option(
    "--workload",
    type=click.Choice(["memfd", "sessions", "criu", "selftest", "baseline", "systemd", "preload"]),
    default="memfd",
    show_default=True,
    help="memfd: preserve memfds; sessions: memfds of several sizes in one session and small files in a second; "
    "criu: keep a running process alive with CRIU (qemu target); selftest: the kernel's own liveupdate selftest "
    "(--selftest), stage 1 built from --kernel's sources, stage 2 from --next-kernel's (qemu target); baseline: a "
    "kexec that preserves nothing (qemu target); systemd: a service's memfds kept by systemd's own fd store across "
    "systemctl kexec (guest target: --target guest); preload: an unmodified program (--program) whose memory is "
    "in memfds from birth (LD_PRELOAD), its birth memfds preserved as they are (qemu target).",
)
@click.option(
    "--program",
    default="redis-server",
    show_default=True,
    help="preload: the Debian program to run with its memory in memfds from birth.",
)
@click.option(
    "--size", "program_size", type=SIZE, default="32M", show_default=True, help="preload: the program's data set."
)
@click.option(
    "--selftest",
    "selftest",
    default="luo_kexec_simple",
    show_default=True,
    help="selftest: which kexec-spanning selftest of tools/testing/selftests/liveupdate (luo_kexec_simple, "
    "luo_multi_session, luo_stress_sessions, luo_stress_files).",
)
@click.option(
    "--sizes",
    callback=_parse_sizes,
    help="sessions: the memfds of the cycle's session, comma-separated sizes (default 256M,16M,1028K,4K); systemd: "
    "the memfds the service pushes into its fd store (default 64M,16M,4M).",
)
@click.option(
    "--fdstore-preserve/--no-fdstore-preserve",
    "fdstore_preserve",
    default=True,
    show_default=True,
    help="systemd: the service's unit has FileDescriptorStorePreserve=yes (without it systemd drops the store).",
)
@click.option(
    "--kexec-load/--no-kexec-load",
    "load_next_kernel",
    default=True,
    show_default=True,
    help="systemd: the operator loads the next kernel (kexec -s -l) before systemctl kexec (without it systemd "
    "refuses the kexec: the failure path).",
)
@click.option(
    "--dump-at",
    "dump_at",
    multiple=True,
    type=click.Choice(list(MOMENT_STOPS)),
    help="guest: write a vmcore of the guest (vmcore-MOMENT.elf in the run's folder) when it reaches this moment: "
    "serialized (the kexec), next_kernel_pending (before LUO deserializes), deserialized, finished. Boots with "
    "nokaslr and QEMU's gdbstub; repeat for several.",
)
@click.option(
    "--small-files",
    type=click.IntRange(0),
    default=64,
    show_default=True,
    help="sessions: memfds in a second session, <session>-small (0: none).",
)
@click.option("--small-file-size", type=SIZE, default="4K", show_default=True, help="sessions: each small file's size.")
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
    "--no-preflight",
    "no_preflight",
    is_flag=True,
    help="Skip the check that the next kernel accepts the running kernel's handover formats.",
)
@click.option(
    "--force", is_flag=True, help="Run the cycle even when the preflight refuses it (a negative control, say)."
)
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
    kernel,
    next_kernel,
    next_config,
    kho_scratch,
    kernel_args,
    dump_after,
    dump_format,
    crash_after,
    workload,
    selftest,
    sizes,
    small_files,
    small_file_size,
    fdstore_preserve,
    load_next_kernel,
    dump_at,
    program,
    program_size,
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
    no_preflight,
    force,
    allow_this_machine,
    as_json,
    data_dir,
    output,
) -> None:
    """Preserve memfds in a LUO session, kexec, restore them and verify every page; recorded as lab.cycle."""
    from workbench.lab.cycle import run_cycle, run_cycles
    from workbench.lab.errors import (
        CycleFailed,
        InvalidCycle,
        KernelBuildError,
        KernelWithoutLiveUpdate,
        SelftestBuildError,
    )
    from workbench.lab.faults import Faults
    from workbench.lab.params import CycleParams
    from workbench.lab.target import parse_targets, target_class
    from workbench.lab.workload import make_workload
    from workbench.records import open_store

    ctx = click.get_current_context()
    given = {name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}
    values = {
        "memfds": memfds,
        "memfd_size": memfd_size,
        "tokens": list(tokens),
        "seed": seed,
        "sizes": sizes,
        "small_files": small_files,
        "small_file_size": small_file_size,
        "preserve": fdstore_preserve,
        "load_next_kernel": load_next_kernel,
        "dump_at": list(dump_at),
        "program": program,
        "size": program_size,
        "anon_size": anon_size,
        "memfd_region": memfd_region,
        "region_kind": region_kind,
        "images": images,
        "criu": criu_path,
        "criu_kdat": criu_kdat,
        "lazy_pages": lazy_pages,
        "test": selftest,
        "stage1_kernel": kernel,
        "stage2_kernel": next_kernel or kernel,
        "convert": [s.strip() for s in convert.split(",")] if convert else [],
        "convert_copier": convert_copier,
        "convert_threads": convert_threads,
        "pipe_size": pipe_size,
        "kernel": kernel,
        "memory_mb": memory // (1 << 20) if memory else None,
        "cpus": cpus,
        "kho_scratch": kho_scratch,
        "kernel_args": kernel_args,
        "dump_after": list(dump_after),
        "dump_format": dump_format,
        "inventory": inventory,
        "key": ssh_key,
        "known_hosts": known_hosts,
        "next_initrd": next_initrd,
        "results_dir": results_dir,
        "dry_run": dry_run,
        "allow_this_machine": allow_this_machine,
    }
    if workload == "memfd" and convert:
        workload = "converted"  # --convert fills the memfd workload's memfds from anonymous memory
    try:
        chosen = make_workload(
            workload,
            **{k: values[k] for k in _WORKLOAD_FLAGS.get(workload, ()) if _set(k, given)},
            **({k: values[k] for k in _SELFTEST_KERNELS} if workload == "selftest" else {}),
        )
        accepted = target_class(target.split(":")[0]).option_names()
        foreign = [k for k in _TARGET_FLAGS if _set(k, given) and k not in accepted]
        if foreign:
            raise InvalidCycle(
                f"{', '.join(_flag(k) for k in foreign)} {'is' if len(foreign) == 1 else 'are'} not for the "
                f"{target.split(':')[0]} target"
            )
        targets = parse_targets(target, data_dir=data_dir, **{k: values[k] for k in _TARGET_FLAGS if _set(k, given)})
        params = CycleParams(
            session=session,
            next_kernel=next_kernel,
            next_config=next_config,
            timeout_s=timeout_s,
            return_timeout_s=return_timeout_s,
            preflight=not no_preflight,
            force=force,
            faults=Faults(crash_after=crash_after),
        )
        if workload == "sessions":  # run_cycle cannot check it: the workload does not see the session name
            chosen.validate_session(session)
        other = sorted(k for k in _ALL_WORKLOAD_FLAGS - set(_WORKLOAD_FLAGS.get(workload, ())) if _set(k, given))
        if other:
            raise InvalidCycle(
                f"{', '.join(_flag(k) for k in other)} do{'es' if len(other) == 1 else ''} not apply to the "
                f"{workload} workload"
            )
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc), 2)
    store = open_store(data_dir)
    several = len(targets) > 1

    def progress(label, event):
        prefix = f"{label}: " if several else ""
        if event.kind == "phase" and event.status == "end":
            secs = f" {event.seconds:.3f} s" if event.seconds is not None else ""
            click.echo(f"  {prefix}{event.name} done{secs}", err=True)
        elif event.kind == "state":
            click.echo(f"{prefix}[{event.name}] {event.text}".rstrip(), err=True)

    try:
        if several:
            results = run_cycles(targets, chosen, params, store=store, on_event=None if as_json else progress)
        else:
            only = targets[0]
            try:
                results = [
                    run_cycle(
                        chosen,
                        params,
                        target=only,
                        store=store,
                        on_event=None if as_json else (lambda e: progress(only.label, e)),
                    )
                ]
            except CycleFailed as exc:
                if as_json:
                    emit_json(only.failure_result(exc))
                fail(f"{exc} (record {exc.record_id})")
    except (ValueError, FileNotFoundError, KernelWithoutLiveUpdate, KernelBuildError, SelftestBuildError) as exc:
        fail(str(exc), 2)
    out = results if several else results[0]
    if output:
        write_json_atomic(output, out)
    if as_json:
        emit_json(out)
    else:
        for r in results:
            _echo_any(r)
    bad = [
        r
        for r in results
        if not (r.get("verified") or r.get("outcome") == "crashed" or (r.get("dry_run") and "error" not in r))
    ]
    if bad:
        failed = [r for r in bad if "error" in r]
        if failed and not as_json and several:
            click.echo(f"{len(failed)} of {len(results)} targets failed", err=True)
        sys.exit(1 if failed else 3)


#: the command line's options that are a workload's parameters, by workload (flag variable -> parameter)
_WORKLOAD_FLAGS = {
    "memfd": ("memfds", "memfd_size", "tokens", "seed"),
    "converted": (
        "memfds",
        "memfd_size",
        "tokens",
        "seed",
        "convert",
        "convert_copier",
        "convert_threads",
        "pipe_size",
    ),
    "criu": ("anon_size", "memfd_region", "region_kind", "images", "criu", "criu_kdat", "lazy_pages", "seed"),
    "sessions": ("sizes", "small_files", "small_file_size", "seed"),
    "selftest": ("test",),
    "systemd": ("sizes", "seed", "preserve", "load_next_kernel"),
    "preload": ("program", "size", "seed"),
}
#: the selftest workload's kernels: the sources of stage 1's and stage 2's binaries follow --kernel and --next-kernel
_SELFTEST_KERNELS = ("stage1_kernel", "stage2_kernel")
_ALL_WORKLOAD_FLAGS = {k for flags in _WORKLOAD_FLAGS.values() for k in flags}
#: the command line's options that are a target's options (each target refuses those it does not have)
_TARGET_FLAGS = (
    "kernel",
    "memory_mb",
    "cpus",
    "kho_scratch",
    "kernel_args",
    "dump_after",
    "dump_format",
    "dump_at",
    "inventory",
    "key",
    "known_hosts",
    "next_initrd",
    "results_dir",
    "dry_run",
    "allow_this_machine",
)
#: parameter -> the click parameter that sets it, where the names differ
_SOURCE = {
    "criu": "criu_path",
    "test": "selftest",
    "memory_mb": "memory",
    "key": "ssh_key",
    "tokens": "tokens",
    "preserve": "fdstore_preserve",
    "size": "program_size",
}
_FLAGS = {
    "criu_path": "criu",
    "memory": "memory",
    "ssh_key": "ssh-key",
    "fdstore_preserve": "fdstore-preserve",
    "load_next_kernel": "kexec-load",
    "dump_at": "dump-at",
    "program_size": "size",
    "allow_this_machine": "i-really-want-to-kexec-this-machine",
}


def _set(name: str, given: set[str]) -> bool:
    return _SOURCE.get(name, name) in given


def _flag(name: str) -> str:
    source = _SOURCE.get(name, name)
    return "--" + _FLAGS.get(source, source.replace("_", "-"))


def _echo_any(r: dict) -> None:
    """One target's outcome: a failure, a dry run, or a finished cycle."""
    host = r.get("host")
    prefix = f"{host}: " if host else ""
    if "error" in r:
        click.echo(f"{prefix}FAILED in {r.get('failed_phase')}: {r['error']} (record {r.get('record_id')})")
        return
    if r.get("outcome") == "crashed":
        kdump = r.get("kdump", {})
        click.echo(
            f"{prefix}CRASHED on purpose after {r['crashed_after']}: kdump ({kdump.get('dump_bytes', 0) >> 20} MiB, "
            f"makedumpfile -d {kdump.get('dump_level')}) at {r['vmcore']}; record {r['record_id']}"
        )
        click.echo(f"  {r['kho_kdump']['finding']}")
        vmlinux = f" --vmlinux {r['vmlinux']}" if r.get("vmlinux") else ""  # none for a bare bzImage
        click.echo(f"  inspect it: workbench inspect --vmcore {r['vmcore']}{vmlinux}")
        return
    if r.get("dry_run"):
        click.echo(
            f"{prefix}dry run OK: prepared, preserved and loaded {r['would_kexec']['kernel']}, then undid it "
            f"({', '.join(r['stood_down'].get('undone', []))}); record {r['record_id']}"
        )
        return
    _echo_result(r, prefix, "host clock, kexec to first command" if host else "host clock")


def _echo_result(result: dict, prefix: str, blackout_clock: str) -> None:
    """A finished cycle in a few lines: verdict, phases, blackout, conversions, process downtime."""
    verdict = "verified" if result["verified"] else "NOT VERIFIED"
    kept = f"{result['pages_checked']} pages in {len(result['memfds'])} memfds, session {result['session']!r}"
    if result.get("workload") == "selftest":
        kept = f"the kernel selftest {result['selftest']}, both stages"
    click.echo(f"{prefix}{verdict}: {kept}, {result['kernel_release_before']} -> {result['kernel_release_after']}")
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
    for session in result.get("sessions", []):
        click.echo(f"  session {session['name']!r}: {session['files']} memfds, {session['bytes']} bytes")
    if result.get("workload") == "selftest":
        click.echo(
            f"  selftest {result['selftest']}: stage 1 exit {result['stage1_exit']} (built from "
            f"{result['stage1_source_release']}), stage 2 exit {result['stage2_exit']} (built from "
            f"{result['stage2_source_release']})"
        )
    if result.get("workload") == "criu" and result.get("downtime_s") is not None:
        click.echo(f"  process downtime: {result['downtime_s']:.3f} s (freeze to first instruction, host clock)")
