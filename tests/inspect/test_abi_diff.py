"""The ABI diff of two small kernels written by the tests (headers, key functions, a vmlinux compiled with -g): the
real headers, DWARF, ELF data and compiled key functions, without a lab kernel."""

from __future__ import annotations

import json

import pytest

from tests.abi.fake_abi_tree import compile_vmlinux, fake_abi_kernel, write_source_tree
from workbench.abi.radix_key_check import edge_pairs
from workbench.inspect.abi_diff import (
    KernelAbiSource,
    abi_diff,
    find_elf_strings,
    kernel_abi_source,
)
from workbench.lab.kernel import prebuilt_kernel

PAIRS = edge_pairs(orders=(0, 9, 18))


def _kernel(tmp_path, name: str, **options) -> KernelAbiSource:
    source = write_source_tree(tmp_path / name / "source", **options)
    vmlinux = compile_vmlinux(source, tmp_path / name / "vmlinux.o")
    return KernelAbiSource(name, f"{name}-release", vmlinux, source)


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    return _kernel(tmp_path_factory.mktemp("old"), "old")


def test_a_rewrite_that_keeps_the_bytes_is_compatible(old, tmp_path):
    new = _kernel(tmp_path, "new", encoder="7.3")
    diff = abi_diff(old, new, pairs=PAIRS)
    assert diff.verdict == "compatible" and diff.reasons == []
    statuses = {s.c_name: s.status for s in diff.structs}
    assert statuses == {
        "struct kho_vmalloc": "same",
        "enum kho_radix_consts": "differs",
        "struct kho_radix_spare": "not in DWARF",
        "struct luo_ser": "same",
        "struct memfd_luo_folio_ser": "same",
        "struct memfd_luo_ser": "same",
    }
    radix_enum = next(s for s in diff.structs if s.name == "kho_radix_consts")
    assert not radix_enum.breaking
    assert radix_enum.changes == ["only in old: KHO_ORDER_0_LOG2 = 52", "only in new: KHO_RADIX_KEY_WIDTH = 53"]
    assert any("kho_radix_spare" in n and "not in the DWARF of old and new" in n for n in diff.notes)
    assert any("kho_radix_encode_key" in n and "kho_encode_radix_key" in n and "same keys" in n for n in diff.notes)
    assert diff.radix_keys.status == "same" and diff.radix_keys.pairs == len(PAIRS)
    strings = {c.macro: (c.a, c.b, c.section_a, c.status) for c in diff.compatible_strings}
    assert strings == {
        "KHO_FDT_COMPATIBLE": ("kho-v4", "kho-v4", ".rodata", "same"),
        "KHO_KEXEC_METADATA_VERSION": (1, 1, None, "same"),
        "KHO_METADATA_LINK_VERSION": (1, 1, None, "same"),
        "LUO_ABI_COMPATIBLE": ("luo-v5", "luo-v5", ".rodata", "same"),
        "MEMFD_LUO_FH_COMPATIBLE": ("memfd-v2", "memfd-v2", ".data", "same"),
    }


def test_a_changed_compatible_string_is_incompatible_naming_the_subsystem(old, tmp_path):
    diff = abi_diff(old, _kernel(tmp_path, "neg", luo="luo-neg"), pairs=PAIRS)
    assert diff.verdict == "incompatible"
    assert diff.reasons == [
        "LUO: LUO_ABI_COMPATIBLE is 'luo-v5' in old and 'luo-neg' in neg: each refuses the other's state"
    ]
    luo = next(c for c in diff.compatible_strings if c.subsystem == "LUO")
    assert (luo.status, luo.breaking, luo.section_b) == ("differs", True, ".rodata")
    assert luo.as_dict()["in_vmlinux_b"] is True


def test_a_moved_bit_field_is_incompatible_naming_the_members(old, tmp_path):
    diff = abi_diff(old, _kernel(tmp_path, "narrow", pfn_bits=50), pairs=PAIRS)
    assert diff.verdict == "incompatible"
    assert diff.reasons == [
        "memfd: struct memfd_luo_folio_ser differs: pfn: bit 0, 52 bits → bit 0, 50 bits; "
        "flags: bit 52, 12 bits → bit 50, 14 bits"
    ]


