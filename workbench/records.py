"""Experiment records: every benchmark, cycle and inspection the workbench runs, kept so it can be found later.

A run has an id, a kind, parameters, start and end times, a status (``running``, ``ok``, ``failed``,
``interrupted``) with the error text when it did not succeed, an environment snapshot, a JSON result summary,
named measurement tables (pandas DataFrames) and a folder for artifacts (serial logs, vmcores).

Storage is one SQLite database in WAL mode (``records.sqlite`` in the data folder); tables are stored as Parquet
blobs inside it, so a DataFrame comes back with its dtypes. Every write is one transaction: a reader sees a table
or a status change whole or not at all, two processes writing at once are serialised by SQLite's locks, and a
writer killed mid-run leaves its run behind as ``running`` with its pid, which readers report (and record) as
``interrupted`` once that process is gone.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from workbench import jsonfile
from workbench.environment import REPO_ROOT, boot_id, snapshot

__all__ = [
    "RecordStore",
    "RunRecord",
    "StoredRun",
    "StoredTable",
    "ActiveRun",
    "RecordStoreError",
    "RunNotFound",
    "AmbiguousRunId",
    "CorruptRecord",
    "default_data_dir",
    "open_store",
    "write_json_atomic",
    "STATUSES",
    "RUN_ID_PATTERN",
]

FORMAT_NAME = "live-update-workbench-records"
FORMAT_VERSION = 1
STATUSES = ("running", "ok", "failed", "interrupted")
DB_NAME = "records.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL,
    error TEXT,
    environment TEXT NOT NULL,
    result TEXT,
    writer_host TEXT,
    writer_boot TEXT,
    writer_pid INTEGER,
    writer_start REAL
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind, started);
CREATE TABLE IF NOT EXISTS tables (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    nrows INTEGER NOT NULL,
    parquet BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


class RecordStoreError(RuntimeError):
    """The record store cannot be used: the message says which file and what to do."""


class RunNotFound(KeyError):
    def __str__(self) -> str:
        return f"no run with id {self.args[0]!r} in this record store (see `workbench records list`)"


class AmbiguousRunId(RunNotFound):
    """A shortened run id that several runs' ids contain; ``candidates`` lists them in id order (by start time, to
    the second)."""

    def __init__(self, run_id: str, candidates: Sequence[str]):
        super().__init__(run_id)
        self.candidates = list(candidates)

    def __str__(self) -> str:
        shown = ", ".join(self.candidates[:20]) + (", ..." if len(self.candidates) > 20 else "")
        return (
            f"{self.args[0]!r} names {len(self.candidates)} runs: {shown}; give more of the id "
            f"(see `workbench records list`)"
        )


class CorruptRecord(RecordStoreError):
    """One stored run or table cannot be decoded; the rest of the store is still readable."""


def default_data_dir() -> Path:
    """``$WORKBENCH_DATA``, else ``data/`` of the checkout the package runs from, else the XDG data folder."""
    env = os.environ.get("WORKBENCH_DATA")
    if env:
        return Path(env).expanduser()
    if (REPO_ROOT / "pyproject.toml").exists() and (REPO_ROOT / "data").is_dir():
        return REPO_ROOT / "data"
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "live-update-workbench"


RUN_ID_PATTERN = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{6}")
"""What :func:`new_run_id` makes (UTC start time and a random suffix), matched with ``fullmatch``."""


def new_run_id(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def _process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame = df.copy()
    frame.columns = [str(c) for c in frame.columns]
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Writes ``obj`` as indented JSON to ``path`` (its folder created if needed), whole or not at all (see
    :func:`workbench.jsonfile.write_json_atomic`). NumPy scalars, paths, sets and tuples are written as JSON values.
    Returns the path written."""
    return jsonfile.write_json_atomic(path, obj, indent=2, default=_json_default, make_parents=True)


