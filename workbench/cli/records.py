"""``workbench records``: list, show and compare experiment records, and export and import them as archives."""

from __future__ import annotations

import click

from workbench.cli.output import emit_frame, emit_json, fail
from workbench.record_archive import export_records, import_records
from workbench.records import STATUSES, RecordStoreError, RunNotFound, open_store
from workbench.units import format_size


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        params[key] = value
    return params


@click.group()
def records() -> None:
    """Experiment records: every benchmark, cycle and inspection the workbench ran."""


@records.command("list")
@click.option("--kind", help="Only runs of this kind (a prefix ending in '.' matches a family, e.g. 'bench.').")
@click.option("--status", type=click.Choice(STATUSES), help="Only runs with this status.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Only runs with this parameter.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Record folder (default: data/).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_runs(kind, status, params, data_dir, as_json) -> None:
    """List runs, oldest first."""
    try:
        frame = open_store(data_dir).list(kind=kind, status=status, **_parse_params(params))
    except RecordStoreError as exc:
        fail(str(exc))
    if not as_json and not frame.empty:
        frame = frame[[c for c in frame.columns if not c.startswith("result.")]]
    emit_frame(frame, as_json)


@records.command("show")
@click.argument("run_id")
@click.option("--table", "table_name", help="Print this measurement table of the run.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Record folder (default: data/).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(run_id, table_name, data_dir, as_json) -> None:
    """Show one run (an id, or a unique part of one)."""
    store = open_store(data_dir)
    try:
        record = store.get(run_id)
        if table_name:
            emit_frame(store.table(record.id, table_name), as_json)
            return
    except (RunNotFound, KeyError, RecordStoreError) as exc:
        fail(str(exc))
    if as_json:
        emit_json(record.as_dict())
        return
    info = record.as_dict()
    for key in ("id", "kind", "status", "error", "started", "ended", "duration_s", "artifacts_dir"):
        if info[key] is not None:
            click.echo(f"{key:>13}: {info[key]}")
    click.echo(f"{'params':>13}: {info['params']}")
    click.echo(f"{'result':>13}:")
    for key, value in info["result"].items():
        click.echo(f"    {key}: {value}")
    env = info["environment"]
    click.echo(
        f"{'environment':>13}: python {env.get('python')}, host kernel {env.get('host_kernel_release')}, "
        f"{env.get('cpu_count')} x {env.get('cpu_model')}, git {env.get('git')}"
    )
    for key in ("target_kernel_release", "target_config_hash", "accelerator"):
        if key in env:
            click.echo(f"    {key}: {env[key]}")
    click.echo(f"{'tables':>13}: {', '.join(info['tables']) or '(none)'}")


@records.command("compare")
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--table", "table_name", required=True, help="The measurement table to compare.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Record folder (default: data/).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def compare(run_ids, table_name, data_dir, as_json) -> None:
    """Stack one table of several runs, side by side."""
    try:
        emit_frame(open_store(data_dir).compare(list(run_ids), table_name), as_json)
    except (RunNotFound, KeyError, RecordStoreError) as exc:
        fail(str(exc))


@records.command("export")
@click.argument("run_ids", nargs=-1, required=True, metavar="ID...")
@click.option(
    "--to", "path", required=True, type=click.Path(dir_okay=False), help="The archive file to write (a zip file)."
)
@click.option("--no-artifacts", is_flag=True, help="Leave the runs' artifact folders (logs, vmcores) out.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Record folder (default: data/).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def export(run_ids, path, no_artifacts, data_dir, as_json) -> None:
    """Write runs to one archive file, to share them.

    Each ID is a run id or a unique part of one. The archive (a zip file) holds each run's row, tables and
    artifacts, and the environment it was written on; `workbench records import` adds it to another record
    folder."""
    try:
        summary = export_records(open_store(data_dir), list(run_ids), path, artifacts=not no_artifacts)
    except RecordStoreError as exc:
        fail(str(exc))
    if as_json:
        emit_json(summary.as_dict())
        return
    click.echo(f"exported {len(summary.run_ids)} run(s) to {summary.path} ({format_size(summary.bytes)}):")
    for run_id in summary.run_ids:
        click.echo(f"  {run_id}")
    click.echo(
        f"{summary.tables} table(s), {summary.artifact_files} artifact file(s) "
        f"({format_size(summary.artifact_bytes)}){'; artifacts left out' if no_artifacts else ''}"
    )
    for skipped in summary.skipped_artifacts:
        click.echo(f"  not archived: {skipped}")


@records.command("import")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Record folder (default: data/).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def import_(path, data_dir, as_json) -> None:
    """Add the runs of an exported archive: all of them, or none.

    The whole archive is checked first: a damaged or foreign file is refused and nothing is imported. Runs the
    folder already has with the same content are skipped; a run with the same id but other content refuses the
    import."""
    try:
        summary = import_records(open_store(data_dir), path)
    except RecordStoreError as exc:
        fail(str(exc))
    if as_json:
        emit_json(summary.as_dict())
        return
    click.echo(f"{summary.path}: written {summary.created} on {summary.exported_on}")
    for run_id in summary.imported:
        click.echo(f"  imported         {run_id}")
    for run_id in summary.already_present:
        click.echo(f"  already present  {run_id}")
    click.echo(
        f"imported {len(summary.imported)} run(s) ({summary.tables} table(s), {summary.artifact_files} artifact "
        f"file(s)); {len(summary.already_present)} already present"
    )
