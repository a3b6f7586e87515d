"""Record archives: a round trip into a fresh store, prefixes, re-imports and conflicts, and every kind of damaged,
unsafe or foreign archive refused with the store left exactly as it was (also for random damage, by hypothesis)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.record_archive import (
    FORMAT_NAME,
    ArchiveConflict,
    ArchiveError,
    DamagedArchive,
    ForeignArchive,
    NewerArchive,
    UnsafeArchive,
    export_records,
    import_records,
)
from workbench.records import RecordStore, RecordStoreError


# -- a small store -------------------------------------------------------------------------------------------
def make_store(root: Path) -> tuple[RecordStore, list[str]]:
    """Three runs: one ok with two tables and artifacts (a nested and an empty folder), one failed with a table,
    one ok with neither tables nor artifacts."""
    store = RecordStore(root)
    results = pd.DataFrame(
        {
            "size": np.array([1 << 20, 64 << 20], dtype="int64"),
            "threads": np.array([1, 2], dtype="int32"),
            "seconds": [0.5, 1.25],
            "name": ["a", "b"],
            "verified": [True, False],
            "when": pd.to_datetime(["2026-01-01 10:00", "2026-01-02 11:30"]),
            "kind": pd.Categorical(["x", "y"]),
        }
    )
    with store.run("bench.conversion", {"size": "64M", "threads": 2, "ratio": 0.5, "list": [1, 2]}) as run:
        run.add_table("results", results)
        run.add_table("phases", pd.DataFrame({"phase": ["preserve", "restore"], "s": [0.01, 0.02]}))
        run.update_result(bytes_per_s=123.5, verified=True, nested={"a": [1, 2], "b": None})
        run.update_environment(target_kernel_release="7.2.13-lab", accelerator="kvm")
        (run.artifacts_dir / "serial.log").write_bytes(bytes(range(256)) * 40)
        (run.artifacts_dir / "guest").mkdir()
        (run.artifacts_dir / "guest" / "result.json").write_text('{"ok": true}\n')
        (run.artifacts_dir / "guest" / "empty").mkdir()
    first = run.id
    with pytest.raises(RuntimeError), store.run("lab.cycle", {"memfds": 2}) as run:
        run.add_table("marks", pd.DataFrame({"event": ["boot"], "t": [0.5]}))
        raise RuntimeError("the target did not come back")
    second = run.id
    with store.run("inspect.summary", {}) as run:
        pass
    return store, [first, second, run.id]


@pytest.fixture
def source(tmp_path):
    return make_store(tmp_path / "source")


@pytest.fixture
def archive(source, tmp_path):
    store, ids = source
    path = tmp_path / "runs.zip"
    export_records(store, ids, path)
    return path


def store_state(data_dir: Path) -> tuple:
    """Everything a reader of the store sees: every run, every table blob, every file and folder of the data folder
    (but the database's own files)."""
    store = RecordStore(data_dir)
    runs = [r.as_dict() for r in store.runs()]
    stored = [store.stored_run(r["id"]) for r in runs]
    files = []
    if data_dir.exists():
        for path in sorted(data_dir.rglob("*")):
            if not path.name.startswith("records.sqlite"):
                files.append((str(path.relative_to(data_dir)), path.read_bytes() if path.is_file() else None))
    store.close()
    return runs, stored, files


def artifact_tree(folder: Path | None) -> dict[str, bytes | None] | None:
    if folder is None:
        return None
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def assert_same_run(a: RecordStore, b: RecordStore, run_id: str, *, artifacts: bool = True) -> None:
    """The run ``run_id`` reads back the same from both stores: row, tables with their dtypes, artifact bytes."""
    ra, rb = a.get(run_id), b.get(run_id)
    da, db = ra.as_dict(), rb.as_dict()
    da.pop("artifacts_dir")
    db.pop("artifacts_dir")
    assert da == db
    assert a.stored_run(run_id) == b.stored_run(run_id)
    for name in ra.table_names:
        pd.testing.assert_frame_equal(a.table(run_id, name), b.table(run_id, name), check_exact=True)
    if artifacts:
        assert artifact_tree(ra.artifacts_dir) == artifact_tree(rb.artifacts_dir)
    else:
        assert rb.artifacts_dir is None


# -- rewriting archives ----------------------------------------------------------------------------------------
def rewrite(src: Path, dst: Path, *, drop=(), replace=None, add=(), manifest=None) -> None:
    """Copies the zip ``src`` to ``dst`` member by member (a valid zip again), leaving out ``drop``, replacing the
    contents of members named in ``replace``, adding the ``(ZipInfo or name, bytes)`` pairs of ``add``, and passing
    the manifest through ``manifest`` (a function of the decoded manifest)."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = zin.read(info)
            if info.filename == "manifest.json" and manifest is not None:
                data = json.dumps(manifest(json.loads(data))).encode()
            zout.writestr(info, replace.get(info.filename, data))
        for info, data in add:
            zout.writestr(info, data)


def listed(manifest: dict, name: str, data: bytes) -> dict:
    manifest["members"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return manifest


def member_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


# -- round trips -----------------------------------------------------------------------------------------------
def test_round_trip_into_a_fresh_store_keeps_everything(source, archive, tmp_path):
    store, ids = source
    fresh = RecordStore(tmp_path / "fresh")
    summary = import_records(fresh, archive)
    assert summary.imported == ids and summary.already_present == []
    assert summary.tables == 3 and summary.artifact_files == 2
    assert [r.id for r in fresh.runs()] == ids
    for run_id in ids:
        assert_same_run(store, fresh, run_id)
    imported = fresh.get(ids[0])
    assert imported.environment["target_kernel_release"] == "7.2.13-lab"
    assert imported.params == {"size": "64M", "threads": 2, "ratio": 0.5, "list": [1, 2]}
    assert fresh.table(ids[0], "results").dtypes.to_dict() == store.table(ids[0], "results").dtypes.to_dict()
    assert (imported.artifacts_dir / "guest" / "empty").is_dir()
    assert fresh.get(ids[1]).status == "failed" and "did not come back" in fresh.get(ids[1]).error
    assert fresh.get(ids[2]).artifacts_dir is None
    assert [p.name for p in fresh.data_dir.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_imported_runs_are_never_taken_for_running_ones(archive, tmp_path):
    fresh = RecordStore(tmp_path / "fresh")
    import_records(fresh, archive)
    db = sqlite3.connect(fresh.path)
    writers = db.execute("SELECT writer_host, writer_boot, writer_pid, writer_start FROM runs").fetchall()
    db.close()
    assert writers == [(None, None, None, None)] * 3
    assert {r.status for r in RecordStore(fresh.data_dir).runs()} == {"ok", "failed"}


def test_manifest_lists_environment_runs_and_every_member(source, archive):
    _, ids = source
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["format"] == FORMAT_NAME and manifest["version"] == 1 and manifest["run_ids"] == ids
        assert {"packages", "python", "host_kernel_release", "cpu_model"} <= set(manifest["environment"])
        for name, entry in manifest["members"].items():
            data = zf.read(name)
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert set(zf.namelist()) == {"manifest.json", *manifest["members"], *manifest["dirs"]}
        row = json.loads(zf.read(f"runs/{ids[1]}/run.json"))["row"]
        assert row["status"] == "failed" and row["params"] == {"memfds": 2}


def test_export_by_unique_parts_of_ids_once_each(source, tmp_path):
    store, ids = source
    path = tmp_path / "two.zip"
    summary = export_records(store, [ids[0][:-1], ids[2][-6:], ids[0]], path)
    assert summary.run_ids == [ids[0], ids[2]]
    fresh = RecordStore(tmp_path / "fresh")
    assert import_records(fresh, path).imported == [ids[0], ids[2]]
    assert_same_run(store, fresh, ids[0])


def test_export_without_artifacts(source, tmp_path):
    store, ids = source
    path = tmp_path / "lean.zip"
    summary = export_records(store, [ids[0]], path, artifacts=False)
    assert summary.artifact_files == 0 and not any("/artifacts/" in n for n in member_names(path))
    fresh = RecordStore(tmp_path / "fresh")
    import_records(fresh, path)
    assert_same_run(store, fresh, ids[0], artifacts=False)
    assert not fresh.artifacts_root.exists()
    assert import_records(store, path).already_present == [ids[0]]  # the original's artifacts are not compared


def test_importing_twice_skips_what_is_present(source, archive, tmp_path):
    _, ids = source
    fresh = RecordStore(tmp_path / "fresh")
    import_records(fresh, archive)
    before = store_state(fresh.data_dir)
    again = import_records(fresh, archive)
    assert again.imported == [] and again.already_present == ids
    assert store_state(fresh.data_dir) == before


def test_import_into_the_exporting_store_finds_everything_present(source, archive):
    store, ids = source
    assert import_records(store, archive).already_present == ids


def test_symbolic_links_in_artifacts_are_not_followed_but_reported(source, tmp_path):
    store, ids = source
    (store.artifacts_root / ids[0] / "vmcore").symlink_to("/etc/hostname")
    summary = export_records(store, [ids[0]], tmp_path / "a.zip")
    assert summary.skipped_artifacts == [f"{ids[0]}/vmcore (a symbolic link)"]
    assert f"runs/{ids[0]}/artifacts/vmcore" not in member_names(tmp_path / "a.zip")


# -- export refusals -------------------------------------------------------------------------------------------
def test_a_running_run_cannot_be_exported(store, tmp_path):
    path = tmp_path / "out" / "a.zip"
    path.parent.mkdir()
    with store.run("long", {}) as run, pytest.raises(ArchiveError, match="still running"):
        export_records(store, [run.id], path)
    assert list(path.parent.iterdir()) == []


def test_unknown_id_and_unarchivable_name_write_nothing(source, tmp_path):
    store, ids = source
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.zip").write_bytes(b"an older archive")
    with pytest.raises(ArchiveError, match="no run with id 'nope'"):
        export_records(store, [ids[0], "nope"], out / "a.zip")
    (store.artifacts_root / ids[0] / "bad\nname").write_text("x")
    with pytest.raises(ArchiveError, match="cannot be archived: it holds a control character"):
        export_records(store, [ids[0]], out / "a.zip")
    assert [p.name for p in out.iterdir()] == ["a.zip"] and (out / "a.zip").read_bytes() == b"an older archive"
    with pytest.raises(ArchiveError, match="does not exist"):
        export_records(store, [ids[0]], tmp_path / "missing" / "a.zip")


# -- conflicts -------------------------------------------------------------------------------------------------
def test_a_different_run_with_the_same_id_refuses_the_whole_import(source, archive, tmp_path):
    _, ids = source
    other = RecordStore(tmp_path / "other")
    only_second = tmp_path / "second.zip"
    export_records(source[0], [ids[1]], only_second)
    import_records(other, only_second)
    db = sqlite3.connect(other.path)
    db.execute("UPDATE runs SET result = ? WHERE id = ?", ('{"changed": 1}', ids[1]))
    db.commit()
    db.close()
    before = store_state(other.data_dir)
    with pytest.raises(ArchiveConflict, match=rf"already has a run {ids[1]} with different content \(result\)"):
        import_records(other, archive)
    assert store_state(other.data_dir) == before  # the other two runs were not imported either


def test_different_artifacts_are_a_conflict(source, archive, tmp_path):
    _, ids = source
    fresh = RecordStore(tmp_path / "fresh")
    import_records(fresh, archive)
    (fresh.artifacts_root / ids[0] / "serial.log").write_bytes(b"another log")
    before = store_state(fresh.data_dir)
    with pytest.raises(ArchiveConflict, match=r"different content \(artifacts\)"):
        import_records(fresh, archive)
    assert store_state(fresh.data_dir) == before


def test_a_stray_artifact_folder_is_a_conflict(source, archive, tmp_path):
    _, ids = source
    fresh = RecordStore(tmp_path / "fresh")
    (fresh.artifacts_root / ids[0]).mkdir(parents=True)
    before = store_state(fresh.data_dir)
    with pytest.raises(ArchiveConflict, match="exists but the store has no run"):
        import_records(fresh, archive)
    assert store_state(fresh.data_dir) == before


def test_a_failure_while_writing_leaves_the_store_as_it_was(source, archive, tmp_path):
    fresh = RecordStore(tmp_path / "fresh")
    with fresh.run("already.here", {}):
        pass
    fresh.artifacts_root.write_text("runs/ is a file here, so the artifact folders cannot be put in place")
    before = store_state(fresh.data_dir)
    with pytest.raises(ArchiveError, match=r"failed \(FileExistsError.*nothing was imported"):
        import_records(fresh, archive)
    assert store_state(fresh.data_dir) == before


# -- damaged, unsafe and foreign archives ------------------------------------------------------------------------
@pytest.fixture
def target(tmp_path):
    """A store that already has a run and an artifacts folder, to see that a refused import changes nothing."""
    store = RecordStore(tmp_path / "target")
    with store.run("already.here", {"x": 1}) as run:
        run.add_table("t", pd.DataFrame({"x": [1]}))
        (run.artifacts_dir / "log").write_text("kept")
    return store


def refused(store: RecordStore, path: Path, error: type[ArchiveError], match: str) -> None:
    before = store_state(store.data_dir)
    with pytest.raises(error, match=match):
        import_records(store, path)
    assert store_state(store.data_dir) == before


def test_truncated_archive(archive, target, tmp_path):
    data = archive.read_bytes()
    for keep in (len(data) // 2, len(data) - 10, 30):
        (tmp_path / "cut.zip").write_bytes(data[:keep])
        refused(target, tmp_path / "cut.zip", DamagedArchive, "damaged zip file.*truncated")


def test_flipped_byte_inside_a_stored_table(source, archive, target, tmp_path):
    _, ids = source
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(f"runs/{ids[0]}/tables/0.parquet")
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
    data = bytearray(archive.read_bytes())
    data[offset] ^= 0x40
    (tmp_path / "flip.zip").write_bytes(bytes(data))
    refused(target, tmp_path / "flip.zip", DamagedArchive, "is damaged.*tables/0.parquet")


def test_member_changed_behind_the_manifest(source, archive, target, tmp_path):
    _, ids = source
    name = f"runs/{ids[0]}/artifacts/serial.log"
    with zipfile.ZipFile(archive) as zf:
        data = bytearray(zf.read(name))
    data[5] ^= 1
    rewrite(archive, tmp_path / "changed.zip", replace={name: bytes(data)})
    refused(target, tmp_path / "changed.zip", DamagedArchive, f"{name} does not match its checksum")


def test_missing_member(source, archive, target, tmp_path):
    _, ids = source
    name = f"runs/{ids[1]}/tables/0.parquet"
    rewrite(archive, tmp_path / "missing.zip", drop={name})
    refused(target, tmp_path / "missing.zip", DamagedArchive, f"member {name} listed in the manifest is missing")


def test_extra_member(source, archive, target, tmp_path):
    _, ids = source
    name = f"runs/{ids[0]}/artifacts/extra.txt"
    rewrite(archive, tmp_path / "extra.zip", add=[(name, b"slipped in")])
    refused(target, tmp_path / "extra.zip", DamagedArchive, f"member {name} is not listed in the manifest")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("runs/{id}/artifacts/../../../../evil.txt", "climbs out of its folder"),
        ("../evil.txt", "climbs out of its folder"),
        ("/tmp/evil.txt", "is an absolute path"),
        ("runs/{id}/artifacts/a\\..\\..\\evil", "holds a backslash"),
    ],
)
def test_unsafe_member_names(source, archive, target, tmp_path, name, problem):
    _, ids = source
    name = name.format(id=ids[0])
    payload = b"outside"
    rewrite(archive, tmp_path / "evil.zip", add=[(name, payload)], manifest=lambda m: listed(m, name, payload))
    refused(target, tmp_path / "evil.zip", UnsafeArchive, f"member '.*evil.*' is unsafe \\(it {problem}")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize(
    ("kind", "problem"),
    [(stat.S_IFLNK | 0o777, "a symbolic link"), (stat.S_IFCHR | 0o644, "a device"), (stat.S_IFIFO | 0o644, "pipe")],
)
def test_links_and_devices_are_refused(source, archive, target, tmp_path, kind, problem):
    _, ids = source
    name = f"runs/{ids[0]}/artifacts/vmcore"
    payload = b"/etc/shadow"
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = kind << 16
    rewrite(archive, tmp_path / "link.zip", add=[(info, payload)], manifest=lambda m: listed(m, name, payload))
    refused(target, tmp_path / "link.zip", UnsafeArchive, problem)


def test_member_in_no_place_of_the_layout(source, archive, target, tmp_path):
    name = "notes/readme.txt"
    rewrite(archive, tmp_path / "odd.zip", add=[(name, b"hi")], manifest=lambda m: listed(m, name, b"hi"))
    refused(target, tmp_path / "odd.zip", UnsafeArchive, "has no place in a record archive")


def test_newer_format_version(archive, target, tmp_path):
    rewrite(archive, tmp_path / "newer.zip", manifest=lambda m: {**m, "version": 2, "members": "a new layout"})
    refused(target, tmp_path / "newer.zip", NewerArchive, "written by a newer workbench .*upgrade")


def test_malformed_run_row(source, archive, target, tmp_path):
    _, ids = source
    name = f"runs/{ids[0]}/run.json"
    with zipfile.ZipFile(archive) as zf:
        document = json.loads(zf.read(name))
    for change, problem in (
        ({"status": "running"}, "the run is marked running"),
        ({"status": "great"}, "status 'great' is not one of"),
        ({"params": [1]}, "params is not a JSON object"),
        ({"started": "yesterday"}, "started is not a time"),
        ({"id": ids[1]}, "the row.s id"),
    ):
        data = json.dumps({**document, "row": {**document["row"], **change}}).encode()
        rewrite(archive, tmp_path / "row.zip", replace={name: data}, manifest=lambda m, d=data: listed(m, name, d))
        refused(target, tmp_path / "row.zip", DamagedArchive, f"run.json is malformed \\({problem}")


def test_unreadable_table(source, archive, target, tmp_path):
    _, ids = source
    name = f"runs/{ids[1]}/tables/0.parquet"
    junk = b"PAR1 but not really a parquet file PAR1"
    rewrite(archive, tmp_path / "table.zip", replace={name: junk}, manifest=lambda m: listed(m, name, junk))
    refused(target, tmp_path / "table.zip", DamagedArchive, "table 'marks' of run .* cannot be read")


def test_foreign_files(target, tmp_path):
    tar_path = tmp_path / "runs.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    refused(target, tar_path, ForeignArchive, "it is a gzip file, not the zip file")
    plain_tar = tmp_path / "runs.tar"
    with tarfile.open(plain_tar, "w") as tar:
        tar.add(tar_path, arcname="inner")
    refused(target, plain_tar, ForeignArchive, "it is a tar file")
    other_zip = tmp_path / "photos.zip"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("holiday.jpg", b"\xff\xd8\xff")
    refused(target, other_zip, ForeignArchive, "zip file but not a workbench record archive .*no manifest.json")
    extension = tmp_path / "extension.zip"
    with zipfile.ZipFile(extension, "w") as zf:
        zf.writestr("manifest.json", json.dumps({"manifest_version": 3, "name": "an extension"}))
    refused(target, extension, ForeignArchive, "not a live-update-workbench-archive manifest")
    text = tmp_path / "notes.txt"
    text.write_text("not an archive\n" * 50)
    refused(target, text, ForeignArchive, "it is not an archive at all")
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    refused(target, empty, ForeignArchive, "not an archive at all")
    refused(target, tmp_path / "absent.zip", ArchiveError, "cannot read")


def test_errors_belong_to_the_store_error_tree():
    for error in (ArchiveError, ForeignArchive, DamagedArchive, UnsafeArchive, NewerArchive, ArchiveConflict):
        assert issubclass(error, RecordStoreError)


# -- random damage ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_archive(tmp_path_factory):
    """An archive of one run with a table and an artifact, and the run as its store holds it."""
    root = tmp_path_factory.mktemp("small")
    store = RecordStore(root / "data")
    with store.run("bench.small", {"n": 3}) as run:
        run.add_table("t", pd.DataFrame({"v": [1.5, 2.5], "s": ["a", "b"]}))
        run.update_result(ok=True)
        (run.artifacts_dir / "log.txt").write_text("a short serial log\n" * 20)
    export_records(store, [run.id], root / "small.zip")
    return (root / "small.zip").read_bytes(), store.stored_run(run.id), (run.artifacts_dir / "log.txt").read_bytes()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=0, max_size=4),
    cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)),
)
def test_random_damage_imports_whole_or_nothing(small_archive, flips, cut):
    original, run, log = small_archive
    data = bytearray(original)
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    if cut is not None:
        data = data[: int(cut * len(data))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.zip"
        path.write_bytes(bytes(data))
        store = RecordStore(Path(tmp) / "data")
        try:
            summary = import_records(store, path)
        except ArchiveError:
            assert store_state(store.data_dir) == ([], [], [])
        else:
            assert summary.imported == [run.id]
            assert store.stored_run(run.id) == run
            assert (store.artifacts_root / run.id / "log.txt").read_bytes() == log
            assert not [n for n in os.listdir(store.data_dir) if n.startswith(".")]  # no staging folder left
        finally:
            store.close()
