"""Reading the agent's files in the run's share as untrusted input (:mod:`workbench.lab.share_files`): bounded,
never through a symlink or out of the folder, JSON checked against its shape; and, for random bytes and random JSON,
only the project's errors escape."""

from __future__ import annotations

import json
import os
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.jsonfile import write_json_atomic
from workbench.lab.errors import LabError, ShareFileError, ShareFileMalformed
from workbench.lab.share_files import (
    JSON_LIMIT,
    MEMFD_SHAPE,
    STATE_SHAPE,
    Fields,
    ListOf,
    MapOf,
    Scalar,
    open_share_file,
    read_share_bytes,
    read_share_json,
    read_share_tail,
    read_state_file,
)

# a restore.json as the memfd workload's agent writes it (from a real cycle, shortened)
RESTORE = {
    "phases": {"restore": 0.16, "verify": 0.61, "finish": 0.01},
    "events": [],
    "kernel_release_after": "7.2.13-lab",
    "current_phase": "finish",
    "setup": {"hasher": "xxh3-64-numba", "hasher_s": 0.4},
    "retrieve_s": [0.157],
    "hash_impl_after": "xxh3-64-numba",
    "memfds": [
        {
            "memfd": 0,
            "session": "workbench",
            "token": 1000,
            "size": 268435456,
            "expected_size": 268435456,
            "pages": 65536,
            "differing_pages": [],
            "differing_count": 0,
        }
    ],
    "verified": True,
    "pages_checked": 65536,
    "finished": True,
}
PREPARE = {
    "phases": {"prepare": 0.2, "preserve": 0.03, "load": 0.5},
    "events": ["fault injection: flipped one bit of page 5 of memfd 0"],
    "kernel_release_before": "7.3.0-rc7-lab",
    "hash_impl": "xxh3-64-numba",
    "session": "workbench",
    "preflight_live": {"verdict": "accept", "formats": {}},
    "error": None,
}


# -- reading bytes ------------------------------------------------------------------------------------------------
def test_a_file_is_read_up_to_its_limit_and_refused_beyond(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    assert read_share_bytes(tmp_path, "a.bin", limit=100) == b"x" * 100
    with pytest.raises(ShareFileError, match=r"a\.bin is 100 bytes, more than the 99 it may have") as caught:
        read_share_bytes(tmp_path, "a.bin", limit=99)
    assert caught.value.path == tmp_path / "a.bin" and caught.value.field is None
    (tmp_path / "empty").write_bytes(b"")
    assert read_share_bytes(tmp_path, "empty", limit=0) == b""


def test_a_missing_file_says_the_agent_did_not_write_it(tmp_path):
    with pytest.raises(ShareFileError, match=r"restore\.json is missing: the agent did not write it"):
        read_state_file(tmp_path, "restore")


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_symlink_is_never_followed(tmp_path, target):
    share = tmp_path / "guest"
    share.mkdir()
    linked = tmp_path / "host-file.json" if target == "outside" else share / "real.json"
    linked.write_text(json.dumps(PREPARE))
    (share / "prepare.json").symlink_to(linked)
    with pytest.raises(ShareFileError, match=r"prepare\.json is a symlink; the host reads only regular files"):
        read_state_file(share, "prepare")


@pytest.mark.parametrize("name", ["../prepare.json", "sub/prepare.json", "..", ".", "", "a\0b"])
def test_only_plain_names_in_the_share_are_read(tmp_path, name):
    share = tmp_path / "guest"
    share.mkdir()
    (tmp_path / "prepare.json").write_text("{}")
    with pytest.raises(ShareFileError, match="is not a plain file name in the share"):
        read_share_json(share, name)


def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "prepare.json")  # no writer: a read that waited for one would never end
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: _catch(outcome, read_state_file, tmp_path, "prepare"), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], ShareFileError) and "is not a regular file" in str(outcome[0])
    (tmp_path / "restore.json").mkdir()
    with pytest.raises(ShareFileError, match="is not a regular file"):
        read_state_file(tmp_path, "restore")


