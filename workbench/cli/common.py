"""Options and helpers shared by the sub-commands."""

from __future__ import annotations

from typing import Any

import click

from workbench.records import open_store
from workbench.units import parse_size

__all__ = ["SIZE", "json_option", "data_option", "output_option", "run_recorded", "print_summary"]


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


def print_summary(summary: dict[str, Any], path, as_json: bool) -> None:
    """Prints a recorded summary as JSON, or as ``key: value`` lines and where its JSON file is."""
    from workbench.cli.output import emit_json

    if as_json:
        emit_json(summary)
        return
    for key, value in summary.items():
        click.echo(f"{key}: {value}")
    click.echo(f"written to {path}")


def run_recorded(kind: str, params: dict[str, Any], body, *, data_dir=None, output=None, as_json=False) -> dict:
    """Runs ``body(run)`` inside an experiment record (:func:`workbench.experiments.recording.record_summary`) and
    prints the summary."""
    from workbench.experiments.recording import record_summary

    summary, path = record_summary(open_store(data_dir), kind, params, body, output=output)
    print_summary(summary, path, as_json)
    return summary
