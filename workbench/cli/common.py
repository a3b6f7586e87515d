"""Options and helpers shared by the sub-commands."""

from __future__ import annotations

from typing import Any

import click

from workbench.records import open_store, write_json_atomic
from workbench.units import parse_size

__all__ = ["SIZE", "json_option", "data_option", "output_option", "run_recorded"]


class _SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = _SizeType()


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


def data_option(f):
    return click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False),
        help="Record folder (default: $WORKBENCH_DATA or data/).",
    )(f)


def output_option(f):
    return click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False),
        help="Also write the JSON result to this file (default: the run's folder).",
    )(f)


def run_recorded(kind: str, params: dict[str, Any], body, *, data_dir=None, output=None, as_json=False) -> dict:
    """Runs ``body(run)`` inside an experiment record, stores its returned summary (and ``tables``, a dict of
    DataFrames, if it returns one under that key), writes the JSON result file and prints it."""
    from workbench.cli.output import emit_json

    store = open_store(data_dir)
    with store.run(kind, params) as run:
        summary = body(run)
        tables = summary.pop("tables", {})
        for name, frame in tables.items():
            run.add_table(name, frame)
        summary["record_id"] = run.id
        run.update_result(**{k: v for k, v in summary.items() if k != "record_id"})
        path = write_json_atomic(output or (run.artifacts_dir / f"{kind}.json"), summary)
    if as_json:
        emit_json(summary)
    else:
        for key, value in summary.items():
            click.echo(f"{key}: {value}")
        click.echo(f"written to {path}")
    return summary