@dataclass
class RunRecord:
    """One stored run, as read back from the store."""

    id: str
    kind: str
    params: dict[str, Any]
    started: datetime
    ended: datetime | None
    status: str
    error: str | None
    environment: dict[str, Any]
    result: dict[str, Any]
    table_names: list[str] = field(default_factory=list)
    artifacts_dir: Path | None = None

    @property
    def duration_s(self) -> float | None:
        return (self.ended - self.started).total_seconds() if self.ended else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "params": self.params,
            "started": self.started.isoformat(),
            "ended": self.ended.isoformat() if self.ended else None,
            "duration_s": self.duration_s,
            "status": self.status,
            "error": self.error,
            "environment": self.environment,
            "result": self.result,
            "tables": self.table_names,
            "artifacts_dir": str(self.artifacts_dir) if self.artifacts_dir else None,
        }


@dataclass
class StoredTable:
    """One measurement table exactly as stored: its name, row count and Parquet bytes."""

    name: str
    nrows: int
    parquet: bytes


@dataclass
class StoredRun:
    """One run exactly as the store holds it (times as Unix seconds, JSON columns decoded), with all its tables;
    what :meth:`RecordStore.stored_run` reads and :meth:`RecordStore.insert_runs` writes."""

    id: str
    kind: str
    params: dict[str, Any]
    started: float
    ended: float | None
    status: str
    error: str | None
    environment: dict[str, Any]
    result: dict[str, Any]
    tables: list[StoredTable] = field(default_factory=list)

    ROW_FIELDS = ("id", "kind", "params", "started", "ended", "status", "error", "environment", "result")

    def row(self) -> dict[str, Any]:
        """The run's row (every field but the tables) as plain JSON values."""
        return {name: getattr(self, name) for name in self.ROW_FIELDS}


class ActiveRun:
    """A run being written: add tables and a result, then leave the ``with`` block to finish it."""

    def __init__(self, store: RecordStore, run_id: str, kind: str, params: dict[str, Any]):
        self.store = store
        self.id = run_id
        self.kind = kind
        self.params = params
        self.result: dict[str, Any] = {}

    @property
    def artifacts_dir(self) -> Path:
        path = self.store.artifacts_root / self.id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_table(self, name: str, df: pd.DataFrame) -> None:
        """Stores ``df`` under ``name``, replacing a table of that name; visible to readers at once, whole."""
        blob = _to_parquet(df)
        with self.store._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO tables (run_id, name, nrows, parquet) VALUES (?, ?, ?, ?)",
                (self.id, name, len(df), blob),
            )

    def update_result(self, **values: Any) -> None:
        """Merges ``values`` into the run's JSON result and stores it now, so a later crash keeps it."""
        self.result.update(values)
        with self.store._write() as db:
            db.execute("UPDATE runs SET result = ? WHERE id = ?", (_dumps(self.result), self.id))

    def update_environment(self, **values: Any) -> None:
        """Adds facts learned during the run (the target's kernel release and config hash, the accelerator)."""
        with self.store._write() as db:
            row = db.execute("SELECT environment FROM runs WHERE id = ?", (self.id,)).fetchone()
            env = json.loads(row[0])
            env.update(values)
            db.execute("UPDATE runs SET environment = ? WHERE id = ?", (_dumps(env), self.id))


_LOCK_WAIT_S = 60.0
_OPENING = threading.Lock()


def _is_lock_contention(exc: sqlite3.OperationalError) -> bool:
    """True when SQLite says another connection holds the database (busy or locked), not that it is damaged."""
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(exc)


