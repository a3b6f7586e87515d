"""Reading a record archive written by :func:`workbench.record_archive.export_records`, and every check it passes
before anything of it is imported: the format's names, versions and limits, and its error tree.

The archive is untrusted bytes. Nothing here writes anything; every read of a member is bounded by the size the
manifest gives it (and that the zip directory repeats), every failure of decoding becomes a
:class:`DamagedArchive`, and the manifest is never trusted to allocate memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import stat
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.records import RUN_ID_PATTERN, STATUSES, RecordStoreError, StoredRun, StoredTable

__all__ = [
    "ArchivedRun",
    "open_archive",
    "check_archive",
    "copy_member",
    "member_name_problem",
    "ArchiveError",
    "ForeignArchive",
    "DamagedArchive",
    "UnsafeArchive",
    "NewerArchive",
    "ArchiveConflict",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "ARTIFACT_MODES",
]

FORMAT_NAME = "live-update-workbench-archive"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARTIFACT_MODES = ("included", "omitted", "none")
"""What a run.json says of the run's artifacts folder: in the archive, left out by the export, or none at all."""
MAX_JSON_BYTES = 64 << 20  # the manifest or one run.json
MAX_TABLE_BYTES = 1_000_000_000  # SQLite's largest blob
MAX_IN_MEMORY_BYTES = 4 << 30  # rows and tables are held in memory until their transaction
_CHUNK = 1 << 20


class ArchiveError(RecordStoreError):
    """A record archive cannot be written or imported; nothing was written. The message says why and what to do."""


class ForeignArchive(ArchiveError):
    """The file is not a workbench record archive at all (another zip, a tar, not an archive)."""


class DamagedArchive(ArchiveError):
    """The file is a workbench record archive, but truncated, altered or malformed."""


class UnsafeArchive(ArchiveError):
    """A member would be written outside its folder, or is a link, device or other non-regular file."""


class NewerArchive(ArchiveError):
    """The archive was written by a newer workbench, in a format this one does not know."""


class ArchiveConflict(ArchiveError):
    """The store already has a run of the archive with different content, or a stray folder in its place."""


# -- member names ----------------------------------------------------------------------------------------------
# -- member names ----------------------------------------------------------------------------------------------
def member_name_problem(name: str) -> str | None:
    """Why ``name`` is not a safe relative member path, or None."""
    if not name:
        return "it is empty"
    if any(ord(c) < 32 for c in name):
        return "it holds a control character"
    if "\\" in name:
        return "it holds a backslash"
    if name.startswith("/"):
        return "it is an absolute path"
    if len(name) > 1 and name[1] == ":":
        return "it starts with a drive letter"
    parts = name.removesuffix("/").split("/")
    if ".." in parts:
        return "it climbs out of its folder with '..'"
    if any(p in ("", ".") for p in parts):
        return "it has an empty or '.' component"
    return None


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why the zip entry ``info`` is not something an import writes (a plain file or folder), or None."""
    if info.flag_bits & 0x1:
        return "it is encrypted"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return f"it uses compression method {info.compress_type}, which workbench archives never use"
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        return "it is a symbolic link"
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return "it is a device, pipe or socket, not a regular file"
    if kind == stat.S_IFDIR and not info.is_dir():
        return "it is a folder without the '/' that folder names end with"
    if kind == stat.S_IFREG and info.is_dir():
        return "its name ends with '/' but it is a file"
    return None


# -- reading and checking -------------------------------------------------------------------------------------
@dataclass
class ArchivedRun:
    """One run of a checked archive: its row and tables, and its artifact folders and files (relative paths)."""

    run: StoredRun
    artifacts: str
    dirs: list[str]
    files: dict[str, tuple[str, int, str]]  # relative path -> (member, size, sha256)


@contextmanager
def _damaged(path: Path, what: str) -> Iterator[None]:
    """Turns any failure of decoding the untrusted archive into :class:`DamagedArchive`."""
    try:
        yield
    except ArchiveError:
        raise
    except Exception as exc:
        raise DamagedArchive(
            f"{path} is damaged: {what} cannot be read ({type(exc).__name__}: {exc}); nothing was imported. "
            f"Copy or export the archive again."
        ) from exc


def open_archive(path: Path) -> zipfile.ZipFile:
    """The zip file at ``path``; :class:`ForeignArchive` if it is no zip, :class:`DamagedArchive` if it is a
    damaged one (truncated: its directory at the end is gone)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except IsADirectoryError as exc:
        raise ArchiveError(f"{path} is a folder, not a record archive") from exc
    except OSError as exc:
        raise ArchiveError(f"cannot read {path}: {exc}") from exc
    try:
        return zipfile.ZipFile(path)
    except Exception as exc:
        if head.startswith(b"PK"):
            raise DamagedArchive(
                f"{path} is a damaged zip file ({exc}): it may be truncated; nothing was imported. Copy or export "
                f"the archive again."
            ) from exc
        writes = "not the zip file that `workbench records export` writes"
        if head.startswith(b"\x1f\x8b"):
            what = f"it is a gzip file, {writes}"
        elif head[257:262] == b"ustar":
            what = f"it is a tar file, {writes}"
        else:
            what = "it is not an archive at all"
        raise ForeignArchive(f"{path} is not a workbench record archive ({what}); nothing was imported") from exc


