"""``workbench qualify``: what it refuses before anything boots (the matrix itself is in tests/qualify)."""

import subprocess
import sys

import pytest

WB = [sys.executable, "-m", "workbench.cli"]


def _wb(*args):
    return subprocess.run([*WB, *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--kernels", "7.2", "--checks", "memfd,nope"], "unknown check 'nope'"),
        (["--kernels", ","], "at least one kernel"),
        (["--kernels", "7.2,7.2"], "named twice"),
        (["--kernels", "7.2", "--size", "5000"], "whole number"),
    ],
)
def test_a_qualification_that_cannot_run_is_refused_with_the_reason(args, words, tmp_path):
    done = _wb("qualify", *args, "--data", str(tmp_path / "data"))
    assert done.returncode == 2, done.stderr
    assert words in done.stderr
    assert not (tmp_path / "data" / "runs").exists()  # nothing recorded, nothing booted


def test_help_names_the_outcomes():
    done = _wb("qualify", "--help")
    assert done.returncode == 0 and "pass, refused, fail, panic or hang" in " ".join(done.stdout.split())
