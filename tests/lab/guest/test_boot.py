"""Booting a Debian guest: the initramfs and QEMU set-up (no VM), the marks read from a fake QEMU's console, and
one real boot of the cached sid guest to multi-user.target under the lab kernel (marker ``lab``)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.lab.guest.test_image import _fake_guest
from tests.lab.test_qemu import FAKE_QEMU
from workbench.lab.accel import AccelChoice
from workbench.lab.guest.boot import (
    GUEST_INIT_SCRIPT,
    GUEST_ROOT_TAG,
    REPO_MOUNT,
    REPO_SHARE_TAG,
    RUN_SHARE_TAG,
    GuestBootFailed,
    boot_guest,
    build_guest_initramfs,
    guest_vm_config,
)
from workbench.lab.guest.image import GuestImage, build_guest
from workbench.lab.kernel import LabKernel
from workbench.records import RecordStore

TCG = AccelChoice("tcg", "test")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def guest(cache, tmp_path):
    _fake_guest(tmp_path / "guest")
    return GuestImage.load(tmp_path / "guest")


@pytest.fixture
def kernel(tmp_path):
    return LabKernel(
        path=tmp_path / "kernel", version="7.2.13", config_hash="c" * 12, release="7.2.13-lab", series="7.2"
    )


def test_initramfs_is_cached_by_content_and_holds_the_init_script(cache):
    first = build_guest_initramfs()
    assert first == build_guest_initramfs()
    blob = first.read_bytes()
    assert GUEST_INIT_SCRIPT.encode() in blob
    assert b"switch_root /newroot /sbin/init" in blob


def test_vm_config_shares_the_repository_read_only_when_asked(kernel, guest, cache, tmp_path):
    config = guest_vm_config(kernel, guest, TCG, run_share=tmp_path / "run", repo=tmp_path / "repo")
    assert config.shares[REPO_SHARE_TAG] == (tmp_path / "repo", True)
    assert config.shares[RUN_SHARE_TAG] == (tmp_path / "run", False)
    assert f"ro,cache=loose {REPO_SHARE_TAG} /rw/repo" in GUEST_INIT_SCRIPT
    assert f"mount --move /rw/repo /newroot{REPO_MOUNT}" in GUEST_INIT_SCRIPT


def test_vm_config_shares_only_the_guest_tree_read_only(kernel, guest, cache):
    config = guest_vm_config(kernel, guest, TCG, memory_mb=768, kernel_args="quiet", extra_args=["-S"])
    assert config.shares == {GUEST_ROOT_TAG: (guest.root, True)}  # not the host's root
    argv = config.argv(Path("/s"), Path("/q"))
    assert any(f"path={guest.root},mount_tag={GUEST_ROOT_TAG}" in a and a.endswith("readonly=on") for a in argv)
    assert argv[-1] == "-S"
    words = config.cmdline.split()
    for word in ("console=ttyS0", "kho=on", "liveupdate=on", "systemd.firstboot=off", "no_timer_check", "quiet"):
        assert word in words
    assert config.initrd == build_guest_initramfs() and config.memory_mb == 768


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    script = tmp_path / "fake-qemu-system-x86_64"
    script.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    script.chmod(0o755)
    monkeypatch.setenv("WORKBENCH_QEMU", str(script))
    monkeypatch.setattr(tempfile, "tempdir", tempfile.mkdtemp(prefix="wbg-"))  # short socket paths


def _console(monkeypatch, *lines: str) -> None:
    monkeypatch.setenv("FAKE_QEMU_SERIAL", json.dumps([line + "\r\n" for line in lines]))


def test_boot_reads_systemds_timestamps_from_the_guest_mark(kernel, guest, fake_qemu, tmp_path, monkeypatch):
    ready = {"multi_user_us": 80_222_523, "userspace_us": 6_696_027, "systemd": "262.1-1", "pid1": "systemd"}
    _console(
        monkeypatch, "Linux version 7.2.13-lab", "WB-MARK guest-init", f"login: WB-MARK multi-user {json.dumps(ready)}"
    )
    boot = boot_guest(kernel, guest, tmp_path / "run", accel=TCG, timeout_s=20)
    assert (boot.pid1, boot.systemd, boot.accelerator, boot.guest_key) == ("systemd", "262.1-1", "tcg", guest.key)
    assert boot.kernel_to_userspace_s == pytest.approx(6.696027)
    assert boot.userspace_to_multi_user_s == pytest.approx(73.526496)
    assert boot.kernel_to_multi_user_s == pytest.approx(80.222523)
    assert 0 <= boot.host_init_s <= boot.host_multi_user_s
    assert boot.as_dict()["kernel_to_multi_user_s"] == pytest.approx(80.222523)


def test_initramfs_failure_is_reported_with_its_reason(kernel, guest, fake_qemu, tmp_path, monkeypatch):
    _console(monkeypatch, "WB-MARK guest-init", "WB-MARK guest-init-error cannot mount the guest root over 9p")
    with pytest.raises(
        GuestBootFailed, match="initramfs failed: cannot mount the guest root over 9p; see .*serial.log"
    ):
        boot_guest(kernel, guest, tmp_path / "run", accel=TCG, timeout_s=20)


def test_a_malformed_ready_mark_is_an_error(kernel, guest, fake_qemu, tmp_path, monkeypatch):
    _console(monkeypatch, "WB-MARK guest-init", 'WB-MARK multi-user {"systemd":"262.1-1"}')
    with pytest.raises(GuestBootFailed, match="multi-user mark is malformed"):
        boot_guest(kernel, guest, tmp_path / "run", accel=TCG, timeout_s=20)


@pytest.mark.lab
def test_sid_guest_boots_to_multi_user_with_systemd_as_pid1(lab_kernel, tmp_path):
    guest = build_guest()  # about a minute on first use, cached afterwards
    etc_before = sorted(p.name for p in (guest.root / "etc").iterdir())
    data = tmp_path / "data"
    command = ["guest", "boot", "--kernel", lab_kernel.name, "--json", "--data", str(data)]
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *command], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    boot = json.loads(proc.stdout)
    assert boot["pid1"] == "systemd"
    assert boot["systemd"] == guest.version_of("systemd")
    assert 0 < boot["kernel_to_userspace_s"] < boot["kernel_to_multi_user_s"]
    assert 0 < boot["host_init_s"] < boot["host_multi_user_s"]
    record = RecordStore(data).get(boot["record_id"])
    assert record.kind == "guest.boot" and record.status == "ok" and record.result["pid1"] == "systemd"
    log = Path(boot["serial_log"])
    assert log.is_relative_to(record.artifacts_dir)
    assert "multi-user.target" in log.read_text() and "Failed to start" not in log.read_text()
    assert sorted(p.name for p in (guest.root / "etc").iterdir()) == etc_before  # the guest wrote to its copies
