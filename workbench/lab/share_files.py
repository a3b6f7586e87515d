"""Reading the files an agent leaves in a run's share (the ``guest/`` folder: its ``<phase>.json`` state files) as
the untrusted input they are: a buggy or hostile target decides their bytes, their size, and whether they are
files at all.

Every read is bounded (the caller's limit, :data:`JSON_LIMIT` for JSON, the end of a log with
:func:`read_share_tail`), takes a plain file name (no ``/``, no ``..``), opens it with ``O_NOFOLLOW`` and reads it
only if it is a regular file (:func:`open_share_file`, which a caller that moves a large file uses too), so neither
a symlink to the host's own files nor a FIFO that never ends is followed out of the run folder. JSON is checked
against the shape the host relies on (:data:`STATE_SHAPE` for a state file): what does not fit raises
:class:`~workbench.lab.errors.ShareFileMalformed` naming the file and the field; every other refusal raises
:class:`~workbench.lab.errors.ShareFileError`. Nothing else escapes a read.

Standard library only, like :mod:`workbench.lab.protocol`."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from workbench.lab.errors import ShareFileError, ShareFileMalformed
from workbench.lab.protocol import state_file

__all__ = [
    "JSON_LIMIT",
    "Shape",
    "Scalar",
    "ListOf",
    "MapOf",
    "Fields",
    "MEMFD_SHAPE",
    "STATE_SHAPE",
    "open_share_file",
    "read_share_bytes",
    "read_share_tail",
    "read_share_json",
    "read_state_file",
]

#: the most bytes a JSON file of the agent may have (a state file of a cycle with thousands of memfds is < 1 MiB)
JSON_LIMIT = 16 << 20


class Shape(Protocol):
    """What a JSON value must be. :meth:`problem` returns ``(field, what is wrong)`` for the first part of
    ``value`` that does not fit, with ``where`` the field's path so far, or None when it all fits."""

    def problem(self, value: Any, where: str) -> tuple[str, str] | None: ...


_KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for name in ("string", "integer", "number", "object", "array"):
        if isinstance(value, _KINDS[name]):
            return name
    return type(value).__name__


@dataclass(frozen=True)
class Scalar:
    """A value of one JSON ``kind``: ``string``, ``integer``, ``number``, ``boolean``, ``object`` or ``array``
    (an object's or array's contents unchecked). A boolean is neither an integer nor a number. ``nullable`` lets
    null through."""

    kind: str
    nullable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown JSON kind {self.kind!r}: one of {', '.join(_KINDS)}")

    def problem(self, value: Any, where: str) -> tuple[str, str] | None:
        if value is None and self.nullable:
            return None
        fits = isinstance(value, _KINDS[self.kind]) and (self.kind == "boolean" or not isinstance(value, bool))
        return None if fits else (where, f"is a JSON {_json_type(value)}, not a{_article(self.kind)} {self.kind}")


def _article(kind: str) -> str:
    return "n" if kind[0] in "aeiou" else ""


@dataclass(frozen=True)
class ListOf:
    """An array whose every item is ``item``."""

    item: Shape
    nullable: bool = False

    def problem(self, value: Any, where: str) -> tuple[str, str] | None:
        if value is None and self.nullable:
            return None
        if not isinstance(value, list):
            return where, f"is a JSON {_json_type(value)}, not an array"
        for index, item in enumerate(value):
            found = self.item.problem(item, f"{where}[{index}]")
            if found:
                return found
        return None


@dataclass(frozen=True)
class MapOf:
    """An object whose every value is ``value`` (its keys are any strings)."""

    value: Shape
    nullable: bool = False

    def problem(self, value: Any, where: str) -> tuple[str, str] | None:
        if value is None and self.nullable:
            return None
        if not isinstance(value, dict):
            return where, f"is a JSON {_json_type(value)}, not an object"
        for key, item in value.items():
            found = self.value.problem(item, f"{where}.{key}" if where else key)
            if found:
                return found
        return None


@dataclass(frozen=True)
class Fields:
    """An object whose fields named in ``fields`` have those shapes, those in ``required`` present; other fields
    (a workload's own) pass unchecked."""

    fields: Mapping[str, Shape]
    required: frozenset[str] = field(default_factory=frozenset)
    nullable: bool = False

    def problem(self, value: Any, where: str) -> tuple[str, str] | None:
        if value is None and self.nullable:
            return None
        if not isinstance(value, dict):
            return where, f"is a JSON {_json_type(value)}, not an object"
        missing = sorted(self.required - set(value))
        if missing:
            return (f"{where}.{missing[0]}" if where else missing[0]), "is missing"
        for name, shape in self.fields.items():
            if name in value:
                found = shape.problem(value[name], f"{where}.{name}" if where else name)
                if found:
                    return found
        return None


_INT = Scalar("integer")
_STRING_OR_NULL = Scalar("string", nullable=True)

#: one memfd (or CRIU region) of a state file's ``memfds``: what the host's result and its verification read
MEMFD_SHAPE = Fields(
    {
        "memfd": _INT,
        "size": _INT,
        "expected_size": _INT,
        "pages": _INT,
        "differing_pages": ListOf(_INT),
        "differing_count": _INT,
    },
    required=frozenset({"memfd", "size", "expected_size", "differing_count"}),
)

