"""Experiment records: lifecycle, filtering, concurrency, crashes and damaged stores."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest

from workbench import records
from workbench.records import (
    FORMAT_VERSION,
    AmbiguousRunId,
    CorruptRecord,
    RecordStore,
    RecordStoreError,
    RunNotFound,
    write_json_atomic,
)


@pytest.fixture
def store(tmp_path):
    return RecordStore(tmp_path / "data")


def test_ok_run_keeps_params_tables_result_and_environment(store):
    frame = pd.DataFrame({"size": [1, 2], "seconds": [0.5, 1.25], "name": ["a", "b"]})
    with store.run("bench.example", {"size": "64M", "threads": 2}) as run:
        run.add_table("results", frame)
        run.update_result(bytes_per_s=123.0)
        run.update_environment(target_kernel_release="7.2.13-lab")
    record = store.get(run.id)
    assert record.status == "ok" and record.error is None
    assert record.params == {"size": "64M", "threads": 2}
    assert record.result == {"bytes_per_s": 123.0}
    assert record.table_names == ["results"]
    pd.testing.assert_frame_equal(store.table(run.id, "results"), frame)
    env = record.environment
    for key in ("packages", "git", "python", "host_kernel_release", "cpu_model", "cpu_count", "memory_bytes"):
        assert key in env
    assert env["target_kernel_release"] == "7.2.13-lab"
    assert record.ended >= record.started


def test_failed_run_is_kept_with_error(store):
    with pytest.raises(ValueError), store.run("bench.example", {}) as run:
        run.update_result(partial=1)
        raise ValueError("the target did not come back")
    record = store.get(run.id)
    assert record.status == "failed"
    assert "the target did not come back" in record.error
    assert record.result == {"partial": 1}


def test_ctrl_c_marks_interrupted(store):
    with pytest.raises(KeyboardInterrupt), store.run("lab.cycle", {}) as run:
        raise KeyboardInterrupt
    assert store.get(run.id).status == "interrupted"


def test_filter_by_kind_prefix_status_and_param(store):
    for size in ("64M", "1G"):
        with store.run("bench.hash", {"size": size}):
            pass
    with pytest.raises(RuntimeError), store.run("lab.cycle", {"size": "64M"}):
        raise RuntimeError("x")
    assert len(store.list()) == 3
    assert list(store.list(kind="bench.")["kind"]) == ["bench.hash", "bench.hash"]
    assert list(store.list(size="64M")["kind"]) == ["bench.hash", "lab.cycle"]
    assert list(store.list(status="failed")["kind"]) == ["lab.cycle"]


def test_compare_stacks_tables(store):
    ids = []
    for n in (1, 2):
        with store.run("bench.x", {"n": n}) as run:
            run.add_table("t", pd.DataFrame({"v": [n, n * 10]}))
        ids.append(run.id)
    both = store.compare(ids, "t")
    assert list(both["run_id"]) == [ids[0], ids[0], ids[1], ids[1]]
    assert list(both["v"]) == [1, 10, 2, 20]


def test_unknown_run_and_table(store):
    with pytest.raises(RunNotFound):
        store.get("nope")
    with store.run("k", {}) as run:
        pass
    with pytest.raises(KeyError, match="no table"):
        store.table(run.id, "missing")


_WRITER = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from workbench.records import RecordStore
    store = RecordStore(sys.argv[1])
    for i in range(int(sys.argv[3])):
        with store.run("concurrent", {"writer": sys.argv[2], "i": i}) as run:
            run.add_table("t", pd.DataFrame({"i": range(50)}))
            run.update_result(i=i)
    """
)


def test_concurrent_writers_lose_nothing(tmp_path):
    data = tmp_path / "data"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(data), str(w), "15"], stderr=subprocess.PIPE)
        for w in range(4)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    runs = RecordStore(data).runs(kind="concurrent")
    assert len(runs) == 60
    assert {(r.params["writer"], r.params["i"]) for r in runs} == {(str(w), i) for w in range(4) for i in range(15)}
    assert all(r.status == "ok" and r.table_names == ["t"] for r in runs)