def test_a_member_renamed_in_place_is_a_note(old, tmp_path):
    diff = abi_diff(old, _kernel(tmp_path, "renamed", sessions_member="sessions"), pairs=PAIRS)
    assert diff.verdict == "compatible"
    luo_ser = next(s for s in diff.structs if s.name == "luo_ser")
    assert (luo_ser.status, luo_ser.breaking) == ("differs", False)
    assert any(n.startswith("LUO: struct luo_ser differs in names only") for n in diff.notes)


def test_a_format_one_kernel_alone_has_is_incompatible(old, tmp_path):
    diff = abi_diff(old, _kernel(tmp_path, "more", extra_header=True), pairs=PAIRS)
    assert diff.verdict == "incompatible"
    assert "extra: struct extra_ser (extra.h) is part of more's handover ABI only" in diff.reasons
    assert "extra: only more defines EXTRA_COMPATIBLE: the other has no such format" in diff.reasons
    extra = next(s for s in diff.structs if s.name == "extra_ser")
    assert (extra.status, extra.size_a, extra.size_b) == ("only in B", None, 8)


def test_different_keys_are_incompatible(old, tmp_path):
    diff = abi_diff(old, _kernel(tmp_path, "shifted", encoder="shifted"), pairs=PAIRS)
    assert diff.verdict == "incompatible"
    assert len(diff.reasons) == 1 and diff.reasons[0].startswith("KHO: old's kho_radix_encode_key and shifted's")
    assert f"disagree on {len(PAIRS)} of {len(PAIRS)} (pfn, order) pairs" in diff.reasons[0]


def test_keys_not_compared_leave_the_verdict_undetermined(old, tmp_path):
    diff = abi_diff(old, _kernel(tmp_path, "nokeys", encoder="none"), pairs=PAIRS)
    assert diff.verdict == "undetermined"
    assert diff.radix_keys.status == "impossible"
    assert diff.reasons[0].startswith("the radix-tree keys were not compared: nokeys: no radix-key encoder")
    assert abi_diff(old, old, radix_keys=False).verdict == "undetermined"


def test_the_same_kernel_twice_is_compatible_and_json_ready(old):
    diff = abi_diff(old, old, pairs=PAIRS)
    assert diff.verdict == "compatible" and diff.reasons == []
    out = json.loads(json.dumps(diff.as_dict()))
    assert list(out) == ["a", "b", "structs", "compatible_strings", "radix_keys", "verdict", "reasons", "notes"]
    assert out["a"]["name"] == "old" and out["a"]["headers"] == [
        "kexec_handover.h",
        "kexec_metadata.h",
        "luo.h",
        "memfd.h",
    ]
    luo = next(s for s in out["structs"] if s["name"] == "luo_ser")
    assert luo["size_a"] == luo["size_b"] == 32
    assert [m["path"] for m in luo["layout_a"]["members"]] == ["compatible", "liveupdate_num", "sessions_pa", "flbs_pa"]


def test_strings_are_found_in_the_data_that_holds_them(old):
    found = find_elf_strings(old.vmlinux, ["kho-v4", "memfd-v2", "luo-v5", "kho-v9", "kho-"])
    assert found == {"kho-v4": ".rodata", "memfd-v2": ".data", "luo-v5": ".rodata", "kho-v9": None, "kho-": None}


def test_a_kernel_without_its_source_tree_is_refused(tmp_path):
    folder = fake_abi_kernel(tmp_path / "k", release="7.2.13-test")
    kernel = prebuilt_kernel(folder)
    source = kernel_abi_source(kernel)
    assert (source.source, source.vmlinux, source.release, source.page_shift) == (
        folder / "source",
        folder / "vmlinux",
        "7.2.13-test",
        12,
    )
    (folder / "source").rename(folder / "elsewhere")
    with pytest.raises(FileNotFoundError, match="no source tree with include/linux/kho/abi"):
        kernel_abi_source(kernel)
    (folder / "vmlinux").unlink()
    with pytest.raises(FileNotFoundError, match="no vmlinux"):
        kernel_abi_source(kernel)
