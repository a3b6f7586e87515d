"""The handover ABI headers read as text: declarations, compatible strings and versions, on hand-written headers."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.abi.fake_abi_tree import write_source_tree
from workbench.abi.abi_headers import (
    AbiConstant,
    AbiType,
    constant_subsystem,
    header_subsystem,
    parse_abi_header,
    read_abi_headers,
    without_comments,
)

HEADER = r"""
/* SPDX: a comment with struct in_a_comment { and #define FAKE_COMPATIBLE "no" */
#define LUO_ABI_COMPATIBLE	"luo-v5"   // trailing comment
#define LUO_ABI_COMPAT_LEN	ALIGN(sizeof(LUO_ABI_COMPATIBLE), 8)
#define LIVEUPDATE_TEST_FLB_COMPATIBLE(i)	"liveupdate-test-flb-v" #i
#define LUO_WIRE_VERSION (3U)
#define LUO_ALIAS_COMPATIBLE LUO_ABI_COMPATIBLE
#define LUO_LONG_COMPATIBLE \
	"luo-long-v1"

struct luo_ser {
	char compatible[8];
	u64 liveupdate_num;
} __packed;

union luo_either { u64 a; u32 b; };

enum luo_consts {
	LUO_A = 1,
};

struct luo_ser *pointer_to_it;   /* a use, not a declaration */
const char *text = "struct in_a_string {";
"""


def test_a_header_gives_its_declarations_in_order():
    types, _ = parse_abi_header(HEADER, "luo.h")
    assert types == [
        AbiType("struct", "luo_ser", "luo.h"),
        AbiType("union", "luo_either", "luo.h"),
        AbiType("enum", "luo_consts", "luo.h"),
    ]
    assert types[0].c_name == "struct luo_ser"
    assert types[0].subsystem == "LUO"


def test_a_header_gives_its_compatible_strings_and_versions():
    _, constants = parse_abi_header(HEADER, "luo.h")
    assert {c.macro: c.value for c in constants} == {
        "LUO_ABI_COMPATIBLE": "luo-v5",
        "LUO_WIRE_VERSION": 3,
        "LUO_ALIAS_COMPATIBLE": "luo-v5",
        "LUO_LONG_COMPATIBLE": "luo-long-v1",
    }
    by_macro = {c.macro: c for c in constants}
    assert by_macro["LUO_ABI_COMPATIBLE"].kind == "string"
    assert by_macro["LUO_WIRE_VERSION"].kind == "number"
    assert by_macro["LUO_ABI_COMPATIBLE"].subsystem == "LUO"


def test_a_define_may_name_a_define_of_another_header():
    _, constants = parse_abi_header(
        "#define MEMFD_LUO_FH_COMPATIBLE BASE_COMPATIBLE\n", "memfd.h", {"BASE_COMPATIBLE": '"memfd-v9"'}
    )
    assert constants == [AbiConstant("MEMFD_LUO_FH_COMPATIBLE", "memfd-v9", "memfd.h", "memfd")]
    # a name that leads nowhere is not a format
    assert parse_abi_header("#define X_COMPATIBLE UNKNOWN_THING\n", "x.h")[1] == []


def test_comments_are_dropped_but_strings_and_line_count_kept():
    text = 'a /* one\ntwo */ b "/* not a comment */" // tail\nc'
    assert without_comments(text) == 'a \n b "/* not a comment */"  \nc'


def test_a_tree_gives_every_header_in_name_order(tmp_path):
    tree = write_source_tree(tmp_path, extra_header=True)
    headers = read_abi_headers(tree)
    assert headers.headers == ("extra.h", "kexec_handover.h", "kexec_metadata.h", "luo.h", "memfd.h")
    assert [t.c_name for t in headers.types] == [
        "struct extra_ser",
        "struct kho_vmalloc",
        "enum kho_radix_consts",
        "struct kho_radix_spare",
        "struct luo_ser",
        "struct memfd_luo_folio_ser",
        "struct memfd_luo_ser",
    ]
    assert {c.macro: c.value for c in headers.constants} == {
        "EXTRA_COMPATIBLE": "extra-v1",
        "KHO_FDT_COMPATIBLE": "kho-v4",
        "KHO_KEXEC_METADATA_VERSION": 1,
        "KHO_METADATA_LINK_VERSION": 1,
        "LUO_ABI_COMPATIBLE": "luo-v5",
        "MEMFD_LUO_FH_COMPATIBLE": "memfd-v2",
    }
    assert headers.type("struct", "luo_ser") == AbiType("struct", "luo_ser", "luo.h")
    assert headers.type("union", "luo_ser") is None
    assert headers.constant("KHO_FDT_COMPATIBLE").subsystem == "KHO"
    assert headers.constant("NOPE") is None


def test_a_tree_without_the_headers_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="include/linux/kho/abi"):
        read_abi_headers(tmp_path)
    (tmp_path / "include/linux/kho/abi").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no header"):
        read_abi_headers(tmp_path)


def test_subsystems_are_named_after_what_they_hand_over():
    assert header_subsystem("kexec_handover.h") == "KHO"
    assert header_subsystem("memfd.h") == "memfd"
    assert header_subsystem("newthing.h") == "newthing"
    assert constant_subsystem("RESERVE_MEM_KHO_NODE_COMPATIBLE", "memblock.h") == "reserve-mem"
    assert constant_subsystem("MEMBLOCK_KHO_NODE_COMPATIBLE", "memblock.h") == "memblock"
    assert constant_subsystem("OTHER_COMPATIBLE", "luo.h") == "LUO"


_NAMES = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12).map(lambda s: "t" + s)
_VALUES = st.text(string.ascii_letters + string.digits + "-._", min_size=1, max_size=20)


@given(
    st.lists(st.tuples(st.sampled_from(["struct", "union", "enum"]), _NAMES), max_size=6, unique_by=lambda t: t[1]),
    st.dictionaries(_NAMES.map(lambda s: s.upper() + "_COMPATIBLE"), _VALUES, max_size=5),
    st.dictionaries(_NAMES.map(lambda s: s.upper() + "_VERSION"), st.integers(0, 2**32), max_size=3),
)
def test_any_header_written_this_way_is_read_back(types, strings, versions):
    lines = []
    for kind, name in types:
        lines.append(f"/* {kind} decoy_{name} {{ */\n{kind} {name} {{\n\tint x;\n}};\n")
    lines += [f'#define {macro}\t"{value}"' for macro, value in strings.items()]
    lines += [f"#define {macro} {value}" for macro, value in versions.items()]
    found_types, found_constants = parse_abi_header("\n".join(lines) + "\n", "h.h")
    assert [(t.kind, t.name) for t in found_types] == types
    assert {c.macro: c.value for c in found_constants} == {**strings, **versions}
