"""Debian guest images: specs and cache keys, reading a tree's package versions, the cache listing, what a failed
build's log says, and failed builds that leave nothing in a cache under tmp_path."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from workbench.lab.errors import LabError
from workbench.lab.guest import image
from workbench.lab.guest.image import (
    GUEST_FILES,
    GUEST_PACKAGES,
    GuestImage,
    GuestImageError,
    GuestSpec,
    build_guest,
    cached_guest,
    content_key,
    debian_mirror,
    failure_reason,
    guest_spec,
    guests_root,
    installed_versions,
    list_guests,
    resolve_guest,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_spec_sorts_and_dedups_packages_and_names_the_guest():
    spec = GuestSpec("sid", ("python3", "criu", "python3"))
    assert spec.packages == ("criu", "python3")
    assert spec.name == "debian-sid"
    assert GuestSpec().packages == tuple(sorted(GUEST_PACKAGES))
    assert guest_spec("debian-sid") == guest_spec("sid") == GuestSpec()


@pytest.mark.parametrize("suite", ["", "Sid", "sid main", "../x"])
def test_spec_refuses_a_bad_suite(suite):
    with pytest.raises(GuestImageError, match="not a Debian suite name"):
        GuestSpec(suite)


def test_spec_refuses_bad_package_names():
    with pytest.raises(GuestImageError, match="not Debian package names: 'Py Thon'"):
        GuestSpec("sid", ("systemd", "Py Thon"))


def test_request_key_follows_suite_and_packages_not_their_order():
    base = GuestSpec("sid", ("systemd", "criu"))
    assert base.request_key() == GuestSpec("sid", ("criu", "systemd")).request_key()
    assert base.request_key() != GuestSpec("trixie", ("systemd", "criu")).request_key()
    assert base.request_key() != GuestSpec("sid", ("systemd", "criu", "python3")).request_key()


def test_content_key_follows_every_version_and_the_workbench_files(monkeypatch):
    spec = GuestSpec()
    versions = {"systemd": "262.1-1", "criu": "4.2.1-1"}
    key = content_key(spec, versions)
    assert key == content_key(spec, dict(reversed(list(versions.items()))))
    assert key != content_key(spec, {**versions, "criu": "4.2.1-2"})
    assert key != content_key(spec, {**versions, "libc6": "2.42-1"})
    assert key != content_key(GuestSpec("trixie"), versions)
    monkeypatch.setitem(GUEST_FILES, "etc/hostname", (0o644, "other\n"))
    assert key != content_key(spec, versions)


def _status_entry(package: str, version: str, status: str = "install ok installed") -> str:
    return (
        f"Package: {package}\nStatus: {status}\nPriority: optional\nSection: admin\nMaintainer: x <x@x>\n"
        f"Architecture: amd64\nVersion: {version}\nDescription: {package}\n\n"
    )


def test_installed_versions_reads_the_trees_dpkg_database(tmp_path):
    admin = tmp_path / "root/var/lib/dpkg"
    admin.mkdir(parents=True)
    (admin / "status").write_text(
        _status_entry("systemd", "262.1-1")
        + _status_entry("criu", "4.2.1-1")
        + _status_entry("gone", "1.0", "deinstall ok config-files")
    )
    assert installed_versions(tmp_path / "root") == {"systemd": "262.1-1", "criu": "4.2.1-1"}


def _fake_guest(folder, **changes):
    manifest = {
        "name": "debian-sid",
        "suite": "sid",
        "packages": list(GuestSpec().packages),
        "versions": {"systemd": "262.1-1"},
        "key": "k" * 12,
        "request_key": GuestSpec().request_key(),
        "build_seconds": 47.0,
        "size_bytes": 250 << 20,
        "built_at": "2026-11-29T17:00:00+0000",
        "mode": "root",
        **changes,
    }
    (folder / "root").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_list_and_lookup_skip_staging_folders_and_broken_manifests(cache):
    root = guests_root()
    _fake_guest(root / "debian-sid-old", built_at="2026-11-28T17:00:00+0000", key="o" * 12)
    _fake_guest(root / "debian-sid-new")
    _fake_guest(root / ".staging-x")
    (root / "debian-sid-broken").mkdir()
    (root / "debian-sid-broken/manifest.json").write_text("{")
    (root / "debian-sid-half").mkdir()
    assert [g.path.name for g in list_guests()] == ["debian-sid-old", "debian-sid-new"]
    assert cached_guest(GuestSpec()).path.name == "debian-sid-new"
    assert cached_guest(GuestSpec("trixie")) is None
    assert resolve_guest("debian-sid", build=False) == GuestImage.load(root / "debian-sid-new")
    with pytest.raises(GuestImageError, match="`workbench guest build --suite trixie`"):
        resolve_guest("debian-trixie", build=False)


def test_failure_reason_names_the_missing_package_or_the_mirror():
    mirror = "http://mirror.invalid/debian"
    log = "E: Unable to locate package no-such-pkg\nE: apt-get install failed\n"
    assert failure_reason(log, "sid", mirror).startswith(
        f"the package no-such-pkg is not in Debian sid (mirror {mirror})"
    )
    log = "E: Package 'foo' has no installation candidate\n"
    assert "the package foo is not in Debian sid" in failure_reason(log, "sid", mirror)
    log = f"Err:1 {mirror} sid InRelease\n  Could not connect to mirror.invalid:80\n"
    assert failure_reason(log, "sid", mirror).startswith(f"the Debian mirror {mirror} is not reachable")
    assert failure_reason("E: something else\n", "sid", mirror) is None


def test_debian_mirror_honours_the_environment(monkeypatch):
    monkeypatch.setenv("WORKBENCH_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    assert debian_mirror() == "http://127.0.0.1:9/debian"


def test_guest_image_error_is_a_lab_error():
    assert issubclass(GuestImageError, LabError)


needs_mmdebstrap = pytest.mark.skipif(
    shutil.which("mmdebstrap") is None or os.geteuid() != 0,
    reason="mmdebstrap (workbench/lab/scripts/install-system-deps.sh) and root are needed",
)


def _nothing_cached(spec: GuestSpec, error: GuestImageError | None = None) -> None:
    """Nothing but the lock and the failed build's log (which the error names) is left in the cache."""
    assert list_guests() == [] and cached_guest(spec) is None
    log = guests_root() / f"build-{spec.name}-{spec.request_key()}.log"
    left = sorted(p.name for p in guests_root().iterdir() if not p.name.startswith(".lock-"))
    assert left in ([], [log.name])
    if error is not None:
        assert log.exists() and f"see {log}" in str(error)


