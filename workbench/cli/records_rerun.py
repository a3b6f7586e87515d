"""``workbench records rerun``: run a recorded experiment again and say whether the result agrees."""

from __future__ import annotations

import click

from workbench.cli.common import data_option, json_option
from workbench.cli.output import emit_frame, emit_json, fail

__all__ = ["rerun_cmd"]


def _overrides(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--set")
        out[key] = value
    return out


@click.command("rerun")
@click.argument("run_id")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change one of the record's parameters for the re-run (e.g. --set memfd_size=16M); repeat.",
)
@click.option(
    "--repeats", type=click.IntRange(1), default=1, show_default=True, help="Run it this many times (the noise)."
)
@click.option("--all", "show_all", is_flag=True, help="List every compared field, not only those that differ.")
@data_option
@json_option
def rerun_cmd(run_id, overrides, repeats, show_all, data_dir, as_json) -> None:
    """Re-run a recorded experiment (a cycle, a benchmark, a notebook run) with the same parameters and kernel,
    and compare: exact fields (verified, pages checked, decoded sizes) must match, measured ones must stay within
    the noise of the earlier runs and repeats. The verdict is recorded (kind ``rerun``). Exit status 1 when the
    re-run disagrees."""
    from workbench.experiments import ExperimentError, rerun
    from workbench.records import RecordStoreError, RunNotFound, open_store

    try:
        report = rerun(open_store(data_dir), run_id, overrides=_overrides(overrides), repeats=repeats)
    except (ExperimentError, RunNotFound, RecordStoreError) as exc:
        fail(str(exc))
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(f"original {report.original_id}, re-run {', '.join(report.rerun_ids)} (record {report.record_id})")
        for error in report.errors:
            click.echo(f"the re-run failed: {error}")
        table = report.comparison.table()
        shown = table if show_all else table[~table["agrees"]]
        emit_frame(shown.drop(columns=["agrees"]) if not shown.empty else shown)
        click.echo(f"verdict: {report.verdict} ({len(report.comparison.differences)} of {len(table)} fields differ)")
    if report.verdict != "agree":
        raise SystemExit(1)
