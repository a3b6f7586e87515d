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
    from papermill.exceptions import PapermillExecutionError

    from workbench.notebooks import execute, export_html, find_notebook

    try:
        notebook = find_notebook(name)
    except FileNotFoundError as exc:
        fail(str(exc))
    params = {k: _parse_value(v) for k, v in parameters}
    store = _store_for_notebooks(data_dir)
    try:
        with store.run("notebook", {"notebook": notebook.name, **params}) as run:
            executed = run.artifacts_dir / notebook.name
            try:
                execute(notebook, executed, params)
            finally:
                if executed.exists():
                    page = export_html(executed, run.artifacts_dir / f"{notebook.stem}.html")
                    run.update_result(executed=str(executed), html=str(page))
    except PapermillExecutionError as exc:
        fail(f"{notebook.name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} (record {run.id})")
    summary = {"notebook": notebook.name, "record_id": run.id, "executed": str(executed), "html": str(page)}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"{notebook.name}: ok, record {run.id}\nexecuted: {executed}\nhtml: {page}")


@click.command("demo")
@click.option("--smoke", is_flag=True, help="Tiny parameters (what the test suite runs).")
@click.option("--full", is_flag=True, help="The full sweeps (every size, thread count and repeat; ~20 minutes).")
@click.option("--only", multiple=True, help="Only notebooks whose name contains this.")
@data_option
def demo(smoke, full, only, data_dir) -> None:
    """The main job: run every notebook headless and write a static HTML report (one page each + index). The
    default parameters are meeting-sized (a few minutes with the lab kernel built)."""
    if smoke and full:
        fail("--smoke and --full exclude each other", 2)
    from workbench.notebooks import list_notebooks

    notebooks = [nb for nb in list_notebooks() if not only or any(o in nb.stem for o in only)]
    if not notebooks:
        fail("no notebooks to run")
    store = _store_for_notebooks(data_dir)
    try:
        index = _demo(store, notebooks, {"SMOKE": True} if smoke else {"FULL": True} if full else None)
    except DemoFailed as exc:
        fail(str(exc))
    click.echo(f"report: {index}")


class DemoFailed(RuntimeError):
    pass


def _demo(store, notebooks, parameters):
    from workbench.notebooks import build_report

    params = {
        "smoke": bool(parameters and parameters.get("SMOKE")),
        "full": bool(parameters and parameters.get("FULL")),
    }
    with store.run("demo", {**params, "notebooks": [nb.name for nb in notebooks]}) as run:
        out_dir = store.data_dir / "reports" / run.id

        def progress(nb, status, seconds):
            click.echo(f"  {nb.name}: {status} ({seconds:.0f} s)", err=True)

        click.echo(f"workbench demo: running {len(notebooks)} notebooks, report in {out_dir}", err=True)
        index, rows = build_report(out_dir, notebooks, parameters, progress)
        failed = [r["notebook"] for r in rows if r["status"] != "ok"]
        run.update_result(report=str(index), notebooks=rows, failed=failed)
        if failed:
            raise DemoFailed(f"notebooks failed: {', '.join(failed)}; the report is still at {index}")
    return index
