"""``workbench records export`` and ``workbench records import``: a round trip between two data folders that
`records show` reads the same, re-imports, and refused archives (exit 1, the reason, nothing imported)."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from workbench.records import RecordStore

WB = [sys.executable, "-m", "workbench.cli", "records"]


def _run(*args):
    return subprocess.run([*WB, *map(str, args)], capture_output=True, text=True)


def _json(*args):
    proc = _run(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def runs(tmp_path):
    """A data folder with two runs: one with a table and an artifact file, one failed."""
    data = tmp_path / "data"
    store = RecordStore(data)
    with store.run("bench.cli", {"size": "64M"}) as run:
        run.add_table("t", pd.DataFrame({"v": [3, 4], "name": ["x", "y"]}))
        run.update_result(bytes_per_s=1.5e9)
        (run.artifacts_dir / "serial.log").write_text("boot\nkexec\n")
    with pytest.raises(RuntimeError), store.run("lab.cycle", {"memfds": 1}) as failed:
        raise RuntimeError("target lost")
    return data, [run.id, failed.id]


def test_export_then_import_into_a_fresh_folder(runs, tmp_path):
    data, ids = runs
    archive = tmp_path / "share.zip"
    exported = _run("export", ids[0][-6:], ids[1], "--to", archive, "--data", data)
    assert exported.returncode == 0, exported.stderr
    assert f"exported 2 run(s) to {archive}" in exported.stdout
    assert ids[0] in exported.stdout and "1 table(s), 1 artifact file(s)" in exported.stdout

    fresh = tmp_path / "fresh"
    imported = _json("import", archive, "--data", fresh)
    assert imported["imported"] == ids and imported["already_present"] == []
    assert imported["tables"] == 1 and imported["artifact_files"] == 1
    for run_id in ids:
        original = _json("show", run_id, "--data", data)
        copy = _json("show", run_id, "--data", fresh)
        assert copy.pop("artifacts_dir") == (str(fresh / "runs" / run_id) if original.pop("artifacts_dir") else None)
        assert copy == original
    assert _json("show", ids[0], "--table", "t", "--data", fresh) == [{"v": 3, "name": "x"}, {"v": 4, "name": "y"}]
    assert (fresh / "runs" / ids[0] / "serial.log").read_text() == "boot\nkexec\n"
    shown = _run("show", ids[0], "--data", fresh)
    assert shown.returncode == 0 and "bench.cli" in shown.stdout and "bytes_per_s" in shown.stdout

    again = _run("import", archive, "--data", fresh)
    assert again.returncode == 0, again.stderr
    assert f"already present  {ids[0]}" in again.stdout and "imported 0 run(s)" in again.stdout


def test_export_without_artifacts_json(runs, tmp_path):
    data, ids = runs
    summary = _json("export", ids[0], "--to", tmp_path / "lean.zip", "--no-artifacts", "--data", data)
    assert summary["run_ids"] == [ids[0]] and summary["artifact_files"] == 0 and summary["tables"] == 1
    assert summary["path"] == str(tmp_path / "lean.zip") and summary["bytes"] > 0
    assert _json("import", tmp_path / "lean.zip", "--data", tmp_path / "fresh")["artifact_files"] == 0
    assert not (tmp_path / "fresh" / "runs").exists()


def test_refusals_exit_1_with_the_reason_and_import_nothing(runs, tmp_path):
    data, ids = runs
    missing = _run("export", "nope", "--to", tmp_path / "a.zip", "--data", data)
    assert missing.returncode == 1 and "no run with id 'nope'" in missing.stderr
    assert not (tmp_path / "a.zip").exists()

    archive = tmp_path / "share.zip"
    assert _run("export", *ids, "--to", archive, "--data", data).returncode == 0
    (tmp_path / "cut.zip").write_bytes(archive.read_bytes()[:-100])
    fresh = tmp_path / "fresh"
    cut = _run("import", tmp_path / "cut.zip", "--data", fresh)
    assert cut.returncode == 1 and cut.stderr.startswith("workbench: ") and "truncated" in cut.stderr
    (tmp_path / "notes.txt").write_text("hello")
    foreign = _run("import", tmp_path / "notes.txt", "--data", fresh)
    assert foreign.returncode == 1 and "not a workbench record archive" in foreign.stderr
    assert _json("list", "--data", fresh) == []