#: an agent's ``prepare.json`` or ``restore.json``: the fields every target's runner reads (a workload's own
#: fields are its ``summarize``'s to read)
STATE_SHAPE = Fields(
    {
        "phases": MapOf(Scalar("number")),
        "events": Scalar("array"),
        "session": Scalar("string"),
        "kernel_release_before": _STRING_OR_NULL,
        "kernel_release_after": _STRING_OR_NULL,
        "hash_impl": _STRING_OR_NULL,
        "current_phase": _STRING_OR_NULL,
        "preflight_live": Scalar("object", nullable=True),
        "error": Scalar("object", nullable=True),
        "verified": Scalar("boolean"),
        "finished": Scalar("boolean"),
        "dry_run": Scalar("boolean"),
        "pages_checked": _INT,
        "memfds": ListOf(MEMFD_SHAPE),
    }
)


def _share_path(folder: Path, name: str) -> Path:
    """``folder / name`` for a plain file name; anything that could leave ``folder`` is refused."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ShareFileError(f"{name!r} is not a plain file name in the share {folder}", Path(folder) / "?")
    return Path(folder) / name


def open_share_file(folder: Path, name: str) -> tuple[int, os.stat_result]:
    """Opens the agent's file ``name`` in the share ``folder`` for reading, never through a symlink, and checks on
    the open descriptor that it is a regular file; returns the descriptor (the caller closes it) and its ``fstat``.

    :param folder: the run's share (``guest/``), where the agent writes
    :param name: the file's name in it (no folders)
    :raises ShareFileError: the file is missing, a symlink, not a regular file, or cannot be opened"""
    path = _share_path(folder, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ShareFileError(f"{path} is missing: the agent did not write it", path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ShareFileError(
                f"{path} is a symlink; the host reads only regular files the agent wrote, never what a link names",
                path,
            ) from None
        raise ShareFileError(f"{path} cannot be opened: {exc.strerror or exc}", path) from None
    try:
        info = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise ShareFileError(f"{path} cannot be read: {exc.strerror or exc}", path) from None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ShareFileError(f"{path} is not a regular file; the host reads only files the agent wrote", path)
    return fd, info


def read_share_bytes(folder: Path, name: str, *, limit: int) -> bytes:
    """The bytes of the agent's file ``name`` in the share ``folder``, at most ``limit`` of them.

    :param folder: the run's share (``guest/``), where the agent writes
    :param name: the file's name in it (no folders)
    :param limit: the most bytes the file may have; a larger one is refused, never read whole
    :raises ShareFileError: the file is missing, a symlink, not a regular file, larger than ``limit``, or unreadable"""
    fd, info = open_share_file(folder, name)
    path = Path(folder) / name
    try:
        if info.st_size > limit:
            raise ShareFileError(f"{path} is {info.st_size} bytes, more than the {limit} it may have", path)
        chunks, size = [], 0
        while size <= limit:  # the file may grow while it is read: never more than limit + 1 bytes
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ShareFileError(f"{path} grew past the {limit} bytes it may have while it was read", path)
        return b"".join(chunks)
    except OSError as exc:
        raise ShareFileError(f"{path} cannot be read: {exc.strerror or exc}", path) from None
    finally:
        os.close(fd)


def read_share_tail(folder: Path, name: str, *, limit: int) -> bytes:
    """The last ``limit`` bytes (all of them, for a smaller file) of the agent's file ``name`` in the share
    ``folder``: the end of a log of any size.

    :param folder: the run's share (``guest/``), where the agent writes
    :param name: the file's name in it (no folders)
    :param limit: how many bytes from its end to read
    :raises ShareFileError: the file is missing, a symlink, not a regular file, or unreadable"""
    fd, info = open_share_file(folder, name)
    path = Path(folder) / name
    try:
        start = max(0, info.st_size - limit)
        chunks, size = [], 0
        while size < limit:
            chunk = os.pread(fd, min(1 << 20, limit - size), start + size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ShareFileError(f"{path} cannot be read: {exc.strerror or exc}", path) from None
    finally:
        os.close(fd)


def read_share_json(folder: Path, name: str, shape: Shape | None = None, *, limit: int = JSON_LIMIT) -> dict[str, Any]:
    """The JSON object in the agent's file ``name`` in the share ``folder``, checked against ``shape``.

    :param folder: the run's share (``guest/``)
    :param name: the file's name in it
    :param shape: what the object must look like (None: any object)
    :param limit: the most bytes the file may have
    :raises ShareFileError: as :func:`read_share_bytes`
    :raises ShareFileMalformed: not UTF-8 JSON, not an object, nested too deeply, or not of ``shape`` (its
        ``field`` names where)"""
    path = Path(folder) / name
    raw = read_share_bytes(folder, name, limit=limit)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ShareFileMalformed(f"{path} is not UTF-8 text (byte {exc.start}): not the agent's JSON", path) from None
    except RecursionError:
        raise ShareFileMalformed(f"{path} nests its JSON too deeply to be the agent's", path) from None
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise ShareFileMalformed(f"{path} is not JSON: {exc}", path) from None
    if not isinstance(data, dict):
        raise ShareFileMalformed(f"{path} holds a JSON {_json_type(data)}, not an object", path)
    found = shape.problem(data, "") if shape is not None else None
    if found is not None:
        where, what = found
        raise ShareFileMalformed(f"{path}: the field {where} {what}", path, where)
    return data


def read_state_file(folder: Path, phase: str, *, limit: int = JSON_LIMIT) -> dict[str, Any]:
    """The agent's state file for ``phase`` (``prepare`` or ``restore``) in the share ``folder``, checked against
    :data:`STATE_SHAPE`.

    :raises ShareFileError: as :func:`read_share_json`"""
    return read_share_json(folder, state_file(phase), STATE_SHAPE, limit=limit)
