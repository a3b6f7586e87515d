"""Kernel names: what parses, what is refused and how, and the cache keys names lead to."""

import pytest

from tests.lab.fake_kernel import fake_bzimage
from workbench.lab.errors import UnknownName
from workbench.lab.kernel_config import config_hash
from workbench.lab.kernel_name import KernelSpec, parse_kernel_name, prebuilt_files


def test_versions_and_variants():
    assert parse_kernel_name("7.2") == KernelSpec("7.2")
    assert parse_kernel_name(" 7.3 ") == KernelSpec("7.3")
    spec = parse_kernel_name("7.2+deferred-init+kho-debug")
    assert spec.version == "7.2" and spec.variants == ("deferred-init", "kho-debug") and spec.patches == ()
    assert spec.name == "7.2+deferred-init+kho-debug"
    assert parse_kernel_name(spec.name) == spec


def test_patch_file_in_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fix.patch").write_text("--- a/x\n+++ b/x\n")
    spec = parse_kernel_name("7.2+kho-debug+fix.patch")
    assert spec.variants == ("kho-debug",) and [p.name for p in spec.patches] == ["fix.patch"]
    assert parse_kernel_name(spec.name) == spec


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("7.2+nope", "no kernel variant 'nope'; the variants are: deferred-init, kho-debug, luo-compat-mismatch"),
        ("7.9", "no lab kernel version '7.9'; the versions are: 7.2, 7.3"),
        ("7.2+", "empty variant name"),
        ("7.2++kho-debug", "empty variant name"),
        ("7.2+kho-debug+kho-debug", "named twice"),
        ("7.2+missing.patch", "the patch missing.patch does not exist"),
        ("linux", "'linux' is not a kernel: give a version .*the variants are: deferred-init"),
        ("", "is not a kernel"),
    ],
)
def test_bad_names_say_what_is_accepted(name, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownName, match=message):
        parse_kernel_name(name)


def test_spec_checks_its_fields():
    with pytest.raises(UnknownName, match="the bases are: defconfig, lean"):
        KernelSpec("7.2", base="huge")
    assert KernelSpec("7.2", base="lean").config().base.target == "tinyconfig"


def test_keys_follow_configuration_and_patches(tmp_path):
    plain = KernelSpec("7.2")
    assert plain.key() == config_hash() and plain.patch_hash() is None
    # the version is a separate part of the cache key; 7.3's key differs by its own lean-base-7.3.config only
    assert KernelSpec("7.3", base="defconfig").key() == KernelSpec("7.2", base="defconfig").key()
    assert [p.name for p in KernelSpec("7.3").config().project_fragments()] == [
        "lean-base.config",
        "lean-base-7.3.config",
        "lab.config",
    ]
    assert KernelSpec("7.3").key() != plain.key()
    a, b = tmp_path / "a.patch", tmp_path / "b.patch"
    a.write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-1\n+2\n")
    b.write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-1\n+3\n")
    with_a, with_b = KernelSpec("7.2", patches=(a,)), KernelSpec("7.2", patches=(b,))
    assert len({plain.key(), with_a.key(), with_b.key()}) == 3
    assert with_a.key().endswith(f"-{with_a.patch_hash()}")
    assert KernelSpec("7.2", patches=(a, b)).patch_hash() != KernelSpec("7.2", patches=(b, a)).patch_hash()
    assert with_a.config().local_version_suffix == f"+p{with_a.patch_hash()[:8]}"


def test_a_variant_with_a_patch_has_a_patch_hash():
    control = KernelSpec("7.2", ("luo-compat-mismatch",))
    assert [p.name for p in control.all_patches()] == ["0001-luo-compatible-string-mismatch.patch"]
    assert control.patch_hash() is not None
    assert control.config().hash() != config_hash()  # the release names the variant
    assert control.folder_name("7.2.13") == f"7.2.13+luo-compat-mismatch-{control.key()}"
    assert KernelSpec("7.2").folder_name("7.2.13") == f"7.2.13-{config_hash()}"


def test_prebuilt_folder_and_bzimage(tmp_path):
    folder = tmp_path / "mine"
    fake_bzimage(folder / "bzImage", "7.2.9-custom")
    with pytest.raises(UnknownName, match="no kernel config beside"):
        parse_kernel_name(str(folder))
    (folder / ".config").write_text("CONFIG_KEXEC_HANDOVER=y\n")
    spec = parse_kernel_name(str(folder))
    assert spec.prebuilt == folder and spec.name == str(folder)
    files = prebuilt_files(folder / "bzImage")
    assert (files.image, files.config, files.release) == (folder / "bzImage", folder / ".config", "7.2.9-custom")


def test_prebuilt_debian_layout_and_build_tree(tmp_path):
    boot = tmp_path / "boot"
    fake_bzimage(boot / "vmlinuz-7.2.9-amd64", "7.2.9-amd64")
    (boot / "config-7.2.9-amd64").write_text("")
    assert prebuilt_files(boot / "vmlinuz-7.2.9-amd64").config == boot / "config-7.2.9-amd64"
    build = tmp_path / "build"
    fake_bzimage(build / "arch/x86/boot/bzImage", "7.3.0-rc7")
    (build / ".config").write_text("")
    assert prebuilt_files(build).image == build / "arch/x86/boot/bzImage"


def test_not_a_bzimage(tmp_path):
    (tmp_path / "bzImage").write_bytes(b"\0" * 4096)
    (tmp_path / "config").write_text("")
    with pytest.raises(UnknownName, match="is not a bzImage"):
        parse_kernel_name(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownName, match="holds no bzImage"):
        prebuilt_files(tmp_path / "empty")
