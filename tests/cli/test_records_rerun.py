"""``workbench records rerun``: the verdict, printed and as JSON, and the exit status."""

import json
import subprocess
import sys

import pytest

WB = [sys.executable, "-m", "workbench.cli"]


def _wb(*args, check=True):
    return subprocess.run([*WB, *args], capture_output=True, text=True, check=check)


@pytest.fixture
def recorded(tmp_path):
    data = str(tmp_path / "data")
    out = _wb("bench", "metadata", "--memory", "4G", "--seed", "3", "--json", "--data", data).stdout
    return data, json.loads(out)["record_id"]


def test_rerun_agrees_and_says_so(recorded):
    data, record_id = recorded
    out = json.loads(_wb("records", "rerun", record_id, "--repeats", "2", "--json", "--data", data).stdout)
    assert out["verdict"] == "agree" and out["original"] == record_id and len(out["reruns"]) == 2
    assert out["compared_fields"] > 10 and out["differences"] == []
    text = _wb("records", "rerun", record_id, "--all", "--data", data).stdout
    assert "verdict: agree" in text and "preserved_pages" in text


def test_a_changed_parameter_disagrees_with_exit_status_1(recorded):
    data, record_id = recorded
    proc = _wb("records", "rerun", record_id, "--set", "memory_bytes=2G", "--json", "--data", data, check=False)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["verdict"] == "disagree" and out["overrides"] == {"memory_bytes": "2G"}
    assert "preserved_pages" in {d["field"] for d in out["differences"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "nope=1"], "no parameter 'nope'"),
        (["--set", "memfds"], "is not KEY=VALUE"),
    ],
)
def test_bad_overrides_are_refused(recorded, args, message):
    data, record_id = recorded
    proc = _wb("records", "rerun", record_id, *args, "--data", data, check=False)
    assert proc.returncode != 0 and message in proc.stderr


def test_an_unknown_record_is_refused(tmp_path):
    proc = _wb("records", "rerun", "20990101-000000-abcdef", "--data", str(tmp_path / "data"), check=False)
    assert proc.returncode == 1 and "no run with id" in proc.stderr
