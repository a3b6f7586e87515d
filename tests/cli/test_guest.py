"""``workbench guest``: listing the cache and a failed build, against a cache in tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.lab.guest.test_image import _fake_guest

WB = [sys.executable, "-m", "workbench.cli", "guest"]


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _run(cache, *args, **env):
    return subprocess.run(
        [*WB, *args], capture_output=True, text=True, env={**os.environ, "XDG_CACHE_HOME": str(cache), **env}
    )


def test_list_shows_every_cached_guest(cache):
    assert json.loads(_run(cache, "list", "--json").stdout) == []
    assert "no guest built yet" in _run(cache, "list").stdout
    _fake_guest(cache / "live-update-workbench/guests/debian-sid-kkkkkkkkkkkk", versions={"systemd": "262.1-1"})
    (row,) = json.loads(_run(cache, "list", "--json").stdout)
    assert (row["name"], row["key"], row["systemd"], row["criu"]) == ("debian-sid", "k" * 12, "262.1-1", None)
    text = _run(cache, "list").stdout
    assert "debian-sid" in text and "262.1-1" in text and "250 MiB" in text


def test_build_of_a_cached_guest_returns_it(cache):
    _fake_guest(cache / "live-update-workbench/guests/debian-sid-kkkkkkkkkkkk")
    info = json.loads(_run(cache, "build", "--suite", "sid", "--json").stdout)
    assert info["cached"] is True and info["key"] == "k" * 12


def test_bad_suite_is_refused(cache):
    done = _run(cache, "build", "--suite", "Sid Main")
    assert done.returncode == 1 and "is not a Debian suite name" in done.stderr


@pytest.mark.skipif(shutil.which("mmdebstrap") is None or os.geteuid() != 0, reason="needs mmdebstrap and root")
def test_build_without_a_reachable_mirror_fails_clearly(cache):
    done = _run(cache, "build", "--json", WORKBENCH_DEBIAN_MIRROR="http://127.0.0.1:9/debian")
    assert done.returncode == 1
    assert "the Debian mirror http://127.0.0.1:9/debian is not reachable" in done.stderr
    assert json.loads(_run(cache, "list", "--json").stdout) == []
