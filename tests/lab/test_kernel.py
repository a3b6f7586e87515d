"""The lab kernel: configuration checks and the cache."""

import subprocess

import pytest

from workbench.lab import kernel as K

FRAGMENT = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x"\n'


def test_parse_config():
    assert K.parse_config(FRAGMENT) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x"'}


def test_missing_options_names_each_lost_option():
    final = 'CONFIG_A=m\nCONFIG_B=y\nCONFIG_C="x"\n'
    assert K.missing_options(FRAGMENT, final) == ["CONFIG_A=y (got m)", "CONFIG_B=n (got y)"]
    assert K.missing_options(FRAGMENT, 'CONFIG_A=y\nCONFIG_C="x"\n') == []


def test_kernel_without_kho_is_refused_clearly():
    config = "CONFIG_KEXEC_FILE=y\n# CONFIG_KEXEC_HANDOVER is not set\n"
    with pytest.raises(K.KernelWithoutLiveUpdate, match="CONFIG_KEXEC_HANDOVER, CONFIG_LIVEUPDATE"):
        K.require_live_update(config, "a Debian kernel")


def test_fragment_asks_for_what_the_lab_needs():
    wanted = K.parse_config(K.FRAGMENT.read_text())
    for option in K.REQUIRED_FOR_CYCLE + (
        "CONFIG_KEXEC_HANDOVER_DEBUGFS",
        "CONFIG_MEMFD_CREATE",
        "CONFIG_DEBUG_INFO_DWARF5",
        "CONFIG_FW_CFG_SYSFS",
        "CONFIG_PROC_KCORE",
        "CONFIG_IKCONFIG_PROC",
        "CONFIG_9P_FS",
        "CONFIG_NET_9P_VIRTIO",
        "CONFIG_VIRTIO_CONSOLE",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_CRASH_DUMP",
        "CONFIG_HUGETLBFS",
        "CONFIG_TRANSPARENT_HUGEPAGE",
        "CONFIG_CHECKPOINT_RESTORE",
    ):
        assert wanted.get(option) == "y", option
    assert wanted["CONFIG_MODULES"] == "n"


def test_config_hash_depends_on_fragment(tmp_path):
    other = tmp_path / "other.config"
    other.write_text(K.FRAGMENT.read_text() + "CONFIG_EXTRA=y\n")
    assert K.config_hash(other) != K.config_hash(K.FRAGMENT)
    assert K.config_hash(K.FRAGMENT) == K.config_hash(K.FRAGMENT)


@pytest.mark.lab
def test_built_kernel_has_every_option_and_kho(lab_kernel):
    assert K.missing_options(K.FRAGMENT.read_text(), lab_kernel.config_file.read_text()) == []
    K.require_live_update(lab_kernel.config_file.read_text(), "the lab kernel")
    assert lab_kernel.bzimage.stat().st_size > 1 << 20
    assert lab_kernel.vmlinux.stat().st_size > 50 << 20
    assert lab_kernel.release.startswith(lab_kernel.version)
    assert lab_kernel.config_hash == K.config_hash()


@pytest.mark.lab
def test_second_build_comes_from_the_cache_without_running_anything(lab_kernel, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"the cached kernel must not run {args[0]!r}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    again = K.build_kernel(progress=False)
    assert again.path == lab_kernel.path and again.release == lab_kernel.release


@pytest.mark.lab
def test_vmlinux_has_dwarf_for_drgn(lab_kernel):
    out = subprocess.run(["readelf", "-S", "-W", str(lab_kernel.vmlinux)], capture_output=True, text=True).stdout
    assert ".debug_info" in out
