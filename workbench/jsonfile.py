"""JSON files written whole or not at all. Standard library only: the lab's agent uses it on targets."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic"]


def write_json_atomic(
    path: str | os.PathLike[str],
    obj: Any,
    *,
    indent: int = 1,
    default: Callable[[Any], Any] | None = None,
    make_parents: bool = False,
) -> Path:
    """Writes ``obj`` as JSON to ``path`` through a temporary file in the same folder, fsync and a rename: a reader
    sees the old file or the whole new one, never half of it, and a failed write leaves no temporary file.
    ``default`` converts what JSON cannot hold; ``make_parents`` creates the folder. Returns the path."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=indent, default=default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