def test_a_share_file_is_opened_once_and_checked_on_that_descriptor(tmp_path):
    (tmp_path / "vmcore").write_bytes(b"KDUMP   ")
    fd, info = open_share_file(tmp_path, "vmcore")
    try:
        assert os.fstat(fd).st_ino == info.st_ino == (tmp_path / "vmcore").stat().st_ino and info.st_size == 8
        (tmp_path / "vmcore").unlink()  # what the descriptor reads no longer depends on the name
        (tmp_path / "vmcore").symlink_to("/etc/hostname")
        assert os.pread(fd, 8, 0) == b"KDUMP   "
    finally:
        os.close(fd)
    with pytest.raises(ShareFileError, match="is a symlink"):
        open_share_file(tmp_path, "vmcore")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ShareFileError, match="is not a regular file"):
        open_share_file(tmp_path, "fifo")
    with pytest.raises(ShareFileError, match="not a plain file name"):
        open_share_file(tmp_path, "../vmcore")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(content=st.binary(max_size=3000), limit=st.integers(0, 4000))
def test_the_tail_of_a_file_is_its_last_bytes_whatever_its_size(tmp_path, content, limit):
    (tmp_path / "log").write_bytes(content)
    assert read_share_tail(tmp_path, "log", limit=limit) == content[len(content) - min(limit, len(content)) :]


def test_the_tail_of_a_symlink_or_a_fifo_is_refused(tmp_path):
    (tmp_path / "log").symlink_to("/etc/hostname")
    with pytest.raises(ShareFileError, match="is a symlink"):
        read_share_tail(tmp_path, "log", limit=10)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ShareFileError, match="is not a regular file"):
        read_share_tail(tmp_path, "fifo", limit=10)


def _catch(into: list[BaseException], call, *args) -> None:
    try:
        call(*args)
    except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
        into.append(exc)


# -- JSON and its shape ---------------------------------------------------------------------------------------------
def test_a_real_state_file_is_read_as_it_is(tmp_path):
    write_json_atomic(tmp_path / "restore.json", RESTORE)
    write_json_atomic(tmp_path / "prepare.json", PREPARE)
    assert read_state_file(tmp_path, "restore") == RESTORE
    assert read_state_file(tmp_path, "prepare") == PREPARE


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\xff\xfe{}", "is not UTF-8 text (byte 0)"),
        (b'{"phases": ', "is not JSON: Expecting value"),
        (b"[1, 2]", "holds a JSON array, not an object"),
        (b"null", "holds a JSON null, not an object"),
        (b"[" * 200_000 + b"]" * 200_000, "nests its JSON too deeply"),
        (b'{"pages_checked": ' + b"9" * 5000 + b"}", "is not JSON: Exceeds the limit"),
    ],
)
def test_what_is_not_a_json_object_is_malformed(tmp_path, content, says):
    (tmp_path / "restore.json").write_bytes(content)
    with pytest.raises(ShareFileMalformed, match=re.escape(says)):
        read_state_file(tmp_path, "restore")


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"verified": 1}, "verified", "is a JSON integer, not a boolean"),
        ({"pages_checked": True}, "pages_checked", "is a JSON boolean, not an integer"),
        ({"pages_checked": 4.0}, "pages_checked", "is a JSON number, not an integer"),
        ({"phases": {"restore": "0.1"}}, "phases.restore", "is a JSON string, not a number"),
        ({"phases": [0.1]}, "phases", "is a JSON array, not an object"),
        ({"memfds": {"0": {}}}, "memfds", "is a JSON object, not an array"),
        ({"memfds": [RESTORE["memfds"][0], {"memfd": 1}]}, "memfds[1].differing_count", "is missing"),
        (
            {"memfds": [{**RESTORE["memfds"][0], "differing_pages": [3, None]}]},
            "memfds[0].differing_pages[1]",
            "is a JSON null, not an integer",
        ),
        ({"kernel_release_after": ["7.2"]}, "kernel_release_after", "is a JSON array, not a string"),
        ({"error": "boom"}, "error", "is a JSON string, not an object"),
    ],
)
def test_a_field_of_the_wrong_shape_is_named(tmp_path, change, field, says):
    write_json_atomic(tmp_path / "restore.json", {**RESTORE, **change})
    with pytest.raises(ShareFileMalformed, match=re.escape(f"restore.json: the field {field} {says}")) as caught:
        read_state_file(tmp_path, "restore")
    assert caught.value.field == field and caught.value.path == tmp_path / "restore.json"


