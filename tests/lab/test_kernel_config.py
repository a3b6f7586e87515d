"""Kernel configurations: parsing and checks, the shipped fragments and variants, composition and hashing."""

import hashlib

import pytest

from workbench.lab import kernel_config as C
from workbench.lab.errors import UnknownName

FRAGMENT = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x"\n'


def test_parse_config():
    assert C.parse_config(FRAGMENT) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x"'}


def test_missing_options_names_each_lost_option():
    final = 'CONFIG_A=m\nCONFIG_B=y\nCONFIG_C="x"\n'
    assert C.missing_options(FRAGMENT, final) == ["CONFIG_A=y (got m)", "CONFIG_B=n (got y)"]
    assert C.missing_options(FRAGMENT, 'CONFIG_A=y\nCONFIG_C="x"\n') == []


def test_kernel_without_kho_is_refused_clearly():
    config = "CONFIG_KEXEC_FILE=y\n# CONFIG_KEXEC_HANDOVER is not set\n"
    with pytest.raises(C.KernelWithoutLiveUpdate, match="CONFIG_KEXEC_HANDOVER, CONFIG_LIVEUPDATE"):
        C.require_live_update(config, "a Debian kernel")


def test_fragment_asks_for_what_the_lab_needs():
    wanted = C.parse_config(C.FRAGMENT.read_text())
    for option in C.REQUIRED_FOR_CYCLE + (
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


def test_lean_base_names_the_guest_essentials():
    wanted = C.parse_config(C.LEAN_FRAGMENT.read_text())
    for option in (
        "CONFIG_64BIT",
        "CONFIG_SMP",
        "CONFIG_BLK_DEV_INITRD",
        "CONFIG_BINFMT_ELF",
        "CONFIG_BINFMT_SCRIPT",
        "CONFIG_DEVTMPFS",
        "CONFIG_TMPFS",
        "CONFIG_PCI",
        "CONFIG_ACPI",
        "CONFIG_FUTEX",
        "CONFIG_EPOLL",
        "CONFIG_PRINTK_TIME",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_UNIX",
        "CONFIG_INET",
        "CONFIG_VIRTIO_PCI",
        "CONFIG_VIRTIO_NET",
        "CONFIG_9P_FS",
    ):
        assert wanted.get(option) == "y", option
    assert C.BASES["lean"].target == "tinyconfig" and C.BASES["lean"].fragments == (C.LEAN_FRAGMENT,)


def test_defconfig_hash_is_the_one_builds_before_variants_were_cached_under():
    old = hashlib.sha256(b"x86_64_defconfig\nkernel/configs/kvm_guest.config\n" + C.FRAGMENT.read_bytes())
    defconfig = C.KernelConfig(base=C.BASES["defconfig"])
    assert C.config_hash(base="defconfig") == defconfig.hash() == old.hexdigest()[:12]
    assert C.DEFAULT_BASE == "lean" and C.config_hash() == C.KernelConfig().hash() != defconfig.hash()


def test_config_hash_depends_on_fragment(tmp_path):
    other = tmp_path / "other.config"
    other.write_text(C.FRAGMENT.read_text() + "CONFIG_EXTRA=y\n")
    assert C.config_hash(other) != C.config_hash(C.FRAGMENT)
    assert C.config_hash(C.FRAGMENT) == C.config_hash(C.FRAGMENT)


def test_variants_and_their_order_change_the_hash():
    plain = C.config_hash()
    one = C.config_hash(variants=("deferred-init",))
    both = C.config_hash(variants=("deferred-init", "kho-debug"))
    swapped = C.config_hash(variants=("kho-debug", "deferred-init"))
    assert len({plain, one, both, swapped}) == 4
    assert C.config_hash(variants=("deferred-init", "kho-debug")) == both


def test_base_and_its_project_fragment_change_the_hash(tmp_path):
    assert C.config_hash(base="lean") != C.config_hash(base="defconfig")
    a, b = tmp_path / "a.config", tmp_path / "b.config"
    a.write_text("CONFIG_SMP=y\n")
    b.write_text("CONFIG_SMP=y\nCONFIG_ACPI=y\n")
    lean = C.BASES["lean"]
    hashes = [C.KernelConfig(C.KernelBase("lean", lean.target, lean.tree_fragments, (f,))).hash() for f in (a, b)]
    assert hashes[0] != hashes[1]


def test_composition_merges_in_order_and_names_the_variants_in_the_release(tmp_path):
    override = tmp_path / "variants" / "no-thp"
    override.mkdir(parents=True)
    (override / "config").write_text("# CONFIG_TRANSPARENT_HUGEPAGE is not set\n")
    config = C.KernelConfig(
        base=C.BASES["defconfig"], variants=(C.load_variant("deferred-init"), C.Variant("no-thp", override))
    )
    wanted = config.expected()
    assert wanted["CONFIG_DEFERRED_STRUCT_PAGE_INIT"] == "y"
    assert wanted["CONFIG_TRANSPARENT_HUGEPAGE"] == "n"  # the later delta wins over the fragment
    assert wanted["CONFIG_LOCALVERSION"] == '"-lab"'  # the variants' names go into the release through make
    assert config.local_version_suffix == "+deferred-init+no-thp"
    assert config.project_fragments() == [C.FRAGMENT, C.VARIANTS_DIR / "deferred-init" / "config", override / "config"]
    assert C.KernelConfig().local_version_suffix == ""
    assert C.KernelConfig(patch_tag="p1234abcd").local_version_suffix == "+p1234abcd"
    assert C.KernelConfig(patch_tag="p1234abcd").hash() != C.KernelConfig().hash()


def test_missing_names_an_option_a_variant_asked_for():
    config = C.KernelConfig(base=C.BASES["defconfig"], variants=(C.load_variant("kho-debug"),))
    final = C.FRAGMENT.read_text()
    assert config.missing(final) == ["CONFIG_KEXEC_HANDOVER_DEBUG=y (got n)"]
    assert config.missing(final + "CONFIG_KEXEC_HANDOVER_DEBUG=y\n") == []


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(UnknownName, match="no kernel variant 'nope'; the variants are: deferred-init, kho-debug"):
        C.load_variant("nope")


def test_shipped_variants():
    assert {"deferred-init", "kho-debug", "luo-compat-mismatch"} <= set(C.known_variants())
    for name in C.known_variants():
        assert C.load_variant(name).description, f"{name} has no README"
    assert C.parse_config(C.load_variant("deferred-init").config.read_text()) == {
        "CONFIG_DEFERRED_STRUCT_PAGE_INIT": "y"
    }
    assert C.parse_config(C.load_variant("kho-debug").config.read_text()) == {"CONFIG_KEXEC_HANDOVER_DEBUG": "y"}
    control = C.load_variant("luo-compat-mismatch")
    assert control.config is None and len(control.patches) == 1
    diff = control.patches[0].read_text()
    assert '-#define LUO_ABI_COMPATIBLE\t"luo-v5"' in diff and '+#define LUO_ABI_COMPATIBLE\t"luo-' in diff


def test_known_variants_of_a_folder(tmp_path):
    assert C.known_variants(tmp_path / "absent") == []
    (tmp_path / "b-two").mkdir()
    (tmp_path / "a-one").mkdir()
    (tmp_path / "Not_A_Name").mkdir()
    (tmp_path / "file").write_text("")
    assert C.known_variants(tmp_path) == ["a-one", "b-two"]
