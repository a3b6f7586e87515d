"""Each kernel's radix-key functions compiled from its own (here: hand-written) source tree and compared."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.abi.fake_abi_tree import write_source_tree
from workbench.abi.radix import decode_key, encode_key
from workbench.abi.radix_key_check import (
    KeyHarnessUnavailable,
    build_key_harness,
    check_radix_keys,
    edge_pairs,
    find_key_functions,
)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("trees")
    return {style: write_source_tree(root / style, encoder=style) for style in ("7.2", "7.3", "shifted", "none")}


@pytest.fixture(scope="module")
def harness_72(trees, tmp_path_factory):
    return build_key_harness(trees["7.2"], tmp_path_factory.mktemp("harness"))


def test_the_functions_are_found_by_what_they_do(trees):
    old, new = find_key_functions(trees["7.2"]), find_key_functions(trees["7.3"])
    assert old.functions == {
        "encoder": "kho_radix_encode_key",
        "decoder": "kho_radix_decode_key",
        "bitmap_index": "kho_radix_get_bitmap_index",
        "table_index": "kho_radix_get_table_index",
    }
    assert new.functions["encoder"] == "kho_encode_radix_key"
    assert new.functions["decoder"] == "kho_decode_radix_key"
    assert old.files["encoder"] == "kernel/liveupdate/kexec_handover.c"
    assert old.enumerators == ("KHO_ORDER_0_LOG2", "KHO_TABLE_SIZE_LOG2", "KHO_BITMAP_SIZE_LOG2", "KHO_TREE_MAX_DEPTH")
    assert new.enumerators[0] == "KHO_RADIX_KEY_WIDTH"
    assert (old.encoder_takes, old.decoder_gives) == ("phys", "phys")
    assert "enum kho_radix_consts" in old.code
    assert find_key_functions(trees["shifted"]).decoder_gives is None


def test_a_tree_without_an_encoder_says_where_it_looked(trees, tmp_path):
    with pytest.raises(KeyHarnessUnavailable, match="no radix-key encoder.*kexec_handover"):
        find_key_functions(trees["none"])
    with pytest.raises(KeyHarnessUnavailable, match="not a kernel source tree"):
        find_key_functions(tmp_path)


def test_the_compiled_encoder_gives_the_documented_keys_and_paths(harness_72):
    assert harness_72.constants == {
        "PAGE_SHIFT": 12,
        "KHO_ORDER_0_LOG2": 52,
        "KHO_TABLE_SIZE_LOG2": 9,
        "KHO_BITMAP_SIZE_LOG2": 15,
        "KHO_TREE_MAX_DEPTH": 6,
    }
    (key, path), (key9, _) = harness_72.encode([(5, 0), (512, 9)])
    assert key == (1 << 52) | 5
    assert path == (5, 0, 0, 0, 0, (1 << 52) >> (15 + 4 * 9))  # leaf bit, then tables at levels 1..5
    assert key9 == (1 << 43) | 1
    assert harness_72.decode([key, key9]) == [(5, 0), (512, 9)]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.integers(0, 18).flatmap(
        lambda o: st.tuples(st.integers(0, (1 << (52 - o)) - 1).map(lambda m: m << o), st.just(o))
    )
)
def test_the_compiled_72_encoder_agrees_with_the_workbench(harness_72, pair):
    ((key, _),) = harness_72.encode([pair])
    assert key == encode_key(*pair)
    assert decode_key(key) == pair
    assert harness_72.decode([key]) == [pair]


def test_edge_pairs_are_aligned_and_reach_both_ends():
    pairs = edge_pairs()
    assert {order for _, order in pairs} == set(range(19))
    assert all(pfn % (1 << order) == 0 and pfn < 1 << 52 for pfn, order in pairs)
    assert (0, 0) in pairs and ((1 << 52) - 1, 0) in pairs and ((1 << 52) - (1 << 18), 18) in pairs
    assert ((1 << 15) - 1, 0) in pairs and (1 << 15, 0) in pairs  # both sides of the first leaf's end
    assert len(pairs) == len(set(pairs))


def test_rewritten_code_that_gives_the_same_keys_is_the_same(trees):
    check = check_radix_keys(trees["7.2"], trees["7.3"], names=("old", "new"))
    assert check.status == "same", check.mismatches[:3]
    assert check.pairs == len(edge_pairs()) and check.orders == list(range(19))
    assert (check.keys_agree, check.paths_agree, check.cross_decode_agrees, check.workbench_agrees) == (True,) * 4
    assert check.functions_a["encoder"] != check.functions_b["encoder"]
    assert "KHO_RADIX_KEY_WIDTH" in check.constants_b and "KHO_RADIX_KEY_WIDTH" not in check.constants_a
    assert check.examples and all(row["key_a"] == row["key_b"] for row in check.examples)
    assert check.as_dict()["status"] == "same"


def test_an_encoder_that_moves_the_order_bit_differs(trees):
    check = check_radix_keys(trees["7.2"], trees["shifted"])
    assert check.status == "differs"
    assert check.keys_agree is False and check.cross_decode_agrees is None  # "shifted" has no decoder
    first = check.mismatches[0]
    assert first["key_a"] == encode_key(first["pfn"], first["order"])
    assert first["key_b"] != first["key_a"]


def test_what_cannot_be_compiled_is_reported_not_guessed(trees, tmp_path):
    unbuildable = write_source_tree(tmp_path / "unbuildable", encoder="unbuildable")
    check = check_radix_keys(trees["7.2"], unbuildable, names=("good", "bad"))
    assert check.status == "impossible"
    assert check.reason.startswith("bad: ") and "do not compile" in check.reason
    assert "KHO_MAGIC_FROM_ELSEWHERE" in check.reason
    missing = check_radix_keys(trees["none"], trees["7.2"], names=("empty", "good"))
    assert missing.status == "impossible" and missing.reason.startswith("empty: no radix-key encoder")
    no_cc = check_radix_keys(trees["7.2"], trees["7.3"], compiler="no-such-cc-here")
    assert no_cc.status == "impossible" and "no C compiler" in no_cc.reason
