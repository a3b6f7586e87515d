"""``workbench kernel``: listing the cache, a cached build, and refused names, against a cache in tmp_path."""

import json
import os
import subprocess
import sys

import pytest

from tests.lab.fake_kernel import fake_cached_kernel
from workbench.lab.kernel_config import config_hash
from workbench.lab.kernel_name import parse_kernel_name

WB = [sys.executable, "-m", "workbench.cli", "kernel"]


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _run(cache, *args):
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run([*WB, *args], capture_output=True, text=True, env=env)


def test_list_json_has_every_cached_kernel(cache):
    assert json.loads(_run(cache, "list", "--json").stdout) == []
    assert "no lab kernel built yet" in _run(cache, "list").stdout
    fake_cached_kernel(cache, "7.2.13-a", config_hash="a" * 12, size_bytes=3 << 30, build_seconds=783.0)
    fake_cached_kernel(
        cache,
        "7.2.13+luo-compat-mismatch-b",
        config_hash="b" * 12,
        variants=["luo-compat-mismatch"],
        patches=["luo-compat-mismatch/0001-luo-compatible-string-mismatch.patch"],
        patch_hash="c" * 12,
        size_bytes=1 << 30,
    )
    rows = json.loads(_run(cache, "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["7.2", "7.2+luo-compat-mismatch"]
    assert rows[0]["size_bytes"] == 3 << 30 and rows[0]["build_seconds"] == 783.0
    assert rows[1]["patches"] == ["luo-compat-mismatch/0001-luo-compatible-string-mismatch.patch"]
    assert {"version", "release", "variants", "config_hash", "patch_hash", "built_at", "path"} <= set(rows[0])
    text = _run(cache, "list").stdout
    assert "3.0 GiB" in text and "783 s" in text and "7.2+luo-compat-mismatch" in text


def test_build_returns_the_cached_kernel_without_building(cache):
    path = fake_cached_kernel(cache, f"7.2.13-{config_hash()}", config_hash=config_hash(), objects=2900)
    for args in (["--json"], ["--series", "7.2", "--json"], ["--version", "7.2", "--json"]):
        proc = _run(cache, "build", *args)
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert info["cached"] is True and info["path"] == str(path) and info["objects"] == 2900
        assert {"build_seconds", "ccache", "release", "variants", "patches"} <= set(info)
    assert "(cached)" in _run(cache, "build").stdout


def test_unknown_variant_is_refused_before_anything_happens(cache):
    proc = _run(cache, "build", "--variant", "nope")
    assert proc.returncode == 1
    assert "no kernel variant 'nope'; the variants are: deferred-init, kho-debug, luo-compat-mismatch" in proc.stderr
    assert not cache.exists()


def test_version_and_its_old_name_must_agree(cache):
    proc = _run(cache, "info", "--version", "7.3", "--series", "7.2")
    assert proc.returncode == 1 and "disagree" in proc.stderr
    proc = _run(cache, "build", "--version", "7.9")
    assert proc.returncode == 1 and "the versions are: 7.2, 7.3" in proc.stderr


def test_info_names_the_configuration_of_a_variant(cache):
    info = json.loads(_run(cache, "info", "--version", "7.3", "--variant", "kho-debug", "--json").stdout)
    assert info["built"] is False and info["config_hash"] == parse_kernel_name("7.3+kho-debug").config().hash()
    assert info["config_hash"] != config_hash(variants=("kho-debug",))  # 7.3 adds lean-base-7.3.config
