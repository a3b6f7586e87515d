"""Printing results for people (tables) and for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import pandas as pd

from workbench.records import _json_default

__all__ = ["emit_json", "emit_frame", "fail"]


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=_json_default, sort_keys=False))


def emit_frame(df: pd.DataFrame, as_json: bool = False) -> None:
    if as_json:
        emit_json(json.loads(df.to_json(orient="records", date_format="iso")))
    elif df.empty:
        click.echo("(none)")
    else:
        with pd.option_context("display.max_rows", 500, "display.max_columns", 30, "display.width", 200):
            click.echo(df.to_string(index=False))


def fail(message: str, code: int = 1) -> None:
    click.echo(f"workbench: {message}", err=True)
    sys.exit(code)