def _read(zf: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo, size: int) -> bytes:
    """The member ``info``, read no further than ``size`` + 1 bytes."""
    with _damaged(path, info.filename), zf.open(info) as f:
        data = f.read(size + 1)
    if len(data) != size:
        raise DamagedArchive(f"{path} is damaged: member {info.filename} is not {size} bytes; nothing was imported")
    return data


def _read_manifest(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        if any(name.startswith("runs/") for name in zf.namelist()):
            raise DamagedArchive(
                f"{path} is damaged: it holds runs but no {MANIFEST}; nothing was imported. Copy or export the "
                f"archive again."
            ) from None
        raise ForeignArchive(
            f"{path} is a zip file but not a workbench record archive (it has no {MANIFEST}); nothing was imported"
        ) from None
    if info.file_size > MAX_JSON_BYTES:
        raise ForeignArchive(f"{path} is not a workbench record archive: its {MANIFEST} is far too large")
    data = _read(zf, path, info, info.file_size)
    try:
        manifest = json.loads(data)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ForeignArchive(
            f"{path} is a zip file but not a workbench record archive (its {MANIFEST} is not a "
            f"{FORMAT_NAME} manifest); nothing was imported"
        )
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DamagedArchive(f"{path} is damaged: its manifest has no valid format version; nothing was imported")
    if version > FORMAT_VERSION:
        raise NewerArchive(
            f"{path} was written by a newer workbench (archive format {version}; this one reads format "
            f"{FORMAT_VERSION}): upgrade the workbench to import it; nothing was imported"
        )
    return manifest


def _malformed(path: Path, where: str, problem: str) -> DamagedArchive:
    return DamagedArchive(f"{path} is damaged: {where} is malformed ({problem}); nothing was imported")


def _check_manifest(path: Path, manifest: dict[str, Any]) -> tuple[list[str], dict[str, tuple[int, str]], set[str]]:
    """The run ids, the files (name -> size, sha256) and the folders that the manifest lists."""
    run_ids = manifest.get("run_ids")
    if not isinstance(run_ids, list) or not run_ids:
        raise _malformed(path, MANIFEST, "no list of run ids")
    for run_id in run_ids:
        if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
            raise _malformed(path, MANIFEST, f"{run_id!r} is not a run id")
    if len(set(run_ids)) != len(run_ids):
        raise _malformed(path, MANIFEST, "a run id is listed twice")
    members, dirs = manifest.get("members"), manifest.get("dirs")
    if not isinstance(members, dict) or not isinstance(dirs, list):
        raise _malformed(path, MANIFEST, "no member list")
    files: dict[str, tuple[int, str]] = {}
    for name, entry in members.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _malformed(path, MANIFEST, f"member {name!r} has no valid size")
        if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
            raise _malformed(path, MANIFEST, f"member {name!r} has no valid sha256")
        if name.endswith("/") or name == MANIFEST:
            raise _malformed(path, MANIFEST, f"{name!r} cannot be a file member")
        files[name] = (size, digest)
    if not all(isinstance(d, str) and d.endswith("/") for d in dirs):
        raise _malformed(path, MANIFEST, "a folder name does not end with '/'")
    for run_id in run_ids:
        if f"runs/{run_id}/run.json" not in files:
            raise _malformed(path, MANIFEST, f"run {run_id} has no runs/{run_id}/run.json")
    return run_ids, files, set(dirs)


def _check_members(
    zf: zipfile.ZipFile, path: Path, run_ids: list[str], files: dict[str, tuple[int, str]], dirs: set[str]
) -> None:
    """Checks that the zip holds exactly the listed members, each a safe name of a plain file or folder of the
    listed size, in the archive's layout."""
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename
        if name in entries:
            raise DamagedArchive(f"{path} is damaged: member {name} appears twice; nothing was imported")
        problem = member_name_problem(name) or _entry_problem(info)
        if problem:
            raise UnsafeArchive(f"{path} is refused: its member {name!r} is unsafe ({problem}); nothing was imported")
        entries[name] = info
    listed = set(files) | dirs | {MANIFEST}
    missing, unlisted = sorted(listed - set(entries)), sorted(set(entries) - listed)
    if missing:
        raise DamagedArchive(
            f"{path} is damaged: member {missing[0]} listed in the manifest is missing; nothing was imported"
        )
    if unlisted:
        raise DamagedArchive(
            f"{path} is damaged: member {unlisted[0]} is not listed in the manifest (it was added after the "
            f"export); nothing was imported"
        )
    prefixes = tuple(f"runs/{run_id}/" for run_id in run_ids)
    for name in sorted(listed - {MANIFEST}):
        parts = name.split("/")
        expected = name.startswith(prefixes) and (
            parts[2:] == ["run.json"]
            or (len(parts) == 4 and parts[2] == "tables" and parts[3].endswith(".parquet") and name in files)
            or (len(parts) >= 4 and parts[2] == "artifacts")
        )
        if not expected:
            raise UnsafeArchive(f"{path} is refused: member {name!r} has no place in a record archive")
        info = entries[name]
        if name in files and info.file_size != files[name][0]:
            raise DamagedArchive(
                f"{path} is damaged: member {name} is {info.file_size} bytes but the manifest says {files[name][0]}; "
                f"nothing was imported"
            )
        if name in dirs and info.file_size != 0:
            raise DamagedArchive(f"{path} is damaged: folder member {name} has contents; nothing was imported")
    for name in files:
        clash = name + "/" if name + "/" in dirs else next((p for p in _parents(name) if p in files), None)
        if clash:
            raise UnsafeArchive(f"{path} is refused: the file member {name} clashes with {clash}")


def _parents(name: str) -> Iterator[str]:
    parts = name.rstrip("/").split("/")
    for n in range(1, len(parts)):
        yield "/".join(parts[:n])


def copy_member(
    zf: zipfile.ZipFile, path: Path, member: str, size: int, sha256: str, write: Callable[[bytes], Any]
) -> None:
    """Passes the member's bytes to ``write`` in chunks, reading no further than ``size`` + 1 bytes, and raises
    :class:`DamagedArchive` unless they are ``size`` bytes with this SHA-256 (``path`` names the archive)."""
    digest = hashlib.sha256()
    seen = 0
    what = f"member {member}"
    with _damaged(path, what):
        source = zf.open(member)
    with source:
        while True:
            with _damaged(path, what):  # only reading: a failure to write (a full disk) is no damage
                chunk = source.read(min(_CHUNK, size + 1 - seen))
            seen += len(chunk)
            if not chunk or seen > size:
                break
            digest.update(chunk)
            write(chunk)
    if seen != size or digest.hexdigest() != sha256:
        raise DamagedArchive(
            f"{path} is damaged: member {member} does not match its checksum in the manifest; nothing was "
            f"imported. Copy or export the archive again."
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _row_problem(row: Any, run_id: str) -> str | None:
    """What is wrong with a run row read from an archive, or None."""
    if not isinstance(row, dict) or set(row) != set(StoredRun.ROW_FIELDS):
        return f"the row must have exactly the fields {', '.join(StoredRun.ROW_FIELDS)}"
    if row["id"] != run_id:
        return f"the row's id {row['id']!r} is not the folder's {run_id}"
    if not isinstance(row["kind"], str) or not row["kind"]:
        return "kind is not a non-empty string"
    for name in ("params", "environment", "result"):
        if not isinstance(row[name], dict):
            return f"{name} is not a JSON object"
    if not _is_number(row["started"]):
        return "started is not a time"
    if row["ended"] is not None and not _is_number(row["ended"]):
        return "ended is neither a time nor null"
    if row["status"] not in STATUSES:
        return f"status {row['status']!r} is not one of {', '.join(STATUSES)}"
    if row["status"] == "running":
        return "the run is marked running, but an archive only holds finished runs"
    if row["error"] is not None and not isinstance(row["error"], str):
        return "error is neither text nor null"
    return None


def _parse_run(
    path: Path, run_id: str, data: bytes, tables: dict[str, bytes], files: dict[str, tuple[int, str]], dirs: set[str]
) -> ArchivedRun:
    where = f"runs/{run_id}/run.json"
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise _malformed(path, where, f"not JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"row", "tables", "artifacts"}:
        raise _malformed(path, where, "it must hold exactly row, tables and artifacts")
    problem = _row_problem(document["row"], run_id)
    if problem:
        raise _malformed(path, where, problem)
    artifacts = document["artifacts"]
    if artifacts not in ARTIFACT_MODES:
        raise _malformed(path, where, f"artifacts is not one of {', '.join(ARTIFACT_MODES)}")
    prefix = f"runs/{run_id}/"
    if not isinstance(document["tables"], list):
        raise _malformed(path, where, "tables is not a list")
    stored_tables: list[StoredTable] = []
    referenced: set[str] = set()
    for spec in document["tables"]:
        if not (
            isinstance(spec, dict)
            and set(spec) == {"name", "nrows", "member"}
            and isinstance(spec["name"], str)
            and spec["name"]
            and isinstance(spec["nrows"], int)
            and not isinstance(spec["nrows"], bool)
            and spec["nrows"] >= 0
            and isinstance(spec["member"], str)
            and spec["member"].startswith(prefix + "tables/")
            and spec["member"] in tables
        ):
            raise _malformed(path, where, f"table entry {spec!r} is not a name, a row count and a table member")
        if spec["member"] in referenced or spec["name"] in {t.name for t in stored_tables}:
            raise _malformed(path, where, f"table {spec['name']!r} is listed twice")
        referenced.add(spec["member"])
        blob = tables[spec["member"]]
        with _damaged(path, f"table {spec['name']!r} of run {run_id}"):
            frame = pd.read_parquet(io.BytesIO(blob))
        if len(frame) != spec["nrows"]:
            raise _malformed(path, where, f"table {spec['name']!r} has {len(frame)} rows, not {spec['nrows']}")
        stored_tables.append(StoredTable(spec["name"], spec["nrows"], blob))
    orphans = {m for m in tables if m.startswith(prefix)} - referenced
    if orphans:
        raise _malformed(path, where, f"it does not list the table member {sorted(orphans)[0]}")
    art = prefix + "artifacts/"
    run_files = {n[len(art) :]: (n, *files[n]) for n in files if n.startswith(art)}
    run_dirs = sorted(d[len(art) :] for d in dirs if d.startswith(art) and d != art)
    if artifacts == "included" and art not in dirs:
        raise _malformed(path, where, f"its artifacts are included but the folder member {art} is not")
    if artifacts != "included" and (run_files or art in dirs):
        raise _malformed(path, where, f"the archive holds artifacts that the run says are {artifacts}")
    return ArchivedRun(StoredRun(**document["row"], tables=stored_tables), artifacts, run_dirs, run_files)


def check_archive(zf: zipfile.ZipFile, path: Path) -> tuple[dict[str, Any], list[ArchivedRun]]:
    """Checks the whole archive ``zf`` (read from ``path``) without writing anything: our manifest and its
    version, exactly the listed members with their sizes and checksums, safe names of plain files and folders,
    each run row and each table. Returns the manifest and the runs, tables in memory (artifacts stay in the
    archive: unpack them with :func:`copy_member`). Raises :class:`ArchiveError` (or a subclass)."""
    with _damaged(path, "the zip directory"):
        manifest = _read_manifest(zf, path)
        run_ids, files, dirs = _check_manifest(path, manifest)
        _check_members(zf, path, run_ids, files, dirs)
    in_memory = 0
    kept: dict[str, bytes] = {}
    for name, (size, digest) in sorted(files.items()):
        keep = name.split("/")[2] != "artifacts"
        limit = MAX_TABLE_BYTES if name.endswith(".parquet") else MAX_JSON_BYTES
        if keep and (size > limit or in_memory + size > MAX_IN_MEMORY_BYTES):
            raise DamagedArchive(f"{path} is refused: member {name} is too large ({size} bytes)")
        in_memory += size if keep else 0
        if keep:
            buffer = io.BytesIO()
            copy_member(zf, path, name, size, digest, buffer.write)
            kept[name] = buffer.getvalue()
        else:
            copy_member(zf, path, name, size, digest, lambda chunk: None)
    tables = {n: b for n, b in kept.items() if n.endswith(".parquet")}
    runs = [_parse_run(path, run_id, kept[f"runs/{run_id}/run.json"], tables, files, dirs) for run_id in run_ids]
    return manifest, runs
