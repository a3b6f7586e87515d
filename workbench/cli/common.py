"""Options and helpers shared by the sub-commands."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import click

from workbench.records import _json_default

__all__ = ["parse_size", "SIZE", "json_option", "data_option", "output_option", "write_json_atomic"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """``64M``, ``1G``, ``4096``, ``1.5G`` (binary units; a trailing ``B``/``iB`` is allowed) to bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size: use a number with an optional K, M, G or T suffix, e.g. 64M")
    return int(float(m[1]) * _UNITS[m[2].upper()])


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


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Writes ``obj`` as JSON to ``path`` through a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def run_recorded(kind: str, params: dict[str, Any], body, *, data_dir=None, output=None, as_json=False) -> dict:
    """Runs ``body(run)`` inside an experiment record, stores its returned summary (and ``tables``, a dict of
    DataFrames, if it returns one under that key), writes the JSON result file and prints it."""
    from workbench.cli.output import emit_json
    from workbench.records import open_store

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