def test_threads_opening_a_new_store_at_once_all_get_it(tmp_path):
    # A multi-host cycle opens a new store from one thread per target. SQLite refuses the switch to WAL at once,
    # without its busy wait, to a connection racing another one that is switching it (a few % of such races).
    failures = []
    for trial in range(100):
        store = RecordStore(tmp_path / f"data{trial}")
        barrier = threading.Barrier(2)

        def write(store=store, barrier=barrier):
            try:
                barrier.wait()
                with store.run("racing", {}) as run:
                    run.update_result(thread=threading.get_ident())
            except Exception as exc:  # noqa: BLE001 (collected and asserted below)
                failures.append(repr(exc))

        threads = [threading.Thread(target=write) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert len(RecordStore(store.data_dir).runs(kind="racing")) == 2


def test_a_store_locked_longer_than_the_wait_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "_LOCK_WAIT_S", 0.3)
    data = tmp_path / "data"
    data.mkdir()
    holder = sqlite3.connect(data / "records.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RecordStoreError, match="stayed locked by another writer") as caught:
            RecordStore(data).list()
        assert "not a workbench record store" not in str(caught.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert RecordStore(data).list() is not None


_KILLED = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from workbench.records import RecordStore
    store = RecordStore(sys.argv[1])
    with store.run("victim", {}) as run:
        run.add_table("partial", pd.DataFrame({"x": [1, 2, 3]}))
        print(run.id, flush=True)
        while True:
            run.add_table("growing", pd.DataFrame({"x": range(1000)}))
    """
)


def test_writer_killed_mid_run_is_kept_as_interrupted(tmp_path):
    data = tmp_path / "data"
    with RecordStore(data).run("before", {}):
        pass
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(data)], stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = RecordStore(data)
    record = store.get(run_id)
    assert record.status == "interrupted"
    assert "ended before finishing" in record.error
    assert list(store.table(run_id, "partial")["x"]) == [1, 2, 3]
    assert len(store.table(run_id, "growing")) == 1000  # never a half-written table
    assert store.get(store.runs(kind="before")[0].id).status == "ok"


def test_running_run_of_live_process_stays_running(store):
    with store.run("long", {}) as run:
        assert RecordStore(store.data_dir).get(run.id).status == "running"


def test_foreign_file_gives_clear_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "records.sqlite").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(RecordStoreError, match="not a workbench record store"):
        RecordStore(data).list()


def test_foreign_sqlite_database_gives_clear_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "records.sqlite")
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(RecordStoreError, match="not a workbench record store"):
        RecordStore(data).list()


def _store_with_meta(tmp_path, meta: dict[str, str]):
    """A data folder whose record store is SQLite with workbench-like tables and this ``meta``; returns the folder
    and the database's bytes, to check that nothing was written."""
    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "records.sqlite")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE runs_v2 (id TEXT PRIMARY KEY, payload BLOB)")
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    db.execute("INSERT INTO runs_v2 VALUES ('20261129-000000-aaaaaa', x'00')")
    db.commit()
    db.close()
    return data, (data / "records.sqlite").read_bytes()


def test_a_store_of_a_newer_format_says_to_upgrade_and_is_left_as_it_is(tmp_path):
    newer = str(FORMAT_VERSION + 1)
    data, before = _store_with_meta(tmp_path, {"format": "live-update-workbench-records", "version": newer})
    store = RecordStore(data)
    for read in (store.list, lambda: store.get("aaaaaa"), lambda: store.run("k", {}).__enter__()):
        with pytest.raises(RecordStoreError) as info:
            read()
        assert f"newer workbench (records format {newer}; this one reads up to {FORMAT_VERSION})" in str(info.value)
        assert "Upgrade the workbench" in str(info.value) and "WORKBENCH_DATA" in str(info.value)
    assert (data / "records.sqlite").read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == ["records.sqlite"]  # no journal, no runs folder


@pytest.mark.parametrize(
    ("meta", "says"),
    [
        ({"format": "someone-elses-records", "version": "1"}, "holds 'someone-elses-records', not workbench records"),
        ({"format": "live-update-workbench-records", "version": "one"}, "names no format version"),
    ],
)
def test_a_store_of_a_foreign_format_is_refused_with_what_to_do(tmp_path, meta, says):
    data, before = _store_with_meta(tmp_path, meta)
    with pytest.raises(RecordStoreError, match="Move it away, or point WORKBENCH_DATA elsewhere") as info:
        RecordStore(data).list()
    assert says in str(info.value)
    assert (data / "records.sqlite").read_bytes() == before


def test_an_ambiguous_id_lists_the_runs_it_could_mean(store):
    ids = []
    for _ in range(3):
        with store.run("k", {}) as run:
            ids.append(run.id)
    shared = os.path.commonprefix(ids)
    with pytest.raises(AmbiguousRunId) as info:
        store.get(shared)
    assert info.value.candidates == sorted(ids)
    assert str(info.value).startswith(f"{shared!r} names 3 runs: {', '.join(sorted(ids))}; give more of the id")
    assert isinstance(info.value, RunNotFound)  # callers that catch a missing run catch this one too
    assert store.get(ids[1][-6:].upper()).id == ids[1]  # an id's unique tail still finds it, in any case
    with pytest.raises(RunNotFound) as missing:
        store.get("%")  # a LIKE wildcard is a character here, not "anything"
    assert not isinstance(missing.value, AmbiguousRunId)


def test_the_cli_lists_the_candidates_of_an_ambiguous_id(tmp_path):
    store = RecordStore(tmp_path / "data")
    ids = []
    for _ in range(2):
        with store.run("k", {}) as run:
            ids.append(run.id)
    shared = os.path.commonprefix(ids)
    argv = [sys.executable, "-m", "workbench.cli", "records", "show", shared, "--data", str(tmp_path / "data")]
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.returncode != 0
    assert f"names 2 runs: {', '.join(sorted(ids))}; give more of the id" in out.stderr


def test_corrupted_run_leaves_others_readable(store):
    with store.run("good", {}) as good:
        good.add_table("t", pd.DataFrame({"a": [1]}))
    with store.run("bad", {}) as bad:
        bad.add_table("t", pd.DataFrame({"a": [2]}))
    db = sqlite3.connect(store.path)
    db.execute("UPDATE tables SET parquet = ? WHERE run_id = ?", (b"garbage", bad.id))
    db.execute("UPDATE runs SET params = '{broken' WHERE id = ?", (bad.id,))
    db.commit()
    db.close()
    fresh = RecordStore(store.data_dir)
    assert [r.id for r in fresh.runs()] == [good.id]
    assert list(fresh.table(good.id, "t")["a"]) == [1]
    with pytest.raises(CorruptRecord, match=bad.id):
        fresh.get(bad.id)


def test_damaged_table_blob_is_a_clear_error(store):
    with store.run("k", {}) as run:
        run.add_table("t", pd.DataFrame({"a": [1]}))
    db = sqlite3.connect(store.path)
    db.execute("UPDATE tables SET parquet = ? WHERE run_id = ?", (b"garbage", run.id))
    db.commit()
    db.close()
    with pytest.raises(CorruptRecord, match="damaged"):
        RecordStore(store.data_dir).table(run.id, "t")


def test_json_result_file_is_written_whole_or_not_at_all(tmp_path):
    import numpy as np

    path = tmp_path / "new" / "result.json"
    assert write_json_atomic(path, {"n": np.int64(3), "where": tmp_path, "pair": (1, 2)}) == path
    assert json.loads(path.read_text()) == {"n": 3, "where": str(tmp_path), "pair": [1, 2]}
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        write_json_atomic(path, {"n": 4, "bad": object()})
    assert json.loads(path.read_text())["n"] == 3  # the old file is untouched
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # and no temporary file is left


def test_data_dir_from_environment(tmp_path, monkeypatch):
    from workbench.records import default_data_dir

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"


def test_cli_list_and_show_json(tmp_path):
    data = tmp_path / "data"
    with RecordStore(data).run("bench.cli", {"size": 7}) as run:
        run.add_table("t", pd.DataFrame({"v": [3]}))
    wb = [sys.executable, "-m", "workbench.cli"]
    listed = json.loads(subprocess.check_output([*wb, "records", "list", "--data", str(data), "--json"]))
    assert [r["id"] for r in listed] == [run.id]
    shown = json.loads(subprocess.check_output([*wb, "records", "show", run.id[-6:], "--data", str(data), "--json"]))
    assert shown["kind"] == "bench.cli" and shown["tables"] == ["t"]
    table = json.loads(
        subprocess.check_output([*wb, "records", "show", run.id, "--table", "t", "--data", str(data), "--json"])
    )
    assert table == [{"v": 3}]
    missing = subprocess.run([*wb, "records", "show", "nope", "--data", str(data)], capture_output=True, text=True)
    assert missing.returncode != 0 and "no run with id" in missing.stderr
