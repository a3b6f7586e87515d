"""Record archives: experiment runs exported to one self-contained file, and imported into another record store.

An archive is a zip file::

    manifest.json                  format name and version, when and on what it was written (an environment
                                   snapshot), the run ids, every member's size and SHA-256
    runs/<id>/run.json             the run's row exactly as the store holds it, its tables, whether its artifacts
                                   are included
    runs/<id>/tables/<n>.parquet   each measurement table, the store's Parquet bytes unchanged
    runs/<id>/artifacts/...        the files and folders of the run's artifacts folder

Zip rather than tar.gz, because an import must judge the whole archive before it writes anything: a zip's central
directory names every member with its type and sizes before one byte is decompressed, each member is then read
on its own through a read bounded by its listed size (a tar.gz is one compressed stream that must be inflated to
find its next member), a truncated file has lost its central directory and is caught at once, and a member's type
is plain mode bits that are simply refused unless they say "regular file" or "folder" (tar would carry links and
devices as member types of their own). Tables are stored uncompressed (Parquet already is), everything else
deflated.

An import is all or nothing. It first checks everything (see :mod:`workbench.record_archive_reader`): that the
file is a zip holding our manifest, the format version, that the members are exactly those the manifest lists
with their sizes and checksums, that their names are safe relative paths of regular files or folders, each run
row and each table. A run already in the store with the same content is skipped; one with different content
refuses the whole import. Then the artifacts are unpacked into a temporary folder inside the data folder, and in
one SQLite transaction every row and table is inserted while the artifact folders are renamed into
``runs/<id>/``; any failure undoes both. Imported runs keep their ids, times, parameters, environment and
results; they have no writer process, so no reader ever takes them for runs still being written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workbench import __version__
from workbench.environment import snapshot
from workbench.record_archive_reader import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    ArchiveConflict,
    ArchivedRun,
    ArchiveError,
    DamagedArchive,
    ForeignArchive,
    NewerArchive,
    UnsafeArchive,
    check_archive,
    copy_member,
    member_name_problem,
    open_archive,
)
from workbench.records import RecordStore, RecordStoreError, RunNotFound, StoredRun

__all__ = [
    "export_records",
    "import_records",
    "ExportSummary",
    "ImportSummary",
    "ArchiveError",
    "ForeignArchive",
    "DamagedArchive",
    "UnsafeArchive",
    "NewerArchive",
    "ArchiveConflict",
    "FORMAT_NAME",
    "FORMAT_VERSION",
]

DISK_MARGIN_BYTES = 64 << 20
_CHUNK = 1 << 20
_FILE_MODE = (stat.S_IFREG | 0o644) << 16
_DIR_MODE = (stat.S_IFDIR | 0o755) << 16 | 0x10


@dataclass
class ExportSummary:
    """What :func:`export_records` wrote: the archive, its runs, tables and artifact files, and the entries of
    artifact folders that were left out because they are not regular files or folders (links, sockets, pipes)."""

    path: Path
    run_ids: list[str]
    tables: int
    artifact_files: int
    artifact_bytes: int
    bytes: int
    skipped_artifacts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass
class ImportSummary:
    """What :func:`import_records` did: the runs added, the runs the store already had with the same content,
    and where and when the archive was written."""

    path: Path
    imported: list[str]
    already_present: list[str]
    tables: int
    artifact_files: int
    created: str | None
    exported_on: str | None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


# -- artifact folders ------------------------------------------------------------------------------------------
def _artifact_tree(folder: Path) -> tuple[list[str], list[tuple[str, Path]], list[str]]:
    """The sub-folders (ending in ``/``) and regular files under ``folder`` as relative POSIX paths, and what was
    passed over (symbolic links are never followed)."""
    dirs: list[str] = []
    files: list[tuple[str, Path]] = []
    skipped: list[str] = []

    def walk(path: Path, prefix: str) -> None:
        with os.scandir(path) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                skipped.append(f"{rel} (a symbolic link)")
            elif entry.is_dir(follow_symlinks=False):
                dirs.append(rel + "/")
                walk(Path(entry.path), rel + "/")
            elif entry.is_file(follow_symlinks=False):
                files.append((rel, Path(entry.path)))
            else:
                skipped.append(f"{rel} (not a regular file)")

    walk(folder, "")
    return dirs, files, skipped


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


# -- export ----------------------------------------------------------------------------------------------------
class _ArchiveWriter:
    """Adds members to an open zip, noting each one's size and SHA-256 for the manifest."""

    def __init__(self, zf: zipfile.ZipFile, date_time: tuple[int, int, int, int, int, int]):
        self.zf = zf
        self.date_time = date_time
        self.members: dict[str, dict[str, Any]] = {}
        self.dirs: list[str] = []

    def _info(self, name: str, compress: int, mode: int) -> zipfile.ZipInfo:
        problem = member_name_problem(name)
        if problem is None:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                problem = "it is not valid UTF-8"
        if problem:
            raise ArchiveError(f"{name!r} cannot be archived: {problem}. Rename it, or export with --no-artifacts.")
        info = zipfile.ZipInfo(name, self.date_time)
        info.compress_type = compress
        info.create_system = 3
        info.external_attr = mode
        return info

    def add_bytes(self, name: str, data: bytes, *, compress: int = zipfile.ZIP_DEFLATED) -> None:
        self.zf.writestr(self._info(name, compress, _FILE_MODE), data)
        self.members[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def add_file(self, name: str, path: Path) -> int:
        digest = hashlib.sha256()
        size = 0
        info = self._info(name, zipfile.ZIP_DEFLATED, _FILE_MODE)
        with open(path, "rb") as src, self.zf.open(info, "w", force_zip64=path.stat().st_size > 1 << 30) as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
        self.members[name] = {"size": size, "sha256": digest.hexdigest()}
        return size

    def add_manifest(self, data: bytes) -> None:
        """The manifest, the one member not listed in itself."""
        self.zf.writestr(self._info(MANIFEST, zipfile.ZIP_DEFLATED, _FILE_MODE), data)

    def add_dir(self, name: str) -> None:
        self.zf.writestr(self._info(name, zipfile.ZIP_STORED, _DIR_MODE), b"")
        self.dirs.append(name)


def _runs_to_export(store: RecordStore, run_ids: Sequence[str]) -> list[StoredRun]:
    if not run_ids:
        raise ArchiveError("no run ids given: name the runs to export (see `workbench records list`)")
    runs: dict[str, StoredRun] = {}
    for given in run_ids:
        try:
            record = store.get(given)
            if record.status == "running":
                raise ArchiveError(
                    f"run {record.id} is still running: export it once it has finished (or has been marked "
                    f"interrupted); no archive was written"
                )
            if record.id not in runs:
                runs[record.id] = store.stored_run(record.id)
        except RunNotFound as exc:
            raise ArchiveError(f"{exc}; no archive was written") from exc
    return list(runs.values())


def export_records(
    store: RecordStore, run_ids: Sequence[str], path: str | os.PathLike[str], *, artifacts: bool = True
) -> ExportSummary:
    """Writes the runs ``run_ids`` of ``store`` (ids, or unique parts of ids) with their tables and, unless
    ``artifacts`` is false, their artifact folders, to the archive ``path``. The file is written through a
    temporary file beside it and renamed: it appears whole or not at all, replacing an older file of that name.
    A run that is still running cannot be exported. Raises :class:`ArchiveError`."""
    path = Path(path)
    runs = _runs_to_export(store, run_ids)
    if not path.parent.is_dir():
        raise ArchiveError(f"folder {path.parent} does not exist: create it or write the archive elsewhere")
    if path.is_dir():
        raise ArchiveError(f"{path} is a folder: name the archive file to write")
    now = datetime.now(UTC)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", allowZip64=True) as zf:
                writer = _ArchiveWriter(zf, now.timetuple()[:6])
                summary = _write_runs(writer, store, runs, artifacts)
                manifest = {
                    "format": FORMAT_NAME,
                    "version": FORMAT_VERSION,
                    "created": now.isoformat(),
                    "workbench_version": __version__,
                    "environment": snapshot(),
                    "run_ids": [run.id for run in runs],
                    "members": writer.members,
                    "dirs": writer.dirs,
                }
                writer.add_manifest(json.dumps(manifest, indent=1, sort_keys=True, default=str).encode())
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ArchiveError(f"cannot write the archive {path}: {exc}; no archive was written") from exc
        raise
    summary.path = path
    summary.bytes = path.stat().st_size
    return summary


def _write_runs(writer: _ArchiveWriter, store: RecordStore, runs: list[StoredRun], artifacts: bool) -> ExportSummary:
    summary = ExportSummary(Path(), [r.id for r in runs], 0, 0, 0, 0)
    for run in runs:
        base = f"runs/{run.id}/"
        tables = []
        for index, table in enumerate(run.tables):
            member = f"{base}tables/{index}.parquet"
            writer.add_bytes(member, table.parquet, compress=zipfile.ZIP_STORED)
            tables.append({"name": table.name, "nrows": table.nrows, "member": member})
        summary.tables += len(tables)
        folder = store.artifacts_root / run.id
        mode = "none"
        if folder.is_dir():
            mode = "included" if artifacts else "omitted"
        if mode == "included":
            dirs, files, skipped = _artifact_tree(folder)
            writer.add_dir(f"{base}artifacts/")
            for rel in dirs:
                writer.add_dir(f"{base}artifacts/{rel}")
            for rel, file in files:
                summary.artifact_bytes += writer.add_file(f"{base}artifacts/{rel}", file)
            summary.artifact_files += len(files)
            summary.skipped_artifacts += [f"{run.id}/{s}" for s in skipped]
        document = {"row": run.row(), "tables": tables, "artifacts": mode}
        writer.add_bytes(f"{base}run.json", json.dumps(document, indent=1, sort_keys=True).encode())
    return summary


# -- importing -------------------------------------------------------------------------------------------------
def _local_artifacts(folder: Path) -> tuple[list[str], dict[str, tuple[int, str]]] | None:
    if not folder.is_dir():
        return None
    dirs, files, _ = _artifact_tree(folder)
    return sorted(d.removesuffix("/") for d in dirs), {rel: _file_digest(file) for rel, file in files}


def _differences(store: RecordStore, existing: StoredRun, archived: ArchivedRun) -> list[str]:
    """What differs between a run of the store and the archive's run with the same id."""
    incoming = archived.run
    differ = [f for f in StoredRun.ROW_FIELDS if _canonical(getattr(existing, f)) != _canonical(getattr(incoming, f))]
    if [(t.name, t.nrows, t.parquet) for t in existing.tables] != [
        (t.name, t.nrows, t.parquet) for t in sorted(incoming.tables, key=lambda t: t.name)
    ]:
        differ.append("tables")
    local = _local_artifacts(store.artifacts_root / existing.id)
    if archived.artifacts == "included":
        wanted_dirs = sorted(d.removesuffix("/") for d in archived.dirs)
        wanted = (wanted_dirs, {rel: (size, sha) for rel, (_, size, sha) in archived.files.items()})
        if local != wanted:
            differ.append("artifacts")
    elif archived.artifacts == "none" and local is not None:
        differ.append("artifacts")
    return differ


def _unpack(zf: zipfile.ZipFile, path: Path, staging: Path, archived: ArchivedRun) -> None:
    """Writes the run's artifacts under ``staging/<id>``, checking every file's checksum again as it goes."""
    root = staging / archived.run.id
    root.mkdir()
    for rel in archived.dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel, (member, size, sha256) in sorted(archived.files.items()):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            copy_member(zf, path, member, size, sha256, out.write)


def import_records(store: RecordStore, path: str | os.PathLike[str]) -> ImportSummary:
    """Adds the runs of the archive ``path`` to ``store``, keeping their ids, rows, tables and artifacts. All or
    nothing: the whole archive is checked before anything is written, a run the store already has with the same
    content is skipped (reported as already present), one with different content refuses the import, and a
    failure while writing leaves the store as it was. Raises :class:`ArchiveError` (or a subclass)."""
    path = Path(path)
    with open_archive(path) as zf:
        manifest, runs = check_archive(zf, path)
        new: list[ArchivedRun] = []
        present: list[str] = []
        for archived in runs:
            run_id = archived.run.id
            try:
                existing = store.stored_run(run_id)
            except RunNotFound:
                if os.path.lexists(store.artifacts_root / run_id):
                    raise ArchiveConflict(
                        f"{store.artifacts_root / run_id} exists but the store has no run {run_id}: move that "
                        f"folder away, then import again; nothing was imported"
                    ) from None
                new.append(archived)
                continue
            differ = _differences(store, existing, archived)
            if differ:
                raise ArchiveConflict(
                    f"the store already has a run {run_id} with different content ({', '.join(differ)}); nothing "
                    f"was imported. Import into another folder (--data) to compare them."
                )
            present.append(run_id)
        if new:
            _write_runs_to_store(zf, path, store, new)
    environment = manifest.get("environment")
    return ImportSummary(
        path=path,
        imported=[a.run.id for a in new],
        already_present=present,
        tables=sum(len(a.run.tables) for a in new),
        artifact_files=sum(len(a.files) for a in new),
        created=manifest["created"] if isinstance(manifest.get("created"), str) else None,
        exported_on=str(environment.get("hostname")) if isinstance(environment, dict) else None,
    )


def _write_runs_to_store(zf: zipfile.ZipFile, path: Path, store: RecordStore, new: list[ArchivedRun]) -> None:
    with_artifacts = [a for a in new if a.artifacts == "included"]
    needed = sum(size for a in with_artifacts for _, size, _ in a.files.values())
    free = shutil.disk_usage(store.data_dir).free
    if needed + DISK_MARGIN_BYTES > free:
        raise ArchiveError(
            f"the artifacts of {path} need {needed} bytes but {store.data_dir} has {free} free; free some space, "
            f"import with another --data folder, or export without artifacts; nothing was imported"
        )
    root = store.artifacts_root
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=store.data_dir))
    created_root = not root.exists()
    placed: list[str] = []

    def place() -> None:
        if with_artifacts:
            root.mkdir(exist_ok=True)
        for archived in with_artifacts:
            target = root / archived.run.id
            if os.path.lexists(target):
                raise ArchiveConflict(f"{target} appeared while importing; nothing was imported")
            os.rename(staging / archived.run.id, target)
            placed.append(archived.run.id)

    try:
        for archived in with_artifacts:
            _unpack(zf, path, staging, archived)
        store.insert_runs([a.run for a in new], before_commit=place)
    except BaseException as exc:
        for run_id in placed:
            try:
                os.rename(root / run_id, staging / run_id)
            except OSError:
                shutil.rmtree(root / run_id, ignore_errors=True)
        if created_root and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        if isinstance(exc, Exception) and not isinstance(exc, RecordStoreError):
            raise ArchiveError(f"importing {path} failed ({type(exc).__name__}: {exc}); nothing was imported") from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