class RecordStore:
    """The experiment records in one data folder."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None):
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.path = self.data_dir / DB_NAME
        self.artifacts_root = self.data_dir / "runs"
        self._local = threading.local()

    # -- connection -------------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is not None:
            return db
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _LOCK_WAIT_S
        pause = 0.01
        while True:
            try:
                db = sqlite3.connect(self.path, timeout=_LOCK_WAIT_S, isolation_level=None)
            except sqlite3.DatabaseError as exc:
                raise RecordStoreError(
                    f"{self.path} cannot be opened ({exc}); check the folder and its rights."
                ) from exc
            try:
                with _OPENING:  # threads of one process open a new store one at a time
                    self._prepare(db)
            except RecordStoreError:
                db.close()
                raise
            except sqlite3.OperationalError as exc:
                db.close()
                if not _is_lock_contention(exc):
                    raise self._not_a_store(exc) from exc
                if time.monotonic() >= deadline:
                    raise RecordStoreError(
                        f"{self.path} stayed locked by another writer for {_LOCK_WAIT_S:.0f} s ({exc}). Wait for the "
                        f"other workbench process to finish, or point WORKBENCH_DATA at another folder."
                    ) from exc
                time.sleep(pause)  # switching to WAL fails at once, without SQLite's busy wait, while others open it
                pause = min(pause * 2, 0.5)
                continue
            except sqlite3.DatabaseError as exc:
                db.close()
                raise self._not_a_store(exc) from exc
            self._local.db = db
            return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA busy_timeout = {int(_LOCK_WAIT_S * 1000)}")
        self._check_format(db)  # before anything is written: a store this code cannot read stays as it is
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        db.execute("PRAGMA synchronous = NORMAL" if mode == "wal" else "PRAGMA synchronous = FULL")
        self._init_schema(db)

    def _not_a_store(self, exc: BaseException) -> RecordStoreError:
        return RecordStoreError(
            f"{self.path} is not a workbench record store ({exc}). Move it away, or point "
            f"WORKBENCH_DATA at another folder."
        )

    def _check_format(self, db: sqlite3.Connection) -> None:
        """Raises :class:`RecordStoreError` saying what to do when the database holds something other than
        workbench records, or records of a newer format than this code reads. Only reads."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return
        if "meta" not in tables:
            raise RecordStoreError(
                f"{self.path} is an SQLite database but not a workbench record store "
                f"(it has tables {sorted(tables)}). Move it away, or point WORKBENCH_DATA elsewhere."
            )
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            raise RecordStoreError(
                f"{self.path} has a meta table that is not a workbench record store's ({exc}). Move it away, or "
                f"point WORKBENCH_DATA elsewhere."
            ) from exc
        if not meta:
            return  # created by a process that has not written its format yet; _init_schema completes it
        if meta.get("format") != FORMAT_NAME:
            raise RecordStoreError(
                f"{self.path} holds {meta.get('format')!r}, not workbench records ({FORMAT_NAME!r}). Move it away, "
                f"or point WORKBENCH_DATA elsewhere."
            )
        version = str(meta.get("version", ""))
        if not version.isdigit():
            raise RecordStoreError(
                f"{self.path} names no format version this workbench knows ({version!r}). Move it away, or point "
                f"WORKBENCH_DATA elsewhere."
            )
        if int(version) > FORMAT_VERSION:
            raise RecordStoreError(
                f"{self.path} was written by a newer workbench (records format {version}; this one reads up to "
                f"{FORMAT_VERSION}) and was left as it is. Upgrade the workbench to read it, or point WORKBENCH_DATA "
                f"at another folder."
            )

    def _init_schema(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            self._check_format(db)
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            if not db.execute("SELECT 1 FROM meta").fetchone():
                db.execute("INSERT INTO meta VALUES ('format', ?), ('version', ?)", (FORMAT_NAME, FORMAT_VERSION))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- writing ----------------------------------------------------------------------------------------------
    @contextmanager
    def run(self, kind: str, params: Mapping[str, Any] | None = None) -> Iterator[ActiveRun]:
        """Records one experiment. The body's exception marks the run ``failed`` (``interrupted`` for Ctrl-C)
        and is re-raised; a normal exit marks it ``ok``."""
        params = dict(params or {})
        started = time.time()
        run_id = new_run_id(started)
        pid = os.getpid()
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (id, kind, params, started, status, environment, result, writer_host, "
                "writer_boot, writer_pid, writer_start) VALUES (?, ?, ?, ?, 'running', ?, '{}', ?, ?, ?, ?)",
                (
                    run_id,
                    kind,
                    _dumps(params),
                    started,
                    _dumps(snapshot()),
                    socket.gethostname(),
                    boot_id(),
                    pid,
                    _process_start_time(pid),
                ),
            )
        active = ActiveRun(self, run_id, kind, params)
        try:
            yield active
        except (KeyboardInterrupt, GeneratorExit) as exc:
            self._finish(run_id, "interrupted", f"{type(exc).__name__}: interrupted by the user")
            raise
        except BaseException as exc:
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            status = "interrupted" if isinstance(exc, SystemExit) else "failed"
            self._finish(run_id, status, text)
            raise
        else:
            self._finish(run_id, "ok", None)

    def _finish(self, run_id: str, status: str, error: str | None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status = ?, error = ?, ended = ? WHERE id = ?",
                (status, error, time.time(), run_id),
            )

    # -- reading ----------------------------------------------------------------------------------------------
    def _writer_gone(self, host: str | None, boot: str | None, pid: int | None, start: float | None) -> bool:
        if host != socket.gethostname() or pid is None:
            return False  # another machine's run: it cannot be judged from here
        if boot is not None and boot != boot_id():
            return True
        current = _process_start_time(pid)
        if current is None:
            return True
        return start is not None and abs(current - start) > 1.0

    def _settle_running(self) -> None:
        """Marks runs whose writing process no longer exists as ``interrupted``."""
        db = self._connect()
        rows = db.execute(
            "SELECT id, writer_host, writer_boot, writer_pid, writer_start FROM runs WHERE status = 'running'"
        ).fetchall()
        gone = [r[0] for r in rows if self._writer_gone(*r[1:])]
        if not gone:
            return
        with self._write() as wdb:
            for run_id in gone:
                wdb.execute(
                    "UPDATE runs SET status = 'interrupted', error = COALESCE(error, ?) "
                    "WHERE id = ? AND status = 'running'",
                    ("the process writing this run ended before finishing it", run_id),
                )

    def _record(self, row: tuple[Any, ...], table_names: list[str]) -> RunRecord:
        run_id, kind, params, started, ended, status, error, environment, result = row
        try:
            return RunRecord(
                id=run_id,
                kind=kind,
                params=json.loads(params),
                started=datetime.fromtimestamp(started, UTC),
                ended=datetime.fromtimestamp(ended, UTC) if ended else None,
                status=status,
                error=error,
                environment=json.loads(environment),
                result=json.loads(result or "{}"),
                table_names=table_names,
                artifacts_dir=(self.artifacts_root / run_id) if (self.artifacts_root / run_id).is_dir() else None,
            )
        except (ValueError, TypeError) as exc:
            raise CorruptRecord(f"run {run_id} in {self.path} cannot be decoded: {exc}") from exc

    _COLUMNS = "id, kind, params, started, ended, status, error, environment, result"

    def get(self, run_id: str) -> RunRecord:
        self._settle_running()
        db = self._connect()
        row = db.execute(f"SELECT {self._COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            query = "SELECT id FROM runs WHERE instr(lower(id), lower(?)) > 0 ORDER BY id"
            matches = [r[0] for r in db.execute(query, (run_id,))]
            if len(matches) > 1:
                raise AmbiguousRunId(run_id, matches)
            if not matches:
                raise RunNotFound(run_id)
            return self.get(matches[0])
        names = [r[0] for r in db.execute("SELECT name FROM tables WHERE run_id = ? ORDER BY name", (row[0],))]
        return self._record(row, names)

    def runs(self, kind: str | None = None, status: str | None = None, **params: Any) -> list[RunRecord]:
        """Runs, oldest first, filtered by kind (exact, or a prefix ending in ``.``), status and parameters."""
        self._settle_running()
        db = self._connect()
        query = f"SELECT {self._COLUMNS} FROM runs"
        args: list[Any] = []
        where = []
        if kind:
            if kind.endswith("."):
                where.append("kind LIKE ?")
                args.append(kind + "%")
            else:
                where.append("kind = ?")
                args.append(kind)
        if status:
            where.append("status = ?")
            args.append(status)
        if where:
            query += " WHERE " + " AND ".join(where)
        names: dict[str, list[str]] = {}
        for run_id, name in db.execute("SELECT run_id, name FROM tables ORDER BY name"):
            names.setdefault(run_id, []).append(name)
        out = []
        for row in db.execute(query + " ORDER BY started, id", args).fetchall():
            try:
                record = self._record(row, names.get(row[0], []))
            except CorruptRecord:
                continue
            if all(_param_matches(record.params.get(k), v) for k, v in params.items()):
                out.append(record)
        return out

    def list(self, kind: str | None = None, status: str | None = None, **params: Any) -> pd.DataFrame:
        """One row per run, parameters and result values as columns, for filtering and comparison."""
        rows = []
        for r in self.runs(kind, status, **params):
            row: dict[str, Any] = {
                "id": r.id,
                "kind": r.kind,
                "status": r.status,
                "started": r.started,
                "duration_s": r.duration_s,
                "error": r.error,
            }
            row.update({f"param.{k}": _cell(v) for k, v in r.params.items()})
            row.update({f"result.{k}": _cell(v) for k, v in r.result.items() if not isinstance(v, dict | list)})
            rows.append(row)
        columns = ["id", "kind", "status", "started", "duration_s", "error"]
        return pd.DataFrame(rows, columns=None if rows else columns)

    def table(self, run_id: str, name: str) -> pd.DataFrame:
        run_id = self.get(run_id).id
        row = (
            self._connect()
            .execute("SELECT parquet FROM tables WHERE run_id = ? AND name = ?", (run_id, name))
            .fetchone()
        )
        if row is None:
            raise KeyError(f"run {run_id} has no table {name!r}")
        try:
            return pd.read_parquet(io.BytesIO(row[0]))
        except Exception as exc:
            raise CorruptRecord(
                f"table {name!r} of run {run_id} in {self.path} is damaged ({exc}); the other runs are unaffected"
            ) from exc

    def stored_run(self, run_id: str) -> StoredRun:
        """The run with exactly this id and all its tables, as stored, read in one transaction. Raises
        :class:`RunNotFound`, or :class:`CorruptRecord` when a JSON column cannot be decoded."""
        db = self._connect()
        db.execute("BEGIN")
        try:
            row = db.execute(f"SELECT {self._COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
            tables = db.execute(
                "SELECT name, nrows, parquet FROM tables WHERE run_id = ? ORDER BY name", (run_id,)
            ).fetchall()
        finally:
            db.execute("COMMIT")
        if row is None:
            raise RunNotFound(run_id)
        _, kind, params, started, ended, status, error, environment, result = row
        try:
            decoded = [json.loads(params), json.loads(environment), json.loads(result or "{}")]
        except (ValueError, TypeError) as exc:
            raise CorruptRecord(f"run {run_id} in {self.path} cannot be decoded: {exc}") from exc
        return StoredRun(
            id=run_id,
            kind=kind,
            params=decoded[0],
            started=started,
            ended=ended,
            status=status,
            error=error,
            environment=decoded[1],
            result=decoded[2],
            tables=[StoredTable(name, nrows, bytes(blob)) for name, nrows, blob in tables],
        )

    def insert_runs(self, runs: Sequence[StoredRun], before_commit: Callable[[], None] | None = None) -> None:
        """Adds complete, finished runs (rows and tables, ids kept) in ONE transaction: all of them or none.
        ``before_commit`` is called inside the transaction, after the rows are written; if it raises, nothing is
        stored. The runs get no writer, so no reader ever judges them as still being written. Raises
        :class:`RecordStoreError` for a ``running`` run or an id the store already has."""
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            for run in runs:
                if run.status not in STATUSES or run.status == "running":
                    raise RecordStoreError(f"run {run.id} cannot be added with status {run.status!r}")
                if db.execute("SELECT 1 FROM runs WHERE id = ?", (run.id,)).fetchone():
                    raise RecordStoreError(f"{self.path} already has a run {run.id}; nothing was added")
                db.execute(
                    f"INSERT INTO runs ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run.id,
                        run.kind,
                        _dumps(run.params),
                        run.started,
                        run.ended,
                        run.status,
                        run.error,
                        _dumps(run.environment),
                        _dumps(run.result),
                    ),
                )
                db.executemany(
                    "INSERT INTO tables (run_id, name, nrows, parquet) VALUES (?, ?, ?, ?)",
                    [(run.id, t.name, t.nrows, t.parquet) for t in run.tables],
                )
            if before_commit is not None:
                before_commit()
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def compare(self, run_ids: list[str], name: str) -> pd.DataFrame:
        """The table ``name`` of several runs stacked, with a ``run_id`` column first."""
        frames = []
        for run_id in run_ids:
            frame = self.table(run_id, name)
            frame.insert(0, "run_id", self.get(run_id).id)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _cell(value: Any) -> Any:
    return _dumps(value) if isinstance(value, dict | list) else value


def _param_matches(actual: Any, wanted: Any) -> bool:
    if actual == wanted:
        return True
    return actual is not None and str(actual) == str(wanted)


def open_store(data_dir: str | os.PathLike[str] | None = None) -> RecordStore:
    return RecordStore(data_dir)
