"""``workbench run-notebook`` and ``workbench demo``."""

from __future__ import annotations

import click
import yaml

from workbench.cli.common import data_option, json_option
from workbench.cli.output import emit_json, fail


def _store_for_notebooks(data_dir):
    """The record store, shared with the notebooks' kernels (they inherit WORKBENCH_DATA)."""
    import os

    from workbench.records import open_store

    store = open_store(data_dir)
    os.environ["WORKBENCH_DATA"] = str(store.data_dir.resolve())
    return store


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@click.command("run-notebook")
@click.argument("name")
@click.option(
    "-p",
    "--parameter",
    "parameters",
    nargs=2,
    multiple=True,
    metavar="KEY VALUE",
    help="Override a value of the notebook's parameters cell (papermill), e.g. -p SMOKE True.",
)
@data_option
@json_option
def run_notebook(name, parameters, data_dir, as_json) -> None:
    """Re-run a notebook top to bottom with parameters, record the run, and export it to HTML."""
    from workbench.notebooks import record_notebook
    from workbench.report.errors import NotebookFailed, UnknownNotebook

    params = {k: _parse_value(v) for k, v in parameters}
    store = _store_for_notebooks(data_dir)
    try:
        summary = record_notebook(store, name, params)
    except UnknownNotebook as exc:
        fail(str(exc))
    except NotebookFailed as exc:
        fail(str(exc))
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"{summary['notebook']}: ok, record {summary['record_id']}")
        for headline in summary["headlines"]:
            click.echo(f"headline: {headline['title']}: {headline['text']}")
        click.echo(f"executed: {summary['executed']}\nhtml: {summary['html']}")


@click.command("demo")
@click.option("--smoke", is_flag=True, help="Tiny parameters (what the test suite runs).")
@click.option("--full", is_flag=True, help="The full sweeps (every size, thread count and repeat; ~20 minutes).")
@click.option("--only", multiple=True, help="Only notebooks whose name contains this.")
@click.option(
    "--compare-with",
    "compare_with",
    multiple=True,
    metavar="ID",
    help="Compare the headlines with these demo records instead of the previous report on this machine (repeatable).",
)
@data_option
def demo(smoke, full, only, compare_with, data_dir) -> None:
    """The main job: run every notebook headless and write a static HTML report (a front page of each notebook's
    finding, what changed since the previous report on this machine, one page per notebook). The default
    parameters are meeting-sized (a few minutes with the lab kernel built)."""
    if smoke and full:
        fail("--smoke and --full exclude each other", 2)
    from workbench.notebooks import list_notebooks
    from workbench.report.demo import run_demo
    from workbench.report.errors import ChangesError, DemoFailed
    from workbench.report.headline import format_value

    notebooks = [nb for nb in list_notebooks() if not only or any(o in nb.stem for o in only)]
    if not notebooks:
        fail("no notebooks to run")
    store = _store_for_notebooks(data_dir)

    def start(out_dir):
        click.echo(f"workbench demo: running {len(notebooks)} notebooks, report in {out_dir}", err=True)

    def progress(nb, status, seconds):
        click.echo(f"  {nb.name}: {status} ({seconds:.0f} s)", err=True)

    parameters = {"SMOKE": True} if smoke else {"FULL": True} if full else None
    try:
        report = run_demo(store, notebooks, parameters, compare_with=compare_with, on_start=start, on_notebook=progress)
    except ChangesError as exc:
        fail(str(exc), 2)
    except DemoFailed as exc:
        fail(str(exc))
    flagged = report.changes.flagged
    if report.changes.reference:
        click.echo(
            f"changes since {report.changes.since()}: {len(flagged)} of {len(report.changes.table)} numbers flagged",
            err=True,
        )
        for row in flagged.itertuples():
            before, now = format_value(row.previous, row.unit), format_value(row.now, row.unit)
            click.echo(f"  {row.headline}: {row.label}: {before} -> {now} ({row.verdict})", err=True)
    click.echo(f"report: {report.index}")