@needs_mmdebstrap
def test_unreachable_mirror_is_named_and_leaves_nothing_cached(cache, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    with pytest.raises(GuestImageError, match=r"the Debian mirror http://127\.0\.0\.1:9/debian is not reachable") as e:
        build_guest(GuestSpec())
    _nothing_cached(GuestSpec(), e.value)


@needs_mmdebstrap
def test_missing_package_is_named_and_leaves_nothing_cached(cache):
    """A real build against this machine's mirror that fails at package selection (it downloads sid's index)."""
    spec = GuestSpec("sid", ("systemd", "workbench-no-such-package"))
    with pytest.raises(GuestImageError, match="the package workbench-no-such-package is not in Debian sid") as e:
        build_guest(spec)
    _nothing_cached(spec, e.value)


def test_interrupted_build_leftovers_are_not_a_guest_and_are_cleared(cache, monkeypatch):
    spec = GuestSpec()
    staging = guests_root() / f".staging-{spec.request_key()}"
    (staging / "root/etc").mkdir(parents=True)
    assert cached_guest(spec) is None

    def mmdebstrap_fails(spec, root, log):
        assert not (staging / "root/etc").exists()  # the leftover was removed before the new build
        raise GuestImageError("mmdebstrap of Debian sid failed (exit 1)")

    monkeypatch.setattr(image, "_mmdebstrap", mmdebstrap_fails)
    with pytest.raises(GuestImageError):
        build_guest(spec)
    _nothing_cached(spec)
