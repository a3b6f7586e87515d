"""The host↔agent protocol: marks, file names, the request, atomic and bounded JSON."""

import json
import os

import pytest

from workbench.lab.protocol import (
    MARK,
    RESULT_FILES,
    Event,
    Request,
    format_mark,
    parse_mark,
    read_json,
    write_json_atomic,
)


def test_marks_parse_with_console_noise():
    assert parse_mark('[  1.0] x WB-MARK phase-end {"phase":"prepare","s":1.5}') == (
        "phase-end",
        {"phase": "prepare", "s": 1.5},
    )
    assert parse_mark("WB-MARK init restore") == ("init", {"text": "restore"})
    assert parse_mark("ordinary kernel line") is None
    assert parse_mark("WB-MARK done {broken") == ("done", {"text": "{broken"})
    assert parse_mark("WB-MARK done [1, 2]") == ("done", {"text": "[1, 2]"})


def test_format_and_parse_are_inverse():
    line = format_mark(Event.PHASE_END, {"phase": "verify", "s": 0.25})
    assert line.startswith(MARK)
    assert parse_mark(line) == (Event.PHASE_END, {"phase": "verify", "s": 0.25})
    assert parse_mark(format_mark(Event.KEXEC)) == (Event.KEXEC, {"text": ""})


def test_every_event_is_one_distinct_word_the_kdump_ones_included():
    events = [value for name, value in vars(Event).items() if name.isupper() and isinstance(value, str)]
    assert len(events) == len(set(events)) and all(" " not in e for e in events)
    assert {Event.CRASH, Event.KDUMP_START, Event.KDUMP_SAVED, Event.KDUMP_ERROR} <= set(events)
    line = "[ 9.1] " + format_mark(Event.KDUMP_SAVED, {"file": "vmcore-crash.kdump", "level": 23})
    assert parse_mark(line) == (Event.KDUMP_SAVED, {"file": "vmcore-crash.kdump", "level": 23})


def test_request_is_one_flat_object_and_workload_fields_cannot_shadow_the_cycles(tmp_path):
    request = Request(workload="memfd", session="s", pause_after=["preserve"], workload_fields={"memfds": 2})
    path = request.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["workload"] == "memfd" and data["memfds"] == 2 and data["pause_after"] == ["preserve"]
    assert data["next_phase"] == "restore" and data["protocol"] >= 2
    assert "request.json" in RESULT_FILES
    with pytest.raises(ValueError, match=r"clash with the cycle's own"):
        Request(workload="memfd", session="s", workload_fields={"session": "other"}).to_json()


def test_atomic_write_leaves_no_temporary_file_and_replaces_whole(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert read_json(path) == {"a": 2}
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert read_json(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_untrusted_json_is_bounded_and_checked(tmp_path):
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * 2000}))
    with pytest.raises(ValueError, match="more than the 1000"):
        read_json(big, limit=1000)
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe{")
    with pytest.raises(ValueError, match="is not JSON"):
        read_json(bad)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list, not an object"):
        read_json(listed)


def test_read_json_follows_no_symlink_and_reads_only_regular_files(tmp_path):
    real = tmp_path / "real.json"
    real.write_text('{"workload": "memfd"}')
    (tmp_path / "request.json").symlink_to(real)
    with pytest.raises(ValueError, match=r"request\.json is a symlink"):
        read_json(tmp_path / "request.json")
    os.mkfifo(tmp_path / "fifo.json")  # no writer: a read that waited for one would never end
    with pytest.raises(ValueError, match=r"fifo\.json is not a regular file"):
        read_json(tmp_path / "fifo.json")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match=r"deep\.json is not JSON"):
        read_json(tmp_path / "deep.json")
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")
