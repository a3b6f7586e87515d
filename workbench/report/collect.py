"""The headlines an executed notebook displayed (:func:`workbench.report.headline.show_headline`), read back from
its outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from workbench.report.errors import BadHeadline
from workbench.report.headline import MIME_TYPE, Headline

__all__ = ["headlines_of"]


def headlines_of(executed: str | os.PathLike[str], page: str | None = None) -> list[dict[str, Any]]:
    """Every headline in the outputs of the executed notebook ``executed``, in cell order, as JSON dicts (the
    shape of :class:`~workbench.report.headline.Headline`) with two fields added: ``notebook`` (the notebook's
    file name) and ``page`` (its HTML page).

    :param executed: an executed notebook (``.ipynb``), such as papermill writes
    :param page: the name of the notebook's HTML page; default ``<stem>.html``, the name the report gives it
    :raises ~workbench.report.errors.BadHeadline: an output of the headline type does not have its shape (the
        message names the cell)
    """
    import nbformat

    path = Path(executed)
    notebook = nbformat.read(path, as_version=4)
    found = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            if MIME_TYPE not in data:
                continue
            value = data[MIME_TYPE]
            try:
                headline = Headline.from_json(json.loads(value) if isinstance(value, str) else value)
            except (BadHeadline, ValueError) as exc:
                raise BadHeadline(f"{path.name}, cell {index}: {exc}") from None
            found.append({**headline.to_json(), "notebook": path.name, "page": page or f"{path.stem}.html"})
    return found
