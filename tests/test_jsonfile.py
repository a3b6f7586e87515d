"""JSON files written whole or not at all (:mod:`workbench.jsonfile`): the file is replaced as a whole, no temporary
file is left behind whether the write succeeds or fails, and a reader never sees half of a file being rewritten."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from workbench.jsonfile import write_json_atomic


def test_writes_the_object_and_replaces_an_old_file_whole(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"old": "a much longer file than the new one, whose tail must not survive"}\n')
    assert write_json_atomic(str(path), {"new": [1, 2]}) == path  # a str path gives back a Path
    assert json.loads(path.read_text()) == {"new": [1, 2]}
    assert path.read_text() == '{\n "new": [\n  1,\n  2\n ]\n}\n'  # indent 1 and a final newline by default
    write_json_atomic(path, {"n": 3}, indent=4)
    assert path.read_text() == '{\n    "n": 3\n}\n'
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"version": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"version": 2, "bad": object()})
    assert json.loads(path.read_text()) == {"version": 1}
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_an_interrupt_during_the_write_leaves_no_temporary_file(tmp_path):
    def interrupt(obj):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(tmp_path / "state.json", {"x": object()}, default=interrupt)
    assert os.listdir(tmp_path) == []


def test_default_converts_what_json_cannot_hold(tmp_path):
    path = write_json_atomic(tmp_path / "out.json", {"where": tmp_path, "ids": {3}}, default=lambda o: str(o))
    assert json.loads(path.read_text()) == {"where": str(tmp_path), "ids": "{3}"}


def test_make_parents_creates_the_folder_and_without_it_a_missing_folder_fails(tmp_path):
    deep = tmp_path / "a" / "b" / "out.json"
    with pytest.raises(FileNotFoundError):
        write_json_atomic(deep, {"x": 1})
    assert not (tmp_path / "a").exists()
    assert write_json_atomic(deep, {"x": 1}, make_parents=True) == deep
    assert json.loads(deep.read_text()) == {"x": 1}
    assert os.listdir(deep.parent) == ["out.json"]


def test_a_reader_never_sees_a_partial_file_while_a_large_object_is_rewritten(tmp_path):
    path = tmp_path / "big.json"
    rows = [{"i": i, "text": "x" * 200} for i in range(2000)]  # about 450 KB: many write(2) calls per rewrite
    write_json_atomic(path, {"version": 0, "rows": rows})
    rewrites = 25
    done = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def read() -> None:
        while not done.is_set() or not seen:
            try:
                data = json.loads(Path(path).read_text())
            except json.JSONDecodeError as exc:
                problems.append(f"partial file: {exc}")
                return
            if len(data["rows"]) != len(rows):
                problems.append(f"{len(data['rows'])} rows")
                return
            seen.append(data["version"])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        while not seen and reader.is_alive():  # the reader has read the first version: it runs during rewrites
            done.wait(0.01)
        for version in range(1, rewrites + 1):
            write_json_atomic(path, {"version": version, "rows": rows})
    finally:
        done.set()
        reader.join(60)
    assert not reader.is_alive()
    assert problems == []
    assert seen == sorted(seen) and set(seen) <= set(range(rewrites + 1))
    assert len(set(seen)) > 1  # the reader ran while the file was being rewritten
    assert json.loads(path.read_text())["version"] == rewrites
    assert os.listdir(tmp_path) == ["big.json"]
