"""``workbench inspect``: KHO/LUO state of a running lab VM, a crash dump, or this machine's kernel."""

from __future__ import annotations

import click

from workbench.cli.common import data_option, json_option


def _open(qmp: str | None, vmcore: str | None, live: bool, vmlinux: str | None, method: str):
    from workbench.inspect.program import open_live, open_vm, open_vmcore

    if qmp:
        return open_vm(qmp, vmlinux, method=method), {"target": "vm", "qmp": qmp}
    if vmcore:
        return open_vmcore(vmcore, vmlinux), {"target": "vmcore", "vmcore": vmcore}
    return open_live(vmlinux), {"target": "live"}


_HEX_COLUMNS = ("address", "inode", "file", "serialized_data", "private_data", "ser_phys", "first_pfn")


def _readable(frame):
    import pandas as pd

    frame = frame.copy()
    for column in _HEX_COLUMNS:
        if column in frame.columns:
            frame[column] = [hex(int(v)) if v is not None and pd.notna(v) else "" for v in frame[column]]
    return frame


def _print_human(snap) -> None:
    from workbench.cli.output import emit_frame

    source = snap.source
    click.echo(
        f"{source.get('target')} {source.get('path')}: release {source.get('release')}, build id "
        f"{source.get('build_id')}, vmlinux {source.get('vmlinux')}"
    )
    for note in source.get("notes") or []:
        click.echo(f"  note: {note}")
    moment = snap.moment
    if moment:
        certain = "" if moment.get("moment_certain", True) else f" (one of {', '.join(moment['moment_possible'])})"
        click.echo(f"\nmoment: {moment['moment']}{certain}")
        for line in moment.get("moment_evidence", []):
            click.echo(f"  - {line}")
    for title, name in (
        ("KHO", "kho_summary"),
        ("LUO sessions and files", "luo_summary"),
        ("Preserved memfds", "memfds"),
        ("LUO file handlers", "file_handlers"),
    ):
        click.echo(f"\n{title}:")
        frame = snap.tables.get(name)
        if frame is None:
            click.echo(f"  (unavailable: {snap.errors.get(name, 'not read')})")
        else:
            emit_frame(_readable(frame))
    pending = snap.tables.get("pending_incoming")
    if pending is not None and len(pending):
        from workbench.inspect.pending import DESERIALIZED_AT

        click.echo(f"\nPending incoming sessions, from the handover bytes ({DESERIALIZED_AT}):")
        emit_frame(_readable(pending))
    agreement = snap.tables.get("agreement")
    if agreement is not None and len(agreement):
        from workbench.inspect.agreement import agreement_summary

        verdict = agreement_summary(agreement)
        said = {True: "they agree", False: "they DISAGREE", None: "nothing held by both"}[verdict["agree"]]
        click.echo(f"\nKernel objects against handover bytes ({verdict['checked']} fact(s) in both: {said}):")
        emit_frame(agreement)
    luo = snap.luo
    if luo:
        click.echo(
            f"\nLUO: enabled {luo['enabled']}, live update number {luo['liveupdate_num']} (next "
            f"{luo['next_liveupdate_num']}), {luo['outgoing_sessions']} outgoing and {luo['incoming_sessions']} "
            f"incoming session(s), /dev/liveupdate open: {luo['device_open']}, FLBs: {luo['flbs'] or 'none'}"
        )
    if snap.errors:
        click.echo("\nnot read: " + "; ".join(f"{k}: {v}" for k, v in snap.errors.items()))


@click.command("inspect")
@click.option("--qmp", type=click.Path(), help="QMP socket of a running lab VM (read live, not stopped).")
@click.option("--vmcore", type=click.Path(exists=True, dir_okay=False), help="A dump: ELF, kdump or flattened.")
@click.option("--live", is_flag=True, help="This machine's running kernel (/proc/kcore, root).")
@click.option("--vmlinux", type=click.Path(exists=True, dir_okay=False), help="The kernel's vmlinux (with DWARF).")
@click.option(
    "--method",
    type=click.Choice(["auto", "qmp", "ram-file"]),
    default="auto",
    show_default=True,
    help="How to read a VM: drgn's QMP transport, the guest RAM file, or QMP then the RAM file.",
)
@click.option("--no-memory-map", is_flag=True, help="Skip the physical memory map (free-list walk).")
@json_option
@data_option
def inspect(qmp, vmcore, live, vmlinux, method, no_memory_map, as_json, data_dir) -> None:
    """Print KHO (FDT, preserved memory, scratch, kexec metadata) and LUO (sessions, files, memfds) state;
    recorded as an experiment of kind "inspect" with its tables."""
    from workbench.cli.output import emit_json, fail
    from workbench.inspect.errors import InspectError
    from workbench.inspect.snapshot import snapshot
    from workbench.records import open_store

    if sum(bool(x) for x in (qmp, vmcore, live)) != 1:
        raise click.UsageError("give exactly one of --qmp SOCKET, --vmcore FILE or --live")
    params = {"qmp": qmp, "vmcore": vmcore, "live": live, "vmlinux": vmlinux, "method": method}
    store = open_store(data_dir)
    try:
        with store.run("inspect", params) as run:
            prog, _ = _open(qmp, vmcore, live, vmlinux, method)
            snap = snapshot(prog, memory=not no_memory_map)
            del prog
            for name, frame in snap.tables.items():
                run.add_table(name, frame)
            summary = snap.summary()
            run.update_result(**summary)
            summary["record_id"] = run.id
    except (InspectError, FileNotFoundError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
        return
    if as_json:
        emit_json(summary)
    else:
        _print_human(snap)
        click.echo(f"\nrecorded as {summary['record_id']}")
