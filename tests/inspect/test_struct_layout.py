"""Type layouts from real DWARF: two small C files compiled with ``cc -g`` and compared member by member."""

from __future__ import annotations

import subprocess

import pytest

from workbench.inspect.errors import DebugInfoNotFound
from workbench.inspect.struct_layout import layout_differences, open_debug_file, type_layout

COMMON = """
typedef unsigned long long u64;
typedef unsigned int u32;
struct chunk;
"""

OLD = (
    COMMON
    + """
struct desc { union { u64 phys; struct chunk *ptr; } first; u32 pages; unsigned short flags; unsigned short order; };
struct same { u64 a; u64 b; };
struct moved { u64 a; u32 b; u32 c; } __attribute__((packed));
struct typed { u32 count; u64 data; };
struct bits { u64 pfn:52; u64 flags:12; u64 index; };
struct renamed { char name[16]; u64 files; };
struct outer { u64 pos; struct desc folios; struct same pairs[2]; };
enum consts { K_WIDTH = 52, K_TABLE = 9, K_DEPTH = 6 };
struct desc d; struct same s; struct moved m; struct typed t; struct bits b; struct renamed r; struct outer o;
enum consts e;
"""
)

NEW = (
    COMMON
    + """
struct desc { union { u64 phys; struct chunk *ptr; } first; u32 pages; unsigned short flags; unsigned short order; };
struct same { u64 a; u64 b; };
struct moved { u64 a; u32 c; u32 b; } __attribute__((packed));
struct typed { u64 count; u64 data; };
struct bits { u64 pfn:50; u64 flags:14; u64 index; };
struct renamed { char label[16]; u64 files; };
struct outer { u64 pos; struct desc folios; struct same pairs[2]; u64 extra; };
enum consts { K_KEY_WIDTH = 53, K_TABLE = 9, K_DEPTH = 7 };
struct desc d; struct same s; struct moved m; struct typed t; struct bits b; struct renamed r; struct outer o;
enum consts e;
"""
)


def _compile(tmp_path, name: str, text: str, *flags: str):
    c_file = tmp_path / f"{name}.c"
    c_file.write_text(text)
    out = tmp_path / f"{name}.o"
    subprocess.run(["cc", *flags, "-c", "-o", str(out), str(c_file)], check=True)
    return out


@pytest.fixture(scope="module")
def progs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    return open_debug_file(_compile(tmp, "old", OLD, "-g")), open_debug_file(_compile(tmp, "new", NEW, "-g"))


def _diff(progs, kind, name):
    old, new = (type_layout(p, kind, name) for p in progs)
    return layout_differences(old, new, ("old", "new"))


def test_a_struct_is_flattened_with_nested_and_anonymous_members(progs):
    layout = type_layout(progs[0], "struct", "outer")
    assert layout.size == 8 + 16 + 32
    rows = {m.path: (m.bit_offset // 8, m.type, m.size) for m in layout.members}
    assert rows == {
        "pos": (0, "u64", 8),
        "folios": (8, "struct desc", 16),
        "folios.first": (8, "union <anonymous>", 8),
        "folios.first.phys": (8, "u64", 8),
        "folios.first.ptr": (8, "struct chunk *", 8),
        "folios.pages": (16, "u32", 4),
        "folios.flags": (20, "unsigned short", 2),
        "folios.order": (22, "unsigned short", 2),
        "pairs": (24, "struct same [2]", 32),
        "pairs[].a": (24, "u64", 8),
        "pairs[].b": (32, "u64", 8),
    }
    pos = layout.members[0]
    assert (pos.canonical_type, pos.shape) == ("unsigned long long", "unsigned long long")
    assert layout.members[4].shape == "pointer"


def test_bit_fields_keep_their_bits(progs):
    pfn, flags, index = type_layout(progs[0], "struct", "bits").members
    assert (pfn.bit_offset, pfn.bit_size, flags.bit_offset, flags.bit_size) == (0, 52, 52, 12)
    assert flags.where() == "bit 52, 12 bits" and index.where() == "offset 8"
    assert flags.as_dict()["offset"] == 6.5


def test_an_enum_gives_its_enumerators(progs):
    layout = type_layout(progs[0], "enum", "consts")
    assert layout.enumerators == (("K_WIDTH", 52), ("K_TABLE", 9), ("K_DEPTH", 6))
    assert layout.as_dict()["enumerators"] == {"K_WIDTH": 52, "K_TABLE": 9, "K_DEPTH": 6}


def test_a_type_no_code_uses_is_not_in_dwarf(progs):
    assert type_layout(progs[0], "struct", "chunk") is None  # declared, never defined
    assert type_layout(progs[0], "struct", "nowhere") is None


def test_identical_layouts_have_no_differences(progs):
    assert _diff(progs, "struct", "same").changes == ()
    assert _diff(progs, "struct", "desc").changes == ()


def test_moved_retyped_and_resized_members_are_breaking(progs):
    moved = _diff(progs, "struct", "moved")
    assert moved.breaking and moved.changes == ("b: offset 8 → offset 12", "c: offset 12 → offset 8")
    typed = _diff(progs, "struct", "typed")
    assert typed.breaking and typed.changes == ("count: type u32 → u64",)  # same size: padding filled
    bits = _diff(progs, "struct", "bits")
    assert bits.breaking and bits.changes == (
        "pfn: bit 0, 52 bits → bit 0, 50 bits",
        "flags: bit 52, 12 bits → bit 50, 14 bits",
    )
    outer = _diff(progs, "struct", "outer")
    assert outer.breaking
    assert outer.changes == ("size 56 → 64 bytes", "extra only in new (u64, offset 56)")


def test_a_member_renamed_in_place_changes_names_only(progs):
    renamed = _diff(progs, "struct", "renamed")
    assert not renamed.breaking
    assert renamed.changes == ("name only in old (char [16], offset 0)", "label only in new (char [16], offset 0)")


def test_enumerators_breaking_by_value_not_by_name(progs):
    consts = _diff(progs, "enum", "consts")
    assert consts.breaking
    assert consts.changes == ("K_DEPTH = 6 → 7", "only in old: K_WIDTH = 52", "only in new: K_KEY_WIDTH = 53")


def test_files_without_dwarf_are_refused(tmp_path):
    with pytest.raises(DebugInfoNotFound, match="does not exist"):
        open_debug_file(tmp_path / "missing.o")
    (tmp_path / "text.o").write_text("not ELF")
    with pytest.raises(DebugInfoNotFound, match="no DWARF"):
        open_debug_file(tmp_path / "text.o")
    with pytest.raises(DebugInfoNotFound, match="-g"):
        open_debug_file(_compile(tmp_path, "plain", OLD, "-g0"))
