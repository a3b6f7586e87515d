"""``workbench bench blackout``: a sweep that cannot run is refused before anything boots or is recorded."""

import subprocess
import sys

import pytest

from workbench.records import RecordStore


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--memory", "256M"], "at least 512M"),
        (["--preserve", "0,90%"], "60%"),
        (["--preserve", "lots"], "is not a share of guest RAM"),
        (["--kernel", "7.2+no such variant!"], "no kernel variant"),
    ],
)
def test_a_sweep_that_cannot_run_is_refused_and_leaves_no_record(tmp_path, args, words):
    data = tmp_path / "data"
    command = [sys.executable, "-m", "workbench.cli", "bench", "blackout", *args, "--data", str(data)]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 2 and words in proc.stderr
    assert not data.exists() or RecordStore(data).runs() == []