def test_null_passes_where_a_field_may_be_null_and_unknown_fields_pass_unchecked(tmp_path):
    state = {**RESTORE, "kernel_release_after": None, "error": None, "workload_own": {"anything": [1, "x"]}}
    write_json_atomic(tmp_path / "restore.json", state)
    assert read_state_file(tmp_path, "restore") == state
    write_json_atomic(tmp_path / "restore.json", {**RESTORE, "verified": None})
    with pytest.raises(ShareFileMalformed, match="the field verified is a JSON null, not a boolean"):
        read_state_file(tmp_path, "restore")


def test_shapes_describe_the_first_problem_with_its_path():
    shape = Fields({"a": ListOf(MapOf(Scalar("number"))), "b": Scalar("string", nullable=True)}, frozenset({"b"}))
    assert shape.problem({"a": [{"x": 1, "y": 2.5}], "b": None}, "") is None
    assert shape.problem({"a": []}, "") == ("b", "is missing")
    assert shape.problem({"a": [{}, {"x": False}], "b": "s"}, "") == ("a[1].x", "is a JSON boolean, not a number")
    assert shape.problem({"a": [{}], "b": 3}, "top") == ("top.b", "is a JSON integer, not a string")
    assert MEMFD_SHAPE.problem({"memfd": 0, "size": 1, "expected_size": 1, "differing_count": 0}, "m") is None
    with pytest.raises(ValueError, match="unknown JSON kind 'text'"):
        Scalar("text")


def test_the_limit_of_json_is_the_modules_unless_told(tmp_path):
    (tmp_path / "big.json").write_bytes(b'{"a": "' + b"x" * 2000 + b'"}')
    assert read_share_json(tmp_path, "big.json")["a"] == "x" * 2000
    with pytest.raises(ShareFileError, match="more than the 1000 it may have"):
        read_share_json(tmp_path, "big.json", limit=1000)
    assert JSON_LIMIT >= 1 << 20  # a state file of thousands of memfds fits


# -- hostile input: only the project's errors escape -------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)
state_keys = st.sampled_from(sorted({*STATE_SHAPE.fields, *MEMFD_SHAPE.fields, "other"}))
memfd_like = st.dictionaries(st.sampled_from(sorted({*MEMFD_SHAPE.fields, "token"})), json_values | st.integers())
state_like = st.dictionaries(state_keys, json_values | st.lists(memfd_like, max_size=3), max_size=12)


def _mutated(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        if not out:
            out.append(value)
            continue
        at = position % len(out)
        if value % 3 == 0:
            del out[at]
        elif value % 3 == 1:
            out.insert(at, value)
        else:
            out[at] ^= value or 1
    return bytes(out)


def _read_or_refuse(folder, phase: str) -> dict | None:
    try:
        return read_state_file(folder, phase, limit=4096)
    except ShareFileError:
        return None


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(content=st.binary(max_size=5000))
def test_random_bytes_raise_only_share_file_errors(tmp_path, content):
    (tmp_path / "restore.json").write_bytes(content)
    state = _read_or_refuse(tmp_path, "restore")
    assert state is None or isinstance(state, dict)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_real_state_files_raise_only_share_file_errors(tmp_path, edits):
    for phase, state in (("prepare", PREPARE), ("restore", RESTORE)):
        (tmp_path / f"{phase}.json").write_bytes(_mutated(json.dumps(state).encode(), edits))
        read = _read_or_refuse(tmp_path, phase)
        assert read is None or STATE_SHAPE.problem(read, "") is None


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(value=json_values | state_like)
def test_random_json_is_accepted_only_in_its_shape(tmp_path, value):
    (tmp_path / "restore.json").write_text(json.dumps(value))
    try:
        state = read_state_file(tmp_path, "restore")
    except ShareFileMalformed as exc:
        assert isinstance(exc, LabError) and exc.path == tmp_path / "restore.json"
        assert exc.field is None or exc.field == STATE_SHAPE.problem(value, "")[0]
        return
    assert state == value and STATE_SHAPE.problem(state, "") is None
