"""What a vmlinux says about itself (build id, release), and finding the one with a given build id."""

from __future__ import annotations

import sys

import pytest

from tests.elf_builder import GNU_BUILD_ID, ElfSpec, build_elf, note
from workbench.inspect.vmlinux import elf_build_id, find_vmlinux, vmlinux_release


def fake_vmlinux(path, build_id: bytes):
    path.write_bytes(build_elf(ElfSpec(notes=note(b"GNU", GNU_BUILD_ID, build_id))))
    return path


def test_build_id_of_an_elf_and_of_a_non_elf(tmp_path):
    build_id = elf_build_id(sys.executable)
    assert build_id is None or len(build_id) in (32, 40)
    not_elf = tmp_path / "x"
    not_elf.write_bytes(b"hello" * 20)
    with pytest.raises(ValueError, match="not an ELF"):
        elf_build_id(not_elf)
    assert elf_build_id(fake_vmlinux(tmp_path / "vmlinux", bytes(range(20)))) == bytes(range(20)).hex()


def test_release_from_the_linux_banner(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(b"\0" * 100 + b"Linux version %s (%s)\0" + b"Linux version 7.2.13-lab (root@host) (gcc) #1\0")
    assert vmlinux_release(path) == "7.2.13-lab"
    path.write_bytes(b"no banner here")
    assert vmlinux_release(path) is None


def test_find_vmlinux_by_build_id_among_candidates(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    other = fake_vmlinux(tmp_path / "other", b"\x01" * 20)
    wanted = fake_vmlinux(tmp_path / "wanted", b"\x02" * 20)
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x7fELF\x02\x01")  # cut off: skipped, not an error
    assert find_vmlinux((b"\x02" * 20).hex(), "7.2.13", extra=[tmp_path / "missing", broken, other, wanted]) == wanted
    assert find_vmlinux((b"\x03" * 20).hex(), "7.2.13", extra=[other, wanted]) is None
