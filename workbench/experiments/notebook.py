"""``notebook``: a notebook run top to bottom with its parameters, run again; its headlines are compared (numbers a
headline marks ``exact`` must match, the others are measured)."""

from __future__ import annotations

from typing import Any

from workbench.experiments.registry import EXACT, MEASURED, Experiment, register
from workbench.records import RecordStore

__all__ = ["rerun_notebook", "headline_field_class", "EXPERIMENT"]


def rerun_notebook(store: RecordStore, params: dict[str, Any]) -> str:
    """Runs the notebook a ``notebook`` record's ``params`` name (``notebook``, the rest its parameters) into
    ``store``; returns the new record's id."""
    from workbench.notebooks import find_notebook, record_notebook

    parameters = {k: v for k, v in params.items() if k != "notebook"}
    return record_notebook(store, find_notebook(params["notebook"]), parameters)["record_id"]


def headline_field_class(path: str, original: dict[str, Any]) -> str | None:
    """``headlines.<key>.numbers.<name>.value`` is exact or measured as the number says; other fields of a
    notebook's result are not compared."""
    parts = path.split(".")
    if len(parts) != 5 or parts[0] != "headlines" or parts[2] != "numbers" or parts[4] != "value":
        return None
    for headline in original.get("headlines", []):
        if str(headline.get("key")) != parts[1]:
            continue
        for number in headline.get("numbers", []):
            if str(number.get("name")) == parts[3]:
                return EXACT if number.get("exact") else MEASURED
    return None


EXPERIMENT = register(
    Experiment(
        "notebook",
        rerun_notebook,
        tolerance=1.0,
        accepts=lambda params: "notebook" in params,
        describe="a notebook run top to bottom",
        classifier=headline_field_class,
    )
)
