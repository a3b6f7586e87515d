import shutil
import subprocess

import pytest

from workbench.lab.initramfs import build_initramfs, write_cpio


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio (make system-deps)")
def test_cpio_lists_with_gnu_cpio(tmp_path):
    path = tmp_path / "x.cpio"
    write_cpio(path, {"dir": (0o40755, b""), "dir/file": (0o100644, b"hello\n"), "init": (0o100755, b"#!/bin/sh\n")})
    listing = subprocess.run(["cpio", "-t"], stdin=path.open("rb"), capture_output=True, text=True, check=True)
    assert listing.stdout.split() == ["dir", "dir/file", "init"]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-id"], stdin=path.open("rb"), cwd=out, check=True, capture_output=True)
    assert (out / "dir/file").read_text() == "hello\n"


def test_initramfs_has_busybox_and_init():
    path = build_initramfs()
    listing = subprocess.run(["cpio", "-t"], stdin=path.open("rb"), capture_output=True, text=True, check=True)
    assert {"init", "bin/busybox"} <= set(listing.stdout.split())
    assert build_initramfs() == path  # cached
