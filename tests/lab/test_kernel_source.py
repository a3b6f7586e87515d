"""Kernel sources: the fetch script's choice of suites (with a fake ``apt-get``), extraction of a package into
its own tree, and the version a tree declares."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lab.fake_kernel import fake_source_tree
from workbench.lab import kernel_source as S
from workbench.lab.errors import KernelBuildError

FETCH = S.SCRIPTS / "fetch-linux-source.sh"
# Records "<command> <suite>" for each call; "downloads" the package only in the suite $FAKE_APT_SUITE.
FAKE_APT_GET = r"""#!/usr/bin/env bash
for arg in "$@"; do
  case "$arg" in Dir::Etc::SourceList=*) list=${arg#Dir::Etc::SourceList=} ;; esac
done
suite=$(awk '{print $4}' "$list")
for cmd in "$@"; do case "$cmd" in update|download) break ;; esac; done
echo "$cmd $suite ${!#}" >> "$FAKE_APT_LOG"
if [ "$cmd" = download ]; then
  [ "$suite" = "$FAKE_APT_SUITE" ] || { echo "E: Unable to locate package ${!#}" >&2; exit 100; }
  touch "${!#}_7.3~rc7-1~exp1_all.deb"
fi
"""


def _fetch(tmp_path: Path, suite_with_package: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apt-get").write_text(FAKE_APT_GET)
    (bin_dir / "apt-get").chmod(0o755)
    log = tmp_path / "apt.log"
    log.unlink(missing_ok=True)
    environment = {
        **{k: v for k, v in os.environ.items() if k != "WORKBENCH_KERNEL_SUITE"},
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_APT_LOG": str(log),
        "FAKE_APT_SUITE": suite_with_package,
        "WORKBENCH_DEBIAN_MIRROR": "http://mirror.example/debian",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(FETCH), "7.3", str(tmp_path / "src"), str(tmp_path / "apt")],
        capture_output=True,
        text=True,
        env=environment,
    )
    return proc, log.read_text().splitlines() if log.exists() else []


def test_fetch_tries_unstable_then_experimental(tmp_path):
    proc, calls = _fetch(tmp_path, "experimental")
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        "update sid update",
        "download sid linux-source-7.3",
        "update experimental update",
        "download experimental linux-source-7.3",
    ]
    assert (tmp_path / "src" / "linux-source-7.3_7.3~rc7-1~exp1_all.deb").exists()
    assert "from experimental" in proc.stderr
    sources = (tmp_path / "apt" / "sources.list").read_text()
    assert sources.startswith("deb [signed-by=") and "http://mirror.example/debian experimental main" in sources


def test_fetch_stops_at_unstable_when_the_package_is_there(tmp_path):
    proc, calls = _fetch(tmp_path, "sid")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["update sid update", "download sid linux-source-7.3"]


def test_suite_override_and_a_package_nowhere(tmp_path):
    proc, calls = _fetch(tmp_path, "experimental", WORKBENCH_KERNEL_SUITE="sid")
    assert proc.returncode != 0
    assert calls == ["update sid update", "download sid linux-source-7.3"]
    assert "linux-source-7.3 is in none of: sid" in proc.stderr
    assert not list((tmp_path / "src").glob("*.deb"))


def test_cache_root_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert S.cache_root() == tmp_path / "live-update-workbench"


def test_source_version_includes_the_extra_version(tmp_path):
    assert S.source_version(fake_source_tree(tmp_path / "a", {})) == "7.2.13"
    rc = "VERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 0\nEXTRAVERSION = -rc7\nNAME = Baby Opossum Posse\n"
    assert S.source_version(fake_source_tree(tmp_path / "b", {"Makefile": rc})) == "7.3.0-rc7"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_each_version_is_extracted_once_into_its_own_tree(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = S.cache_root() / "src"
    src.mkdir(parents=True)
    package = tmp_path / "pkg"
    fake_source_tree(package / "linux-source-7.3", {"Makefile": "VERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 0\n"})
    (package / "usr/src").mkdir(parents=True)
    subprocess.run(
        ["tar", "-cJf", str(package / "usr/src/linux-source-7.3.tar.xz"), "-C", str(package), "linux-source-7.3"],
        check=True,
    )
    shutil.rmtree(package / "linux-source-7.3")
    (package / "DEBIAN").mkdir()
    (package / "DEBIAN/control").write_text(
        "Package: linux-source-7.3\nVersion: 7.3~rc7-1~exp1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    deb = src / "linux-source-7.3_7.3~rc7-1~exp1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zxz", str(package), str(deb)], check=True, capture_output=True)

    log = tmp_path / "log"
    tree = S.source_tree("7.3", log)
    assert tree == src / "linux-source-7.3" and S.source_version(tree) == "7.3.0"
    assert (tree / ".workbench-extracted").read_text() == deb.name
    deb.unlink()  # a complete tree is not extracted again
    assert S.source_tree("7.3", log) == tree


def test_a_failed_step_names_itself_and_its_log(tmp_path):
    log = tmp_path / "log"
    with pytest.raises(KernelBuildError, match=f"unpacking failed \\(exit 3\\); see {log}"):
        S.run_logged(["bash", "-c", "echo oops; exit 3"], log, what="unpacking")
    assert "oops" in log.read_text()
